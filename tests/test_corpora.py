"""recipes/corpora/asterisk_voices.py: G.722 files decode to the 16 kHz speech they were encoded from."""

import array
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("G722")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes" / "corpora"))
import asterisk_voices  # noqa: E402
from G722 import G722  # noqa: E402


def test_a_g722_file_decodes_to_the_wideband_signal_it_was_encoded_from(tmp_path):
    rate = asterisk_voices.RATE
    t = np.arange(rate) / rate
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 5500 * t)  # 5.5 kHz: in the upper band
    pcm = np.round(tone * 32767).astype(np.int16)
    path = tmp_path / "prompt.g722"
    path.write_bytes(G722(rate, 64000, use_numpy=False).encode(array.array("h", pcm.tobytes())))
    decoded = asterisk_voices.decode(path).astype(np.float64) / 32767
    assert decoded.size == pcm.size
    lags = range(0, 64)  # the codec's QMF filters delay the signal by a few tens of samples
    best = max(lags, key=lambda lag: np.dot(decoded[lag:], tone[: tone.size - lag]))
    aligned, reference = decoded[best + 100:], tone[100: tone.size - best]
    snr = 10 * np.log10(np.sum(reference**2) / np.sum((aligned - reference) ** 2))
    # 35 dB here; decoding the same bytes as 48 kbit/s or as 8 kHz gives -4 and -3 dB: parameters are checked.
    assert snr > 15
