"""Zero-shot denoising: the truncated chain against the exact Gaussian posterior, the automatic start step,
and the end-to-end API on a tiny unconditional model."""

import math
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave.config import load_config
from diffwave.diffusion import NoiseSchedule
from diffwave.diffusion.reverse_plans import full_chain, starting_at
from diffwave.errors import DiffwaveError, ScheduleError
from diffwave.inference.denoise import choose_start_step, denoise, denoise_normalised, estimate_noise_std
from diffwave.model import DiffWave
from tests.analytic import GaussianNetwork, chain_law, gaussian
from tests.audio_fixtures import harmonic_tone

# The DDPM chain with the optimal eps, started from a point x_{t*}, gives exactly the Wiener mean but a
# variance slightly off the true posterior (the reverse kernels are Gaussian approximations): computed exactly
# by the affine recursion of tests.analytic.chain_law from a point start, the gap at t* = 300 of the T = 1000
# linear(1e-4, 0.02) chain for N(0.3, 0.5^2), y = 0.6 is -0.00385 (posterior variance 0.2150 vs 0.2112).
VARIANCE_DISCRETISATION_ALLOWANCE = 0.005


def test_starting_at_restricts_the_plan_and_checks_its_range():
    schedule = NoiseSchedule.linear(20, 1e-4, 0.05)
    plan = starting_at(full_chain(schedule), 7)
    assert len(plan) == 8 and plan.model_steps[-1].item() == 7
    assert torch.equal(plan.alpha_bars, schedule.alpha_bars[:8])
    for bad in (-1, 20):
        with pytest.raises(ScheduleError, match="start step must lie in 0..19"):
            starting_at(full_chain(schedule), bad)


def test_truncated_chain_samples_the_wiener_posterior():
    mu, s, y_value, t_star, n = 0.3, 0.5, 0.6, 300, 20000
    schedule = NoiseSchedule.linear(1000, 1e-4, 0.02)
    alpha_bar = schedule.alpha_bars[t_star].item()
    sigma2 = (1 - alpha_bar) / alpha_bar
    assert choose_start_step(schedule, math.sqrt(sigma2)) == t_star
    y = torch.full((n, 1), y_value, dtype=torch.float64)
    x0 = denoise_normalised(y, schedule, gaussian(mu, s).eps_fn(schedule), t_star,
                            generator=torch.Generator().manual_seed(0))
    wiener_mean = mu + s**2 / (s**2 + sigma2) * (y_value - mu)
    posterior_var = s**2 * sigma2 / (s**2 + sigma2)
    mean_se = math.sqrt(posterior_var / n)
    var_se = posterior_var * math.sqrt(2 / (n - 1))
    assert abs(x0.mean().item() - wiener_mean) < 4 * mean_se
    assert abs(x0.var().item() - posterior_var) < 4 * var_se + VARIANCE_DISCRETISATION_ALLOWANCE
    # The prior's mean/variance would be far outside these bounds: the test can tell "no denoising" apart.
    assert abs(mu - wiener_mean) > 10 * mean_se and abs(s**2 - posterior_var) > 10 * var_se


# bf16 rounds each noise estimate to 8 significant bits (relative error <= 2^-9); the truncated chain adds
# t* + 1 = 3 such terms here, each smaller than the output. Measured: the bf16 output is 0.089% (0.087% with
# SDEdit) of the peak away from the fp32 output on the same noise; 2^-9 (0.195%) bounds it.
BF16_OF_PEAK = 2**-9
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sdedit", [False, True])
def test_denoising_end_to_end_has_the_chains_exact_posterior(sdedit, precision):
    """`denoise` (level normalisation, windows, positional noise, the truncated chain, autocast) with the
    optimal eps of white Gaussian data (tests.analytic.GaussianNetwork, whose estimate passes through a GEMM
    that autocast lowers): every output sample is an independent Gaussian whose mean gain and variance follow
    from the chain's affine steps (tests.analytic.chain_law) from the start state, x = sqrt(abar) y, or with
    SDEdit x = sqrt(abar) y + sqrt(1 - abar) z; the chain runs on c y (c = target_rms / rms(y)), and its
    output is divided by c again. In bf16 the network really runs in bf16 and costs only its rounding."""
    config = load_config("tiny", ["model.conditional=false"])
    data_std, noise_std, n = 0.08, 0.06, 32000  # in the model's units: the target rms is 0.1 = sqrt(s^2 + n^2)
    model = GaussianNetwork(config, data_std).eval()
    generator = torch.Generator().manual_seed(0)
    y = 0.5 * (data_std * torch.randn(n, generator=generator) + noise_std * torch.randn(n, generator=generator))
    t_star = choose_start_step(model.schedule, noise_std)
    out = denoise(y, 8000, model, t_star, config=config, sdedit=sdedit, chunk_seconds=1.0, dtype=precision,
                  generator=torch.Generator().manual_seed(1)).audio
    assert set(model.dtypes) == {DTYPES[precision]} and len(model.dtypes) == 4 * (t_star + 1)  # 4 windows
    plan = starting_at(full_chain(model.schedule), t_star)
    alpha_bar = model.schedule.alpha_bars[t_star].item()
    gain = math.sqrt(alpha_bar) * chain_law(plan, 0.0, data_std, start=(1.0, 0.0))[0]
    c = 0.1 / y.double().pow(2).mean().sqrt().item()
    variances = {flag: chain_law(plan, 0.0, data_std, start=(0.0, (1 - alpha_bar) if flag else 0.0))[1] / c**2
                 for flag in (False, True)}
    residual = out.double() - gain * y.double()
    variance = variances[sdedit]
    assert abs(residual.mean().item()) < 4 * math.sqrt(variance / n)
    var_se = variance * math.sqrt(2 / (n - 1))
    assert abs(residual.var().item() - variance) < 4 * var_se
    # The two starts differ by far more than the error bars: the forward-noise factor is what is tested.
    assert abs(variances[True] - variances[False]) > 20 * var_se
    # And the chain does denoise: its gain is near the Wiener gain s^2 / (s^2 + sigma_t^2) of step t*.
    sigma2 = (1 - alpha_bar) / alpha_bar
    assert abs(gain - data_std**2 / (data_std**2 + sigma2)) < 0.05 and gain < 0.9
    if precision == "bf16":
        fp32 = denoise(y, 8000, model, t_star, config=config, sdedit=sdedit, chunk_seconds=1.0,
                       generator=torch.Generator().manual_seed(1)).audio
        assert 0 < (out - fp32).abs().max() < BF16_OF_PEAK * fp32.abs().max()


def paused_tone(sample_rate: int, seconds: float, target_rms: float) -> np.ndarray:
    tone = harmonic_tone(sample_rate, seconds, seed=3, noise=0.0).astype(np.float64)
    t = np.arange(tone.size) / sample_rate
    envelope = (np.floor(t / 0.25) % 2 == 0).astype(np.float64)  # 0.25 s on, 0.25 s off
    signal = tone * envelope
    return signal * target_rms / np.sqrt(np.mean(signal**2))


@pytest.mark.parametrize("schedule", [NoiseSchedule.linear(1000, 1e-4, 0.02), NoiseSchedule.linear(50, 1e-4, 0.05)],
                         ids=["T1000", "T50"])
@pytest.mark.parametrize("snr_db", [0, 5, 10, 20])
def test_start_step_matches_the_added_noise(schedule, snr_db):
    clean = paused_tone(16000, 2.0, 0.1)
    noise_std = 0.1 / 10 ** (snr_db / 20)
    noise = np.random.default_rng(snr_db).standard_normal(clean.size) * noise_std
    noisy = torch.from_numpy(clean + noise).float()
    estimate = estimate_noise_std(noisy)
    assert noise_std / 1.25 < estimate < noise_std * 1.25
    t_star = choose_start_step(schedule, estimate)
    alpha_bar = schedule.alpha_bars[t_star].item()
    chosen_std = math.sqrt((1 - alpha_bar) / alpha_bar)
    assert noise_std / 2 < chosen_std < noise_std * 2


def test_digital_silence_is_not_taken_for_the_noise_floor():
    """Zero padding (40 % of the file here) has no noise in it; the estimate comes from the noisy frames."""
    clean = paused_tone(16000, 2.0, 0.1)
    noise_std = 0.01
    noisy = clean + np.random.default_rng(0).standard_normal(clean.size) * noise_std
    padded = torch.from_numpy(np.concatenate([np.zeros(8000), noisy, np.zeros(16000)])).float()
    assert noise_std / 1.25 < estimate_noise_std(padded) < noise_std * 1.25


def test_start_step_is_clamped():
    schedule = NoiseSchedule.linear(50, 1e-4, 0.05)
    assert choose_start_step(schedule, 0.0) == 0 and choose_start_step(schedule, 1e-6) == 0
    assert choose_start_step(schedule, 1e3) == 49


@pytest.fixture(scope="module")
def tiny_unconditional():
    torch.manual_seed(0)
    config = load_config("tiny", ["model.conditional=false"])
    model = DiffWave.from_config(config)
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)  # a non-zero eps, unlike the init
    return model.eval(), config


def noisy_tone(rate: int, seconds: float, noise_std: float = 0.01) -> torch.Tensor:
    clean = paused_tone(rate, seconds, 0.05)
    return torch.from_numpy(clean + noise_std * np.random.default_rng(0).standard_normal(clean.size)).float()


def test_denoise_keeps_the_input_rate_and_length(tiny_unconditional):
    model, config = tiny_unconditional
    assert config.audio.sample_rate == 8000
    noisy = noisy_tone(16000, 0.5, 0.05)[:7999]  # an odd length that does not survive 16k -> 8k -> 16k by itself
    out, t_star, snr_db = denoise(noisy, 16000, model, config=config, generator=torch.Generator().manual_seed(0))
    assert out.shape == noisy.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert not out.is_inference()  # an ordinary tensor: the caller may edit it in place
    assert 0 < t_star < config.diffusion.num_steps and math.isfinite(snr_db)
    again = denoise(noisy, 16000, model, config=config, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again.audio)
    other = denoise(noisy, 16000, model, config=config, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(out, other.audio)
    edited = denoise(noisy, 16000, model, 5, config=config, sdedit=True, generator=torch.Generator().manual_seed(0))
    assert edited.start_step == 5 and edited.audio.shape == noisy.shape and torch.isfinite(edited.audio).all()
    assert not torch.equal(edited.audio, denoise(noisy, 16000, model, 5, config=config,
                                                 generator=torch.Generator().manual_seed(0)).audio)


def test_stereo_arrays_are_downmixed_like_files(tiny_unconditional):
    model, config = tiny_unconditional
    left, right = noisy_tone(8000, 0.3), noisy_tone(8000, 0.3).flip(0)
    stereo = torch.stack([left, right], dim=1)  # [samples, channels], as sf.read returns
    seeded = dict(config=config, t_start=3, generator=torch.Generator().manual_seed(0))
    from_stereo = denoise(stereo.numpy(), 8000, model, **seeded).audio
    seeded["generator"] = torch.Generator().manual_seed(0)
    from_mean = denoise((left + right) / 2, 8000, model, **seeded).audio
    assert from_stereo.shape == left.shape and torch.equal(from_stereo, from_mean)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_denoising_matches_one_window(tiny_unconditional, precision):
    """Windows share the positional noise, so only the network's edge effects differ, inside the context."""
    model, config = tiny_unconditional
    noisy = noisy_tone(8000, 2.0, 0.02)
    seeded = dict(config=config, dtype=precision, generator=torch.Generator().manual_seed(3))
    whole = denoise(noisy, 8000, model, chunk_seconds=None, **seeded)
    seeded["generator"] = torch.Generator().manual_seed(3)
    chunked = denoise(noisy, 8000, model, chunk_seconds=0.5, overlap_seconds=0.1, **seeded)
    assert whole.start_step == chunked.start_step > 0
    # Measured: 1.1e-7 of the peak in fp32, 2.9e-8 in bf16 (the windows feed the network the same samples in
    # the same precision; only edge effects inside the context differ); without context, 2.2e-3.
    bound = 1e-5 * whole.audio.abs().max().item()
    assert (whole.audio - chunked.audio).abs().max().item() < bound
    seeded["generator"] = torch.Generator().manual_seed(3)
    hard_cuts = denoise(noisy, 8000, model, chunk_seconds=0.5, overlap_seconds=0.0, **seeded)
    assert (whole.audio - hard_cuts.audio).abs().max().item() > 100 * bound  # the comparison can fail


def test_default_context_covers_a_wide_network():
    """The default context grows with the network's reach (here 3 x 1023 samples, 0.38 s per side at 8 kHz)."""
    torch.manual_seed(0)
    config = load_config("tiny", ["model.conditional=false", "model.residual_layers=30", "model.dilation_cycle=10"])
    model = DiffWave.from_config(config).eval()
    torch.nn.init.normal_(model.output_projection.weight, std=0.1)
    assert model.reach == 3069
    noisy = noisy_tone(8000, 3.0, 0.05)
    whole = denoise(noisy, 8000, model, config=config, chunk_seconds=None, generator=torch.Generator().manual_seed(3))
    chunked = denoise(noisy, 8000, model, config=config, chunk_seconds=1.0, generator=torch.Generator().manual_seed(3))
    short = denoise(noisy, 8000, model, config=config, chunk_seconds=1.0, overlap_seconds=0.05,
                    generator=torch.Generator().manual_seed(3))
    assert whole.start_step > 0
    bound = 1e-5 * whole.audio.abs().max().item()  # measured: 1.2e-7 with the default, 4e-4 with 0.1 s
    assert (whole.audio - chunked.audio).abs().max().item() < bound
    assert (whole.audio - short.audio).abs().max().item() > bound  # too little context shows at the seams


def test_start_step_zero_returns_the_input_at_its_own_level(tiny_unconditional):
    # From state 0 the chain makes one step: x = y - beta_0 / sqrt(1 - abar_0) eps_hat (scaled back), with
    # beta_0 / sqrt(1 - abar_0) = 0.01 here, so the output is the input up to about 1 % of the model's eps.
    model, config = tiny_unconditional
    loud = torch.from_numpy(paused_tone(8000, 0.5, 0.4)).float()
    out, t_star, _ = denoise(loud, 8000, model, 0, config=config)
    assert t_star == 0
    error = (out - loud).pow(2).mean().sqrt().item()
    assert error < 0.05 * loud.pow(2).mean().sqrt().item()


def test_conditional_models_and_bad_input_are_refused(tiny_unconditional):
    model, config = tiny_unconditional
    conditional = DiffWave.from_config(load_config("tiny"))
    audio = torch.randn(800) * 0.1
    with pytest.raises(DiffwaveError, match="needs an unconditional model"):
        denoise(audio, 8000, conditional, config=load_config("tiny"))
    bad = audio.clone()
    bad[10] = float("nan")
    with pytest.raises(DiffwaveError, match="NaN/Inf"):
        denoise(bad, 8000, model, config=config)
    with pytest.raises(DiffwaveError, match="silent"):
        denoise(torch.zeros(800), 8000, model, config=config)
    with pytest.raises(DiffwaveError, match="t_start must lie in 0..49"):
        denoise(audio, 8000, model, 50, config=config)
    with pytest.raises(DiffwaveError, match="expected mono"):
        denoise(torch.randn(2, 3, 800), 8000, model, config=config)


def run_denoise(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffwave", "denoise", *args], capture_output=True, text=True,
                          timeout=300)


def test_denoise_command_writes_each_file_at_its_rate_and_reports_bad_ones(unconditional_checkpoint, tmp_path):
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    stereo = np.stack([paused_tone(16000, 0.4, 0.1)] * 2, axis=1).astype(np.float32)
    sf.write(inputs / "stereo16k.wav", stereo, 16000)
    sf.write(inputs / "mono8k.wav", noisy_tone(8000, 0.3).numpy(), 8000)
    sf.write(inputs / "silent.wav", np.zeros(800, dtype=np.float32), 8000)
    (inputs / "text.wav").write_text("not audio")
    result = run_denoise(str(inputs), str(tmp_path / "missing.wav"), "--checkpoint", str(unconditional_checkpoint),
                         "-o", str(out), "--seed", "2")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stdout.startswith("denoise: 2 files") and "3 failed" in result.stdout
    for name in ("silent.wav", "text.wav", "missing.wav"):
        assert name in result.stderr
    assert "start step" in result.stderr and "estimated input SNR" in result.stderr
    audio, rate = sf.read(out / "stereo16k.wav")
    assert rate == 16000 and audio.shape == (stereo.shape[0],)
    audio, rate = sf.read(out / "mono8k.wav")
    assert rate == 8000 and audio.shape == (2400,)
    assert sorted(p.name for p in out.iterdir()) == ["mono8k.wav", "stereo16k.wav"]
    again = run_denoise(str(inputs / "mono8k.wav"), "--checkpoint", str(unconditional_checkpoint), "-o", str(out),
                        "--t-start", "4")
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr
    absent = tmp_path / "absent" / "out"  # created, with its parent
    made = run_denoise(str(inputs / "mono8k.wav"), "--checkpoint", str(unconditional_checkpoint), "-o", str(absent))
    assert made.returncode == 0 and [p.name for p in absent.iterdir()] == ["mono8k.wav"]
    one = run_denoise(str(inputs / "mono8k.wav"), "--checkpoint", str(unconditional_checkpoint), "-o",
                      str(tmp_path / "one.wav"))
    assert one.returncode == 0 and sf.info(tmp_path / "one.wav").frames == 2400


def test_denoise_command_refuses_a_conditional_checkpoint(tiny_checkpoint, tmp_path):
    sf.write(tmp_path / "a.wav", noisy_tone(8000, 0.2).numpy(), 8000)
    result = run_denoise(str(tmp_path / "a.wav"), "--checkpoint", str(tiny_checkpoint), "-o", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "is a conditional (mel) model; denoising needs an unconditional checkpoint" in result.stderr


def test_denoise_takes_a_checkpoint_path(unconditional_checkpoint):
    noisy = noisy_tone(8000, 0.2)
    out, t_star, _ = denoise(noisy, 8000, unconditional_checkpoint, generator=torch.Generator().manual_seed(0))
    assert out.shape == noisy.shape and 0 <= t_star < 50
