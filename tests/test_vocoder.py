"""The vocoder: checkpoints in, mels in, audio out; batching, chunking, seeds and refusals.

One tiny model is trained for a few hundred steps per module (seconds on a CPU), so the noise estimates are
those of a real network: a zero-output untrained model would make batch and chunk tests pass vacuously.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from diffwave import cli
from diffwave.audio import num_frames
from diffwave.audio.griffin_lim import GRIFFIN_LIM_ITERATIONS, griffin_lim, rescale_to_mel
from diffwave.checkpoints import FORMAT_VERSION, export_safetensors, load_checkpoint
from diffwave.config import config_to_dict, load_config
from diffwave.diffusion import ReversePlan
from diffwave.errors import CheckpointError, ConfigError, DiffwaveError, VocodeError
from diffwave.inference import Vocoder
from diffwave.inference.chunking import PositionalNoise, draw_seed, utterance_seed
from diffwave.inference.options import SamplingOptions, resolve
from diffwave.model import DiffWave
from diffwave.training.run import train
from tests.analytic import GaussianNetwork, run_chain
from tests.audio_fixtures import harmonic_tone

RATE = 8000  # the tiny preset's sample rate
TRAIN_STEPS = 300
QUIET = ["train.log_every=100000", "train.valid_every=100000", "train.sample_every=100000",
         "train.save_every=100000", "data.valid_fraction=0.1", "data.test_fraction=0.05"]


@pytest.fixture(scope="module")
def checkpoint(tiny_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("vocoder") / "run"
    train(load_config("tiny", [f"train.max_steps={TRAIN_STEPS}", *QUIET]), tiny_features, run_dir, device="cpu")
    return run_dir / "checkpoints" / f"step_{TRAIN_STEPS:08d}.pt"


@pytest.fixture(scope="module")
def vocoder(checkpoint: Path) -> Vocoder:
    return Vocoder.from_checkpoint(checkpoint, device="cpu")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tone_mel(vocoder: Vocoder, seconds: float, f0: float = 180.0, seed: int = 0) -> torch.Tensor:
    return vocoder.mel(harmonic_tone(RATE, seconds, f0=f0, seed=seed), RATE)


# --- loading and shapes -------------------------------------------------------------------------------
def test_own_mel_vocodes_to_frames_times_hop(vocoder: Vocoder) -> None:
    mel = tone_mel(vocoder, 0.6)
    assert mel.shape == (vocoder.n_mels, num_frames(round(0.6 * RATE), vocoder.config.audio))
    audio = vocoder.vocode(mel, generator=seeded(0))
    assert audio.shape == (mel.shape[-1] * vocoder.hop_length,)
    assert audio.abs().max() <= 1.0 and audio.std() > 1e-3
    # Audio at another rate is resampled to the model's first: 0.6 s gives the same number of frames.
    assert vocoder.mel(harmonic_tone(16000, 0.6), 16000).shape == mel.shape


def test_soundfile_stereo_arrays_are_downmixed_not_taken_as_a_batch(vocoder: Vocoder) -> None:
    left, right = harmonic_tone(RATE, 0.4, f0=150.0), harmonic_tone(RATE, 0.4, f0=220.0)
    stereo = np.stack([left, right], axis=1)  # [samples, 2], as sf.read returns a stereo file
    torch.testing.assert_close(vocoder.mel(stereo, RATE), vocoder.mel((left + right) / 2, RATE))
    batch = vocoder.mel(np.stack([left, right]), RATE)  # [2, samples]: two utterances
    assert batch.shape == (2, *vocoder.mel(left, RATE).shape)


def test_pt_and_exported_safetensors_give_the_same_audio(checkpoint: Path, vocoder: Vocoder,
                                                         tmp_path: Path) -> None:
    exported = export_safetensors(checkpoint, tmp_path / "tiny.safetensors")
    from_file = Vocoder.from_checkpoint(exported, device="cpu")
    assert from_file.sample_rate == RATE and from_file.config == vocoder.config
    mel = tone_mel(vocoder, 0.4)
    expected = vocoder.vocode(mel, generator=seeded(3))
    assert torch.equal(from_file.vocode(mel, generator=seeded(3)), expected)
    raw = Vocoder.from_checkpoint(checkpoint, device="cpu", use_ema=False)  # the raw weights are not the EMA
    assert (raw.vocode(mel, generator=seeded(3)) - expected).abs().max() > 1e-3


# --- randomness and batches ---------------------------------------------------------------------------
def test_fixed_seed_is_bit_identical_and_seeds_differ(vocoder: Vocoder) -> None:
    mel = tone_mel(vocoder, 0.4)
    first = vocoder.vocode(mel, generator=seeded(1))
    assert torch.equal(vocoder.vocode(mel, generator=seeded(1)), first)
    assert (vocoder.vocode(mel, generator=seeded(2)) - first).abs().max() > 1e-2
    torch.manual_seed(5)  # without a generator, the base seed comes from torch's global one
    global_first = vocoder.vocode(mel)
    torch.manual_seed(5)
    assert torch.equal(vocoder.vocode(mel), global_first)


def in_precision(vocoder: Vocoder, precision: str) -> Vocoder:
    """The same model and config in another precision (bf16: GEMMs in bf16, the chain in fp32)."""
    return vocoder if precision == "fp32" else Vocoder(vocoder.model, vocoder.config, "cpu", precision)


# Tolerances of the two precisions for results that are equal in exact arithmetic. fp32: rounding. bf16: oneDNN
# blocks a bf16 GEMM's accumulation by the GEMM's shape and the threads it has, and a batch or a window changes
# the shape, so the same utterance's estimates differ by bf16 rounding (2^-8 relative), which the 6 steps carry
# into the audio: measured up to 1.5e-3 (batch) and 4e-5 (windows) with 2 threads, 0 with 1 thread. Every test
# using these keeps a control (other mels, hard cuts) that must exceed 1e-2.
EXACT_ATOL = {"fp32": 1e-5, "bf16": 4e-3}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("chunk_seconds", [None, 0.256])
def test_utterance_in_a_batch_sounds_as_it_does_alone(vocoder: Vocoder, chunk_seconds: float | None,
                                                      precision: str) -> None:
    vocoder = in_precision(vocoder, precision)
    short = tone_mel(vocoder, 0.5, f0=150, seed=1)[:, :37]
    long = tone_mel(vocoder, 1.0, f0=240, seed=2)
    batch = torch.full((2, vocoder.n_mels, long.shape[-1]), 3.0)  # padding that would show if it leaked
    batch[0] = long
    batch[1, :, :37] = short
    options = dict(sampler="fast", chunk_seconds=chunk_seconds, overlap_seconds=0.064)
    together = vocoder.vocode(batch, lengths=[long.shape[-1], 37], generator=seeded(4), **options)
    alone = [vocoder.vocode(item, generator=seeded(4), **options) for item in (long, short)]
    assert [audio.shape[0] for audio in together] == [long.shape[-1] * 64, 37 * 64]
    for batched, single in zip(together, alone, strict=True):
        torch.testing.assert_close(batched, single, atol=EXACT_ATOL[precision], rtol=0)
    assert (together[1] - together[0][:37 * 64]).abs().max() > 1e-2  # different mels, different audio


def positional_draws(seed: int, length: int):
    """Draw i of PositionalNoise(seed) over samples [0, length): the noise the chain is fed, as a function."""
    return lambda i: PositionalNoise(seed).fill(torch.empty(length), i, 0).double()


@pytest.mark.parametrize("sampler", ["fast", "ddim"])
def test_reverse_chain_lands_where_the_step_formulas_put_it(sampler: str) -> None:
    """With a perfect network for Gaussian data whose mean comes from the conditioning (tests.analytic), every
    step is affine: the vocoder's chain (x_T, each step's coefficients, positional noise, conditioning) must
    equal the papers' step formulas applied to the same draws, to fp32 rounding."""
    config = load_config("tiny")
    torch.manual_seed(0)
    model = GaussianNetwork(config, std=0.2)
    vocoder = Vocoder(model, config, device="cpu")
    tone = harmonic_tone(RATE, 0.3, f0=180.0)
    tone[len(tone) // 2:] *= 0.05  # a loud half and a quiet half: the conditioning, so the mean, varies
    mel = vocoder.mel(tone, RATE)
    frames, length = mel.shape[-1], mel.shape[-1] * vocoder.hop_length
    sampling = vocoder.sampling(sampler=sampler)
    plan = sampling.plan
    assert (plan.sigmas > 0).any() == (sampler == "fast")
    with torch.inference_mode():
        mine = vocoder._reverse_chain(sampling, [mel], [PositionalNoise(9)], [(0, frames)], [None])[0].double()
        mean = model.mean_of(model.condition(mel.unsqueeze(0)))[0]
    draws = positional_draws(9, length)
    expected = run_chain(plan, draws(len(plan)), draws, 0.2, mean)
    assert mine.abs().max() > 0.1 and mean.std() > 0.02
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    # Controls: the check sees the conditioning (the mean), and, where steps are noisy, which draw each takes.
    assert (run_chain(plan, draws(len(plan)), draws, 0.2) - mine).abs().max() > 1e-2
    if sampler == "fast":
        shifted = run_chain(plan, draws(len(plan)), lambda i: draws(i + 1), 0.2, mean)
        assert (shifted - mine).abs().max() > 1e-2


def test_bf16_vocoding_keeps_25_db_of_the_fp32_audio(vocoder: Vocoder) -> None:
    """Same noise (same generator state), the chain in fp32 either way: bf16 GEMMs cost only their rounding."""
    mel = tone_mel(vocoder, 1.0)
    fp32 = vocoder.vocode(mel, generator=seeded(7))
    bf16 = in_precision(vocoder, "bf16").vocode(mel, generator=seeded(7))
    snr_db = 10 * torch.log10(fp32.pow(2).sum() / (bf16 - fp32).pow(2).sum()).item()
    assert 25 < snr_db < 90  # not bit-identical: bf16 really ran


# --- long inputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_matches_unchunked_with_the_default_sampler(vocoder: Vocoder, monkeypatch: pytest.MonkeyPatch,
                                                            precision: str) -> None:
    """The default sampler (fast, fresh noise at every step): the tiny model reaches 6 samples per forward,
    36 over the chain, well inside the 4 frames (256 samples) of context each cross-faded sample has, and the
    noise is positional, so chunked output equals unchunked output up to rounding."""
    vocoder = in_precision(vocoder, precision)
    assert vocoder.model.reach * len(vocoder.plan()) < 4 * vocoder.hop_length
    mel = tone_mel(vocoder, 1.0)  # 125 frames: windows of 32 frames + 8 of context -> 4 windows
    windows: list[int] = []
    condition = vocoder.model.condition

    def counting_condition(window_mel: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        windows.append(window_mel.shape[-1])
        return condition(window_mel, out=out)

    monkeypatch.setattr(vocoder.model, "condition", counting_condition)
    whole = vocoder.vocode(mel, generator=seeded(6), chunk_seconds=None)
    assert len(windows) == 1  # the conditioning is computed once, not at each of the 6 steps
    chunked = vocoder.vocode(mel, generator=seeded(6), chunk_seconds=0.256, overlap_seconds=0.064)
    assert len(windows) == 1 + 4 and max(windows[1:]) < mel.shape[-1]
    assert whole.abs().max() > 0.1
    torch.testing.assert_close(chunked, whole, atol=EXACT_ATOL[precision], rtol=0)
    # Without context the windows' edges show: the test above is sensitive to the chunking.
    hard_cuts = vocoder.vocode(mel, generator=seeded(6), chunk_seconds=0.256, overlap_seconds=0.0)
    assert (hard_cuts - whole).abs().max() > 1e-2


def test_default_windows_hold_the_same_conditioning_memory_in_each_dtype(vocoder: Vocoder,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """chunk_seconds="auto" (the default): window cores as long as 3 s of fp32 conditioning's memory holds in
    the dtype the model's engine keeps it in. On a CPU that is 2 bytes per value in either precision (fp16 for
    fp32, bf16 for bf16), so 6 s: 5 s of mel is one window, 7 s two. fp32 on a GPU keeps fp32, so 3 s."""
    model = vocoder.model
    assert model.conditioning_dtype(torch.float32, torch.device("cpu")) == torch.float16
    assert model.conditioning_dtype(torch.bfloat16, torch.device("cpu")) == torch.bfloat16
    assert model.conditioning_dtype(torch.float32, torch.device("cuda")) == torch.float32
    windows = []
    condition = model.condition

    def counting_condition(window_mel: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        windows.append(window_mel.shape[-1])
        return condition(window_mel, out=out)

    monkeypatch.setattr(model, "condition", counting_condition)
    frames_per_second = RATE / vocoder.hop_length
    for precision, stored in (("fp32", torch.float16), ("bf16", torch.bfloat16)):
        for seconds, count in ((5.0, 1), (7.0, 2)):
            mel = tone_mel(vocoder, seconds)
            windows.clear()
            vocoder.vocode(mel, generator=seeded(0), dtype=precision, sampler="ddim", steps=1)
            assert len(windows) == count, (precision, seconds)
            if count == 2:  # a 6 s core with 0.3 s of context (and the mel margin)
                assert 6.3 * frames_per_second <= max(windows) < mel.shape[-1]
        assert vocoder._buffer.dtype == stored


def test_fp32_vocoding_from_the_fp16_conditioning_cache_keeps_70_db_of_an_fp32_cache(
        vocoder: Vocoder, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU the fp32 engine reads its cached conditioning in fp16 (half the memory: 6 s windows); the audio
    stays within 70 dB of what an fp32 cache gives (this test model: 74.6 dB; the shipped voice 93-100 dB on
    real clips), and is not identical to it."""
    mel = tone_mel(vocoder, 0.5)
    from_fp16 = vocoder.vocode(mel, generator=seeded(2), dtype="fp32")
    assert vocoder._buffer.dtype == torch.float16
    monkeypatch.setattr(vocoder.model, "conditioning_dtype", lambda dtype, device: dtype)
    from_fp32 = vocoder.vocode(mel, generator=seeded(2), dtype="fp32")
    assert vocoder._buffer.dtype == torch.float32
    snr_db = 10 * torch.log10(from_fp32.pow(2).sum() / (from_fp16 - from_fp32).pow(2).sum()).item()
    assert 70 < snr_db < 200, snr_db


def test_window_conditioning_equals_the_utterances(vocoder: Vocoder) -> None:
    """A window's conditioning is computed from its own mel slice (bounded memory), yet equals the slice of
    the whole utterance's: the upsampler reaches one frame beyond, which the window's mel margin supplies."""
    mel = tone_mel(vocoder, 0.5)
    hop = vocoder.hop_length
    with torch.inference_mode():
        whole = vocoder.model.condition(mel.unsqueeze(0))
        for start, stop in ((0, 12), (10, 21), (20, mel.shape[-1])):
            window = vocoder._conditioning([mel], [(start, stop)], (stop - start) * hop, torch.float32)
            assert window.dtype == torch.float16  # the CPU engine's cache (fp32 products stored in fp16)
            torch.testing.assert_close(window.float(), whole[..., start * hop:stop * hop], atol=1e-6, rtol=2**-11)


# --- refusals -----------------------------------------------------------------------------------------
def test_wrong_number_of_bins_is_refused_with_both_counts(vocoder: Vocoder) -> None:
    with pytest.raises(VocodeError) as error:
        vocoder.vocode(torch.full((100, 40), -5.0))
    assert str(error.value) == "mel has 100 bins, model expects 20 (preset hifigan)"


def test_mel_of_the_other_preset_is_refused_naming_both(vocoder: Vocoder) -> None:
    natural_log = tone_mel(vocoder, 0.3)
    with pytest.raises(VocodeError, match=r"looks like an lmnt mel in \[0, 1\].*hifigan"):
        vocoder.vocode(torch.rand(vocoder.n_mels, 20))
    config = load_config("tiny", ["audio.mel_preset=lmnt"])
    lmnt = Vocoder(DiffWave.from_config(config), config, device="cpu")
    with pytest.raises(VocodeError, match=r"natural-log \(hifigan-style\) mel, but this model expects lmnt mels"):
        lmnt.vocode(natural_log)
    assert lmnt.vocode(lmnt.mel(harmonic_tone(RATE, 0.3), RATE)).shape[0] > 0  # its own mels are accepted


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_mel_is_refused(vocoder: Vocoder, bad: float) -> None:
    mel = tone_mel(vocoder, 0.3)
    mel[3, 7] = bad
    with pytest.raises(VocodeError, match="non-finite values.*frame 7"):
        vocoder.vocode(mel)
    with pytest.raises(VocodeError, match="mel 1 of the batch"):
        vocoder.vocode(torch.stack([tone_mel(vocoder, 0.3), mel]))


@pytest.mark.parametrize(("options", "message"), [
    (dict(sampler="euler"), "unknown sampler 'euler'"),
    (dict(sampler="fast", steps=8), "steps applies to the ddim and consistency samplers"),
    (dict(sampler="ddim", schedule="base"), "schedule applies to the fast sampler"),
    (dict(lengths=[5]), "lengths is for a batch"),
    (dict(chunk_seconds=0.1, overlap_seconds=0.2), "overlap_seconds <= chunk_seconds"),
])
def test_bad_options_are_refused(vocoder: Vocoder, options: dict, message: str) -> None:
    with pytest.raises(DiffwaveError, match=re.escape(message)):
        vocoder.vocode(tone_mel(vocoder, 0.3), **options)


def test_fp16_needs_cuda_and_auto_is_measured(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(VocodeError, match="needs a CUDA device"):
        Vocoder.from_checkpoint(checkpoint, device="cpu", dtype="fp16")
    assert Vocoder.from_checkpoint(checkpoint, device="cpu", dtype="bf16").dtype == torch.bfloat16
    with caplog.at_level("INFO", logger="diffwave.precision"):  # both branches: tests/test_precision.py
        assert Vocoder.from_checkpoint(checkpoint, device="cpu", dtype="auto").dtype in (torch.float32, torch.bfloat16)
    assert any("precision auto -> " in r.message and "measured" in r.message for r in caplog.records)


def test_unconditional_checkpoint_is_refused(tmp_path: Path) -> None:
    config = load_config("tiny", ["model.conditional=false"])
    weights = DiffWave.from_config(config).state_dict()
    path = tmp_path / "unconditional.pt"
    torch.save({"format_version": FORMAT_VERSION, "config": config_to_dict(config), "step": 1, "model": weights,
                "ema": weights}, path)
    with pytest.raises(VocodeError) as error:
        Vocoder.from_checkpoint(path, device="cpu")
    assert str(error.value) == (f"{path} is an unconditional model; vocoding needs a conditional (mel) checkpoint; "
                                "use `diffwave generate`")


def test_weights_that_do_not_fit_the_config_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    state = load_checkpoint(checkpoint)
    state["config"]["model"]["residual_channels"] = 16
    path = tmp_path / "misfit.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: its weights do not fit its own config")):
        Vocoder.from_checkpoint(path, device="cpu")


class _RunsCode:
    """Unpickling this object would run a shell command (RELIABILITY A1)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize(("name", "use_ema"), [("evil.pt", True), ("evil.pt", False), ("evil.safetensors", False)])
def test_checkpoint_whose_pickle_runs_code_is_refused(tmp_path: Path, name: str, use_ema: bool) -> None:
    marker = tmp_path / "MARKER"
    path = tmp_path / name
    torch.save({"format_version": FORMAT_VERSION, "ema": _RunsCode(marker)}, path)
    # (torch.load reads a .safetensors name as safetensors, so that refusal names the header, not the global)
    unsafe_global = ".*system" if path.suffix == ".pt" else ""
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + unsafe_global):
        Vocoder.from_checkpoint(path, device="cpu", use_ema=use_ema)
    assert not marker.exists()


# --- quality ------------------------------------------------------------------------------------------
def log_mel_distance(vocoder: Vocoder, audio: torch.Tensor, reference: np.ndarray) -> float:
    produced, expected = vocoder.mel(audio, vocoder.sample_rate), vocoder.mel(reference, RATE)
    return (produced - expected[:, :produced.shape[-1]]).abs().mean().item()


@pytest.mark.slow
def test_trained_model_resynthesises_better_than_an_untrained_one(vocoder: Vocoder) -> None:
    torch.manual_seed(0)
    untrained = Vocoder(DiffWave.from_config(vocoder.config), vocoder.config, device="cpu")
    for f0, seed in ((130.0, 1), (180.0, 5), (250.0, 2)):
        reference = harmonic_tone(RATE, 1.0, f0=f0, seed=seed)
        trained_distance = log_mel_distance(vocoder, vocoder.resynthesize(reference, RATE, generator=seeded(0)),
                                            reference)
        untrained_distance = log_mel_distance(
            untrained, untrained.resynthesize(reference, RATE, generator=seeded(0)), reference)
        assert trained_distance < 0.75 * untrained_distance, (f0, trained_distance, untrained_distance)


# --- a Griffin-Lim start (issue 23: --init griffin-lim --start-step K) -----------------------------------
def last_states(plan: ReversePlan, k: int) -> ReversePlan:
    """The plan's last K states (indices 0..K-1), sliced here rather than by the package's starting_at."""
    return ReversePlan("last", plan.alpha_bars[:k], plan.alpha_bars_prev[:k], plan.model_steps[:k],
                       plan.sigmas[:k], plan.update)


def griffin_lim_chain(vocoder: Vocoder, model: GaussianNetwork, mel: torch.Tensor, k: int, seed: int,
                      prior_std: torch.Tensor | float = 1.0, estimate: torch.Tensor | None = None) -> torch.Tensor:
    """What `vocode(mel, init="griffin-lim", start_step=k, generator=seeded(seed), chunk_seconds=None)` must
    give for a perfect network, computed independently: the utterance's seed from the generator and the mel,
    its Griffin-Lim estimate (`estimate` replaces it, for controls), x = sqrt(abar) x_GL + sqrt(1 - abar) S eps
    at the plan's state K - 1 (eps: the draw a K-step chain takes for its start), then the step formulas."""
    utterance = utterance_seed(draw_seed(seeded(seed)), mel)
    length = mel.shape[-1] * vocoder.hop_length
    draws = positional_draws(utterance, length)
    if estimate is None:
        estimate = griffin_lim(mel, vocoder.config.audio, GRIFFIN_LIM_ITERATIONS, seed=utterance)
    plan = last_states(vocoder.plan(), k)
    alpha_bar = plan.alpha_bars[-1].item()
    start = alpha_bar**0.5 * estimate.double() + (1 - alpha_bar) ** 0.5 * prior_std * draws(k)
    with torch.inference_mode():
        mean = model.mean_of(model.condition(mel.unsqueeze(0)))[0]
    return run_chain(plan, start, draws, 0.2, mean, prior_std).clamp(-1.0, 1.0)


def gaussian_vocoder_and_mel() -> tuple[Vocoder, GaussianNetwork, torch.Tensor]:
    """The tiny config's vocoder around a perfect network for Gaussian data, and the mel of a tone that drops
    to 5% of its level half-way."""
    config = load_config("tiny")
    torch.manual_seed(0)
    model = GaussianNetwork(config, std=0.2)
    vocoder = Vocoder(model, config, device="cpu")
    tone = harmonic_tone(RATE, 0.3, f0=180.0)
    tone[len(tone) // 2:] *= 0.05
    return vocoder, model, vocoder.mel(tone, RATE)


@pytest.mark.parametrize("k", [1, 3, 6])
def test_griffin_lim_start_refines_the_estimate_through_the_last_k_states(k: int) -> None:
    """With a perfect network for Gaussian data (tests.analytic), the chain from a Griffin-Lim start is affine:
    the vocoder's audio must equal the step formulas applied to the noised estimate, to fp32 rounding; the
    controls show that the check sees the estimate, the state it enters at and the noise of that state."""
    vocoder, model, mel = gaussian_vocoder_and_mel()
    assert len(vocoder.plan()) == 6
    mine = vocoder.vocode(mel, init="griffin-lim", start_step=k, generator=seeded(3), chunk_seconds=None).double()
    expected = griffin_lim_chain(vocoder, model, mel, k, 3)
    assert mine.abs().max() > 0.1
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    from_noise = vocoder.vocode(mel, generator=seeded(3), chunk_seconds=None).double()
    assert (from_noise - mine).abs().max() > 1e-2
    without_estimate = griffin_lim_chain(vocoder, model, mel, k, 3, estimate=torch.zeros(len(mine)))
    assert (without_estimate - mine).abs().max() > 1e-3  # 100 x the tolerance; the full chain forgets most of it
    if k < 6:  # entering one state higher is another chain
        assert (griffin_lim_chain(vocoder, model, mel, k + 1, 3) - mine).abs().max() > 1e-2


@pytest.mark.parametrize("k", [1, 4])
def test_griffin_lim_envelope_start_refines_the_rescaled_estimate(k: int) -> None:
    """init griffin-lim-envelope: the same chain from the Griffin-Lim estimate rescaled toward the mel by the
    network-free control (rescale_to_mel, clamped), computed here independently; the plain Griffin-Lim start
    (same seed, same K) is another chain, so the check sees the rescaling."""
    vocoder, model, mel = gaussian_vocoder_and_mel()
    mine = vocoder.vocode(mel, init="griffin-lim-envelope", start_step=k, generator=seeded(3),
                          chunk_seconds=None).double()
    utterance = utterance_seed(draw_seed(seeded(3)), mel)
    plain = griffin_lim(mel, vocoder.config.audio, GRIFFIN_LIM_ITERATIONS, seed=utterance)
    rescaled = rescale_to_mel(plain, mel, vocoder.config.audio).clamp(-1.0, 1.0)
    assert (rescaled - plain).abs().max() > 1e-2  # the rescaling moves the estimate
    expected = griffin_lim_chain(vocoder, model, mel, k, 3, estimate=rescaled)
    assert mine.abs().max() > 0.1
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    from_plain = vocoder.vocode(mel, init="griffin-lim", start_step=k, generator=seeded(3), chunk_seconds=None)
    torch.testing.assert_close(from_plain.double(), griffin_lim_chain(vocoder, model, mel, k, 3), atol=1e-5, rtol=0)
    assert (from_plain.double() - mine).abs().max() > 1e-3  # 100 x the tolerance


def test_griffin_lim_start_is_batch_independent_and_chunks_like_the_whole(vocoder: Vocoder) -> None:
    """The estimate is made once per utterance and sliced per window, and its noise is positional: chunked
    output equals unchunked output (the tiny model's reach over 2 steps lies well inside the context), and an
    utterance in a batch sounds as it does alone."""
    long, short = tone_mel(vocoder, 1.0, f0=240, seed=2), tone_mel(vocoder, 0.5, f0=150, seed=1)[:, :37]
    options = dict(init="griffin-lim", start_step=2)
    whole = vocoder.vocode(long, generator=seeded(6), chunk_seconds=None, **options)
    chunked = vocoder.vocode(long, generator=seeded(6), chunk_seconds=0.256, overlap_seconds=0.064, **options)
    assert whole.abs().max() > 0.1
    torch.testing.assert_close(chunked, whole, atol=EXACT_ATOL["fp32"], rtol=0)
    hard_cuts = vocoder.vocode(long, generator=seeded(6), chunk_seconds=0.256, overlap_seconds=0.0, **options)
    assert (hard_cuts - whole).abs().max() > 1e-3  # without context the seams show: the check can fail
    batch = torch.full((2, vocoder.n_mels, long.shape[-1]), 3.0)
    batch[0], batch[1, :, :37] = long, short
    together = vocoder.vocode(batch, lengths=[long.shape[-1], 37], generator=seeded(6), chunk_seconds=0.256,
                              overlap_seconds=0.064, **options)
    torch.testing.assert_close(together[0], chunked, atol=EXACT_ATOL["fp32"], rtol=0)
    alone = vocoder.vocode(short, generator=seeded(6), chunk_seconds=0.256, overlap_seconds=0.064, **options)
    torch.testing.assert_close(together[1], alone, atol=EXACT_ATOL["fp32"], rtol=0)


@pytest.mark.parametrize(("options", "message"), [
    (dict(init="griffin-lim"), "init 'griffin-lim' needs start_step K"),
    (dict(init="griffin-lim", start_step=0), "start_step must be a whole number in 1..6"),
    (dict(init="griffin-lim", start_step=7), "start_step must be a whole number in 1..6"),
    (dict(init="griffin-lim", sampler="ddim", steps=4, start_step=5), "start_step must be a whole number in 1..4"),
    (dict(init="griffin-lim-envelope"), "init 'griffin-lim-envelope' needs start_step K"),
    (dict(init="griffin-lim-envelope", start_step=7), "start_step must be a whole number in 1..6"),
    (dict(start_step=2), "start_step applies to init 'griffin-lim' or 'griffin-lim-envelope' only"),
    (dict(init="sdedit"), "unknown init 'sdedit'"),
])
def test_bad_start_options_are_refused_before_any_work(vocoder: Vocoder, options: dict, message: str) -> None:
    with pytest.raises(VocodeError, match=re.escape(message)):
        vocoder.vocode(torch.zeros(3, 5), **options)  # a bad mel too: never reached


@pytest.mark.parametrize("init", ["griffin-lim", "griffin-lim-envelope"])
def test_cli_griffin_lim_start(checkpoint: Path, vocoder: Vocoder, tmp_path: Path, capsys, init: str) -> None:
    """The flags reach the vocoder (same audio as the API) and a bad K is one clear line, exit code 2."""
    mel = tone_mel(vocoder, 0.3)
    np.save(tmp_path / "a.npy", mel.numpy())
    common = ["vocode", str(tmp_path / "a.npy"), "--checkpoint", str(checkpoint), "--device", "cpu", "--dtype",
              "fp32", "--init", init]
    assert cli.main([*common, "--start-step", "2", "-o", str(tmp_path / "out.wav")]) == 0
    written, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    api = vocoder.vocode(mel, init=init, start_step=2, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(written, api.numpy(), atol=1 / 2**15, rtol=0)
    assert cli.main([*common, "--start-step", "9", "-o", str(tmp_path / "bad.wav")]) == 2
    assert "start_step must be a whole number in 1..6" in capsys.readouterr().err
    assert not (tmp_path / "bad.wav").exists()


@pytest.mark.parametrize(("default", "asked", "expected"), [
    ((None, None), {}, ("noise", 6)),
    (("griffin-lim-envelope", 2), {}, ("griffin-lim-envelope", 2)),
    (("griffin-lim-envelope", 2), dict(start_step=3), ("griffin-lim-envelope", 3)),
    (("griffin-lim-envelope", 2), dict(init="griffin-lim"), ("griffin-lim", 2)),
    (("griffin-lim-envelope", 2), dict(init="noise"), ("noise", 6)),  # an explicit noise start: the whole plan
    (("griffin-lim", 1), dict(sampler="ddim", steps=4), ("griffin-lim", 1)),
])
def test_a_model_default_start_applies_when_the_caller_names_none(default: tuple, asked: dict,
                                                                   expected: tuple) -> None:
    """SamplingOptions.init None is the model's diffusion.init; a Griffin-Lim init without a start_step takes
    the model's diffusion.init_start_step."""
    init, k = default
    config = load_config("tiny", [] if init is None else [f"diffusion.init={init}", f"diffusion.init_start_step={k}"])
    sampling = resolve(SamplingOptions(**asked), config)
    assert (sampling.init, len(sampling.plan)) == expected


def test_a_model_default_start_is_what_vocode_runs() -> None:
    """A vocoder whose model defaults to griffin-lim-envelope K=2 gives, unasked, the audio of an explicit
    init="griffin-lim-envelope", start_step=2; init="noise" the audio of the same network from noise."""
    vocoder, model, mel = gaussian_vocoder_and_mel()
    config = load_config("tiny", ["diffusion.init=griffin-lim-envelope", "diffusion.init_start_step=2"])
    defaulted = Vocoder(model, config, device="cpu")
    unasked = defaulted.vocode(mel, generator=seeded(1), chunk_seconds=None)
    asked = vocoder.vocode(mel, init="griffin-lim-envelope", start_step=2, generator=seeded(1), chunk_seconds=None)
    torch.testing.assert_close(unasked, asked, atol=0, rtol=0)
    from_noise = defaulted.vocode(mel, init="noise", generator=seeded(1), chunk_seconds=None)
    torch.testing.assert_close(from_noise, vocoder.vocode(mel, generator=seeded(1), chunk_seconds=None), atol=0, rtol=0)
    assert (from_noise - unasked).abs().max() > 1e-2


def test_generate_refuses_a_griffin_lim_start() -> None:
    config = load_config("tiny", ["model.conditional=false"])
    with pytest.raises(DiffwaveError, match="needs a conditional"):
        resolve(SamplingOptions(init="griffin-lim", start_step=1), config)


# --- the envelope finish (issue 23: --finish envelope) -----------------------------------------------------
def test_envelope_finish_rescales_each_whole_output_toward_its_mel() -> None:
    """The finish is audio.griffin_lim.rescale_to_mel of each whole utterance's output: applied to the unfinished
    output of the same seed, it gives the same audio whatever the windows, and it moves the log-mel toward the
    target (the Gaussian network's output of a tone that drops to 5% is noisy where the tone is quiet)."""
    vocoder, _, mel = gaussian_vocoder_and_mel()
    plain = vocoder.vocode(mel, generator=seeded(3), chunk_seconds=None)
    finished = vocoder.vocode(mel, finish="envelope", generator=seeded(3), chunk_seconds=None)
    expected = rescale_to_mel(plain, mel, vocoder.config.audio).clamp(-1.0, 1.0)
    torch.testing.assert_close(finished, expected, atol=0, rtol=0)
    windowed = vocoder.vocode(mel, finish="envelope", generator=seeded(3), chunk_seconds=0.1, overlap_seconds=0.05)
    plain_windowed = vocoder.vocode(mel, generator=seeded(3), chunk_seconds=0.1, overlap_seconds=0.05)
    torch.testing.assert_close(windowed, rescale_to_mel(plain_windowed, mel, vocoder.config.audio).clamp(-1, 1),
                               atol=0, rtol=0)

    def distance(audio: torch.Tensor) -> float:
        return (vocoder.mel(audio, RATE) - mel[:, :mel.shape[-1]]).abs().mean().item()

    assert distance(finished) < 0.5 * distance(plain), (distance(finished), distance(plain))


@pytest.mark.parametrize(("default", "asked", "expected"), [
    ("none", {}, "none"), ("envelope", {}, "envelope"), ("envelope", dict(finish="none"), "none"),
    ("none", dict(finish="envelope"), "envelope"),
])
def test_a_model_default_finish_applies_when_the_caller_names_none(default: str, asked: dict, expected: str) -> None:
    config = load_config("tiny", [f"diffusion.finish={default}"])
    assert resolve(SamplingOptions(**asked), config).finish == expected


def test_bad_finishes_are_refused(vocoder: Vocoder) -> None:
    with pytest.raises(VocodeError, match="unknown finish 'loudness'"):
        vocoder.vocode(torch.zeros(3, 5), finish="loudness")
    with pytest.raises(DiffwaveError, match="needs a conditional"):
        resolve(SamplingOptions(finish="envelope"), load_config("tiny", ["model.conditional=false"]))
    with pytest.raises(ConfigError, match="diffusion.finish is 'loud'"):
        load_config("tiny", ["diffusion.finish=loud"])


def test_cli_finish(checkpoint: Path, vocoder: Vocoder, tmp_path: Path) -> None:
    mel = tone_mel(vocoder, 0.3)
    np.save(tmp_path / "a.npy", mel.numpy())
    assert cli.main(["vocode", str(tmp_path / "a.npy"), "--checkpoint", str(checkpoint), "--device", "cpu",
                     "--dtype", "fp32", "--finish", "envelope", "-o", str(tmp_path / "out.wav")]) == 0
    written, _ = sf.read(tmp_path / "out.wav", dtype="float32")
    api = vocoder.vocode(mel, finish="envelope", generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(written, api.numpy(), atol=1 / 2**15, rtol=0)


@pytest.mark.parametrize(("peak", "plain_db"), [(0.2, 12.5), (0.9, -0.6)])
def test_envelope_finish_brings_the_output_to_the_level_of_the_mel(peak: float, plain_db: float) -> None:
    """The Gaussian network's output level ignores the mel's (as a prior whose energy statistics clamp a level
    the corpus never had): a quiet voice comes out 12.5 dB too loud, one at the network's own level about right.
    The finish brings both within 1 dB of the reference's RMS (it corrects errors up to about 12 dB fully; the
    rescaling's 16 passes leave 2.3 dB of an 18 dB error)."""
    vocoder, _, _ = gaussian_vocoder_and_mel()
    reference = torch.from_numpy(harmonic_tone(RATE, 0.4, f0=200.0, amplitude=peak))
    mel = vocoder.mel(reference, RATE)

    def level_db(audio: torch.Tensor) -> float:
        n = min(audio.numel(), reference.numel())
        return 20 * math.log10(audio[:n].pow(2).mean().sqrt().item() / reference[:n].pow(2).mean().sqrt().item())

    plain = vocoder.vocode(mel, generator=seeded(0), chunk_seconds=None)
    finished = vocoder.vocode(mel, finish="envelope", generator=seeded(0), chunk_seconds=None)
    assert level_db(plain) == pytest.approx(plain_db, abs=1.0)
    assert abs(level_db(finished)) < 1.0, level_db(finished)


def test_the_held_out_setup_sentence_says_how_the_default_path_starts_and_finishes() -> None:
    from diffwave.evaluation.heldout import describe_setup

    vocoder, model, _ = gaussian_vocoder_and_mel()
    sets = {"tones": {"a": torch.zeros(RATE // 4)}}
    assert "finished" not in describe_setup(vocoder, sets)
    config = load_config("tiny", ["diffusion.init=griffin-lim-envelope", "diffusion.init_start_step=1",
                                  "diffusion.finish=envelope"])
    text = describe_setup(Vocoder(model, config, device="cpu"), sets)
    assert "default start (griffin-lim-envelope: the estimate refined through the last 1 of 6" in text
    assert "finished by the envelope rescaling toward the mel" in text
