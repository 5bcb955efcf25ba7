"""The denoising benchmark's parts: noise of the asked colour and SNR, the Wiener filter and spectral gating
on signals whose answer is known, and rows that score an oracle and a do-nothing denoiser as they must."""

import numpy as np
import pytest
import torch

from diffwave.evaluation import denoising
from diffwave.evaluation.metrics import si_sdr
from tests.test_denoise import paused_tone

RATE = 16000


def test_noise_has_unit_power_and_its_colour():
    rng = np.random.default_rng(0)
    for colour, slope in (("white", 0.0), ("pink", -1.0)):
        noise = denoising.coloured_noise(2**16, colour, rng)
        assert np.mean(noise**2) == pytest.approx(1.0, rel=0.02)
        frames = noise[: 2**16].reshape(64, 1024) * np.hanning(1024)
        psd = np.mean(np.abs(np.fft.rfft(frames, axis=1)) ** 2, axis=0)[4:400]  # away from DC and the top
        fitted = np.polyfit(np.log(np.arange(4, 400)), np.log(psd), 1)[0]
        assert fitted == pytest.approx(slope, abs=0.1)
    with pytest.raises(ValueError, match="noise must be one of"):
        denoising.coloured_noise(8, "brown", rng)


def test_mixing_reaches_the_asked_snr():
    clean = paused_tone(RATE, 1.0, 0.1)
    noise = denoising.coloured_noise(clean.size, "pink", np.random.default_rng(1))
    for snr_db in (-5.0, 0.0, 12.5):
        mixture = denoising.mix_at_snr(clean, noise, snr_db)
        assert 10 * np.log10(np.sum(clean**2) / np.sum((mixture - clean) ** 2)) == pytest.approx(snr_db, abs=1e-9)


# SI-SDR gains measured on this tone at 5 dB: Wiener 11.6 dB, noisereduce's default gating 1.4 dB (its
# stationary mode: -7.5 dB, it gates the tone too); doing nothing scores 0.
@pytest.mark.parametrize(("baseline", "least_gain"), [(denoising.wiener_filter, 8.0), (denoising.spectral_gating, 0.5)],
                         ids=["wiener", "gating"])
def test_baselines_keep_speech_like_tones_and_remove_stationary_noise(baseline, least_gain):
    pytest.importorskip("noisereduce" if baseline is denoising.spectral_gating else "scipy")
    clean = paused_tone(RATE, 2.0, 0.1)
    noisy = denoising.mix_at_snr(clean, denoising.coloured_noise(clean.size, "white", np.random.default_rng(2)), 5)
    cleaned = baseline(noisy, RATE)
    assert cleaned.shape == noisy.shape
    gain = si_sdr(torch.from_numpy(clean), torch.from_numpy(cleaned)) - si_sdr(torch.from_numpy(clean),
                                                                               torch.from_numpy(noisy))
    assert gain > least_gain
    noise_only = denoising.coloured_noise(RATE, "white", np.random.default_rng(3)) * 0.01
    assert np.mean(baseline(noise_only, RATE) ** 2) < 0.5 * np.mean(noise_only**2)  # Wiener 0.01, gating 0.44


def test_wiener_filter_lets_a_clean_signal_through():
    pytest.importorskip("scipy")
    clean = paused_tone(RATE, 2.0, 0.1)
    noisy = clean + 1e-4 * np.random.default_rng(4).standard_normal(clean.size)  # 60 dB
    assert si_sdr(torch.from_numpy(clean), torch.from_numpy(denoising.wiener_filter(noisy, RATE))) > 25


def test_rows_score_an_oracle_and_a_do_nothing_denoiser_as_they_must():
    pytest.importorskip("pesq")
    pytest.importorskip("pystoi")
    cleans = [paused_tone(RATE, 1.0, 0.1), 0.5 * paused_tone(RATE, 1.5, 0.1)]
    oracle_for = {clean.size: clean for clean in cleans}  # the clips differ in length
    outputs = {}
    rows = denoising.evaluate("toy", cleans, RATE, {"oracle": lambda noisy: oracle_for[noisy.size]}, [5.0],
                              ["white"], seed=0, outputs=outputs)
    assert all(out is clean for out, clean in zip(outputs["white", 5.0, "oracle"], cleans, strict=True))
    noisy_audio = outputs["white", 5.0, "noisy input"]
    assert all(np.array_equal(a, b) for a, b in zip(noisy_audio, denoising.noisy_versions(cleans, "white", 5.0, 0),
                                                     strict=True))
    assert [row.system for row in rows] == ["noisy input", "oracle"]
    noisy_row, oracle_row = rows
    assert noisy_row.means["SI-SDRi"] == 0.0 and oracle_row.means["SI-SDRi"] > 30
    assert oracle_row.means["PESQ"] > 4.4 and oracle_row.means["STOI"] > 0.99
    assert noisy_row.means["PESQ"] < 3 and noisy_row.means["STOI"] < oracle_row.means["STOI"]
    assert oracle_row.markdown().startswith("| toy | white | 5 | oracle | +")
