"""The quickstart (`make demo`) in a reduced mode: every output it promises exists and is valid."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from diffwave.data.synthetic import synthesize_corpus
from diffwave.errors import DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_outputs(tmp_path):
    out = tmp_path / "quickstart"
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "OUT": str(out), "STEPS": "20", "CONFIG": "tiny",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(REPO / "recipes" / "quickstart" / "run.sh")], capture_output=True,
                            text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    wavs = sorted((out / "vocoded").glob("*.wav"))
    assert wavs
    for wav in wavs:
        audio, rate = sf.read(wav)
        assert rate == 8000 and audio.size > 0
    png = (out / "mels.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    assert list((out / "train" / "logs").glob("events.out.tfevents.*"))
    summary = (out / "summary.txt").read_text()
    for promised in ("training run", "log-mel L1", "real-time factor", "mels.png", "tensorboard --logdir"):
        assert promised in summary
    assert "Open next" in result.stdout


def test_synthetic_corpus_is_an_ljspeech_layout_of_varied_clips(tmp_path):
    corpus = synthesize_corpus(tmp_path / "syn", clips=3, seconds=1.0, sample_rate=8000, seed=1)
    rows = (corpus / "metadata.csv").read_text().splitlines()
    assert [row.split("|")[0] for row in rows] == ["SYN001-0001", "SYN001-0002", "SYN001-0003"]
    clips = [sf.read(corpus / "wavs" / f"SYN001-000{i}.wav")[0] for i in (1, 2, 3)]
    assert all(0.4 < abs(c).max() <= 0.5 + 1e-4 and 0.75 * 8000 <= c.size <= 1.25 * 8000 for c in clips)
    assert len({c.size for c in clips}) == 3
    with pytest.raises(DataError, match="already holds a corpus"):
        synthesize_corpus(corpus, clips=1)
