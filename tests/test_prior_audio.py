"""PriorGrad's prior from the mel (audio/prior.py), its config, and its use by the trainer and the vocoder."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from diffwave.audio import LogMel
from diffwave.audio.prior import (
    ENERGY_QUANTILE,
    EnergyPrior,
    corpus_energy_range,
    frame_energy,
    mel_magnitudes,
    reference_energy,
)
from diffwave.checkpoints import load_checkpoint
from diffwave.config import AudioConfig, config_from_dict, config_to_dict, load_config
from diffwave.data.dataset import crops_for_training, crops_for_validation
from diffwave.diffusion import ddim, fast_schedule
from diffwave.errors import ConfigError
from diffwave.inference import Vocoder
from diffwave.inference.chunking import PositionalNoise
from diffwave.inference.options import Sampling
from diffwave.training.distributed import init_distributed
from diffwave.training.run import train
from diffwave.training.setup import prepare_run_dir
from diffwave.training.trainer import Trainer
from tests.analytic import GaussianNetwork, run_chain
from tests.audio_fixtures import harmonic_tone
from tests.test_vocoder import griffin_lim_chain

RATE = 8000
QUIET = ["train.log_every=100000", "train.valid_every=100000", "train.sample_every=100000",
         "data.valid_fraction=0.1", "data.test_fraction=0.05"]
PRIORGRAD = ["diffusion.prior=priorgrad"]
HIFIGAN, LMNT = AudioConfig(), AudioConfig(mel_preset="lmnt", f_min=20.0, f_max=None)


def _training_energies(features: Path, config: AudioConfig) -> np.ndarray:
    """Every training frame's energy, written out here: sqrt of the summed exp(log-mel) (hifigan preset)."""
    assert config.mel_preset == "hifigan"
    ids = (features / "train.txt").read_text().split()
    return np.concatenate([np.sqrt(np.exp(np.load(features / "mel" / f"{i}.npy").astype(np.float64)).sum(0))
                           for i in ids])


# --- the mel -> standard deviation map ----------------------------------------------------------------
@pytest.mark.parametrize("config", [HIFIGAN, LMNT], ids=["hifigan", "lmnt"])
def test_magnitudes_invert_each_presets_compression(config):
    """The presets' published compressions, written here: hifigan ln(M); lmnt (20 log10 M - 20 + 100) / 100."""
    magnitudes = torch.logspace(-3.9, 0.9, 50, dtype=torch.float64).reshape(5, 10)  # inside lmnt's [1e-4, 10]
    mel = magnitudes.log() if config.mel_preset == "hifigan" else (20 * magnitudes.log10() - 20 + 100) / 100
    torch.testing.assert_close(mel_magnitudes(mel, config), magnitudes, rtol=1e-12, atol=0)
    assert torch.allclose(frame_energy(mel, config), magnitudes.sum(dim=0).sqrt(), rtol=1e-12)


@pytest.mark.parametrize("config", [HIFIGAN, LMNT], ids=["hifigan", "lmnt"])
def test_frame_energy_of_a_real_mel_follows_the_loudness(config):
    """Each preset's own mel of a tone that is loud, then 20 dB quieter, then silent: energies in that order."""
    tone = harmonic_tone(config.sample_rate, 0.5, noise=0.0)
    audio = torch.from_numpy(np.concatenate([tone, 0.1 * tone, np.zeros_like(tone)]))
    energy = frame_energy(LogMel(config)(audio), config)
    third = energy.numel() // 3
    loud, quiet, silent = energy[5:third - 5].mean(), energy[third + 5:2 * third - 5].mean(), energy[-third + 5:]
    assert loud > 2 * quiet > 4 * silent.max()


def test_std_is_normalised_floored_capped_and_held_over_each_hop():
    audio = dataclasses.replace(HIFIGAN, hop_length=4)
    prior = EnergyPrior(audio, energy_min=1.0, energy_max=3.0, floor=0.1)
    energies = torch.tensor([1.0, 1.1, 2.0, 2.5, 3.0, 9.0])  # -> 0, 0.05, 0.5, 0.75, 1, 4 before clamping
    mel = (energies**2 / audio.n_mels).log().expand(audio.n_mels, -1)  # equal bins: sum exp = energy^2
    expected = torch.tensor([0.1, 0.1, 0.5, 0.75, 1.0, 1.0])
    torch.testing.assert_close(prior.frame_std(mel), expected, rtol=1e-5, atol=1e-6)
    std = prior.std(mel.unsqueeze(0).expand(2, -1, -1))
    assert std.shape == (2, 6 * 4)
    torch.testing.assert_close(std[1].reshape(6, 4), expected[:, None].expand(6, 4), rtol=1e-5, atol=1e-6)


def test_corpus_range_is_the_minimum_and_a_high_quantile(tiny_features):
    config = load_config("tiny").audio
    ids = (tiny_features / "train.txt").read_text().split()
    low, high = corpus_energy_range((np.load(tiny_features / "mel" / f"{i}.npy") for i in ids), config)
    energies = _training_energies(tiny_features, config)
    assert low == pytest.approx(energies.min(), rel=1e-12)
    assert high == pytest.approx(np.quantile(energies, ENERGY_QUANTILE), rel=1e-12)
    assert energies.min() < high < energies.max()


def test_a_silent_or_empty_corpus_has_no_range():
    silent = np.full((HIFIGAN.n_mels, 20), math.log(1e-5), dtype=np.float32)
    with pytest.raises(ConfigError, match="same energy"):
        corpus_energy_range([silent, silent], HIFIGAN)
    with pytest.raises(ConfigError, match="no mel frames"):
        corpus_energy_range([], HIFIGAN)


# --- per-utterance normalisation -------------------------------------------------------------------------
def _numpy_std(mel: torch.Tensor, e_min: float, e_max: float, floor: float, e_ref: float | None) -> np.ndarray:
    """The module doc's S, written out with numpy (hifigan preset): e = sqrt(sum exp(mel)), scaled by
    e_max / e_ref when given, then (e - e_min) / (e_max - e_min) clipped to [floor, 1]."""
    energy = np.sqrt(np.exp(mel.double().numpy()).sum(axis=0))
    if e_ref is not None:
        energy = energy * e_max / e_ref
    return np.clip((energy - e_min) / (e_max - e_min), floor, 1.0)


def test_a_voice_louder_or_quieter_than_the_corpus_keeps_its_envelope_per_utterance():
    """The corpus is one voice (loud half, quiet half); the same voice 26 dB quieter and 7 dB louder is
    clamped by corpus statistics (the floor almost everywhere, or 1 over the loud half), but per utterance its
    S is the corpus voice's own. Every S is checked against the numpy formula."""
    config = HIFIGAN
    voice = harmonic_tone(config.sample_rate, 1.0, f0=150.0, noise=0.0)
    voice[len(voice) // 2:] *= 0.1
    voice *= 0.4 / np.abs(voice).max()
    mel_of = lambda gain: LogMel(config)(torch.from_numpy(gain * voice).float())  # noqa: E731
    e_min, e_max = corpus_energy_range([mel_of(1.0)], config)
    corpus = EnergyPrior(config, e_min, e_max, floor=0.1)
    per_utterance = dataclasses.replace(corpus, per_utterance=True)
    own = corpus.frame_std(mel_of(1.0)).numpy()
    assert own.max() == pytest.approx(1.0) and own.min() < 0.5  # the corpus voice spans the range
    for gain in (0.05, 2.2):
        mel = mel_of(gain)
        e_ref = reference_energy(mel, config)
        assert e_ref == pytest.approx(np.quantile(np.sqrt(np.exp(mel.double().numpy()).sum(0)), ENERGY_QUANTILE))
        clamped = corpus.frame_std(mel).numpy()
        normalised = per_utterance.frame_std(mel, per_utterance.reference(mel)).numpy()
        np.testing.assert_allclose(clamped, _numpy_std(mel, e_min, e_max, 0.1, None), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(normalised, _numpy_std(mel, e_min, e_max, 0.1, e_ref), rtol=1e-5, atol=1e-6)
        assert np.abs(clamped - own).mean() > 0.1
        assert np.abs(normalised - own).mean() < 0.02
    with pytest.raises(ValueError, match="needs each utterance's reference energy"):
        per_utterance.frame_std(mel_of(1.0))
    with pytest.raises(ValueError, match="takes no reference"):
        corpus.frame_std(mel_of(1.0), torch.tensor(1.0))


def test_crops_carry_their_whole_utterances_reference_energy(tiny_features):
    """Every crop of an utterance, training or validation, carries e_ref of the whole utterance (numpy here);
    crops of a corpus-normalised prior carry none."""
    config = load_config("tiny", [*PRIORGRAD, "diffusion.prior_normalization=utterance", "data.crop_frames=4"])
    train_crops = crops_for_training(tiny_features, config)
    valid_crops = crops_for_validation(tiny_features, config)
    for crops in (train_crops, valid_crops):
        for index in range(min(2, len(crops))):
            mel = np.load(crops.utterances[index].mel).astype(np.float64)
            expected = np.quantile(np.sqrt(np.exp(mel).sum(0)), ENERGY_QUANTILE)
            for epoch in (0, 1):
                crops.set_epoch(epoch)
                assert crops[index]["reference_energy"] == pytest.approx(expected, rel=1e-12)
    assert "reference_energy" not in crops_for_training(tiny_features, load_config("tiny", PRIORGRAD))[0]
    with pytest.raises(ConfigError, match="prior_normalization"):
        load_config("tiny", [*PRIORGRAD, "diffusion.prior_normalization=loudest"])


def test_a_per_utterance_run_trains_and_vocodes_its_windows_as_slices_of_the_utterance(tiny_features, tmp_path,
                                                                                       monkeypatch):
    """A run with per-utterance normalisation stores it; its vocoder gives each window of a long mel the slice
    of the whole utterance's S (e_ref from the whole mel), which differs from the corpus-normalised S."""
    run = tmp_path / "run"
    train(load_config("tiny", ["train.max_steps=2", "train.save_every=2", *QUIET, *PRIORGRAD,
                               "diffusion.prior_normalization=utterance", "train.valid_every=2"]),
          tiny_features, run, device="cpu")
    vocoder = Vocoder.from_checkpoint(run / "checkpoints" / "step_00000002.pt", device="cpu")
    assert vocoder.prior.per_utterance
    mel = _mel(vocoder, 1.0) - 3.0  # about 26 dB below the corpus tone
    reference = [vocoder.prior.reference(mel)]
    whole = vocoder._noise_prior(vocoder.prior, [mel], [(0, mel.shape[-1])], reference, mel.shape[-1] * 64)
    for start, stop in ((0, 40), (88, 125)):
        window = vocoder._noise_prior(vocoder.prior, [mel], [(start, stop)], reference, (stop - start) * 64)
        assert torch.equal(window[0], whole[0, start * 64:stop * 64])
    corpus = dataclasses.replace(vocoder.prior, per_utterance=False)
    assert (whole[0] - corpus.std(mel)).abs().max() > 0.1
    # vocode reads e_ref once per utterance, from its whole mel, however many windows it runs.
    measured = []
    real_reference = type(vocoder.prior).reference

    def recording_reference(prior, item: torch.Tensor) -> torch.Tensor:
        measured.append(item.shape[-1])
        return real_reference(prior, item)

    monkeypatch.setattr(type(vocoder.prior), "reference", recording_reference)
    audio = vocoder.vocode(mel, generator=torch.Generator().manual_seed(0), chunk_seconds=0.256, overlap_seconds=0.064)
    assert torch.isfinite(audio).all() and measured == [mel.shape[-1]]


# --- config -------------------------------------------------------------------------------------------
def test_config_choices_and_refusals():
    assert load_config("base").diffusion.prior == "standard"
    assert load_config("base", PRIORGRAD).diffusion.prior == "priorgrad"
    with pytest.raises(ConfigError, match="unconditional.*diffusion.prior=standard"):
        load_config("unconditional", PRIORGRAD)
    with pytest.raises(ConfigError, match="expected one of: standard, priorgrad"):
        load_config("base", ["diffusion.prior=gaussian"])
    with pytest.raises(ConfigError, match="prior_floor"):
        load_config("base", ["diffusion.prior_floor=0"])
    with pytest.raises(ConfigError, match="prior_energy_min/max"):
        load_config("base", ["diffusion.prior_energy_min=2.0", "diffusion.prior_energy_max=1.0"])
    with pytest.raises(ConfigError, match="prior_energy_min/max.*missing"):
        EnergyPrior.from_config(load_config("base", PRIORGRAD))
    assert EnergyPrior.from_config(load_config("base")) is None


# --- training -----------------------------------------------------------------------------------------
def _trainer(features: Path, run_dir: Path, *overrides: str) -> Trainer:
    checkpoint = prepare_run_dir(run_dir, resume=False, overwrite=False)
    config = load_config("tiny", [*QUIET, "train.save_every=3", "train.max_steps=3", *overrides])
    return Trainer.from_config(config, features, run_dir, init_distributed("cpu"), resume_from=checkpoint)


def test_a_fresh_run_stores_the_corpus_statistics_in_its_checkpoints(tiny_features, tmp_path):
    trainer = _trainer(tiny_features, tmp_path / "run", *PRIORGRAD)
    trainer.fit()
    saved = config_from_dict(load_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000003.pt")["config"])
    energies = _training_energies(tiny_features, saved.audio)
    assert saved.diffusion.prior_energy_min == pytest.approx(energies.min(), rel=1e-12)
    assert saved.diffusion.prior_energy_max == pytest.approx(np.quantile(energies, ENERGY_QUANTILE), rel=1e-12)
    standard = _trainer(tiny_features, tmp_path / "standard")
    assert standard.prior is None and standard.config.diffusion.prior_energy_max is None


def test_training_noise_is_shaped_by_the_prior_and_the_loss_weighted(tiny_features, tmp_path):
    """Recover the noise from the x_t the network sees: divided by S it is standard normal, undivided it is not;
    the step's loss is the S^-1-weighted error of the network's output against that noise."""
    trainer = _trainer(tiny_features, tmp_path / "run", *PRIORGRAD, "train.batch_size=8")
    seen = {}
    trainer.estimator.register_forward_hook(lambda module, args, out: seen.update(x_t=args[0], t=args[1], out=out))
    batch = next(iter(trainer._loader()))
    loss = trainer._train_step(batch)[0]
    abar = trainer.schedule.alpha_bars[seen["t"].long()].float()[:, None]
    noise = (seen["x_t"] - abar.sqrt() * batch["audio"]) / (1 - abar).sqrt()
    std = trainer.prior.std(batch["mel"])
    assert (noise / std).var().item() == pytest.approx(1.0, abs=0.05)
    assert noise.var().item() == pytest.approx(std.square().mean().item(), rel=0.05)
    assert std.square().mean().item() < 0.5  # so the two checks above tell the prior from N(0, I)
    expected = ((seen["out"].detach() - noise) / std).square().mean().item()
    assert loss == pytest.approx(expected, rel=1e-4)


class _UnitPrior:
    """A prior of ones: the priorgrad code path with S = 1, which must be the standard one bit for bit."""

    def std(self, mel: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(*mel.shape[:-2], mel.shape[-1] * 64)

    def reference(self, mel: torch.Tensor) -> None:
        return None

    noise_prior = std


def test_standard_training_equals_the_prior_path_with_unit_std_bit_for_bit(tiny_features, tmp_path):
    runs = []
    for name, prior in (("standard", None), ("ones", _UnitPrior())):
        trainer = _trainer(tiny_features, tmp_path / name, "train.valid_every=2", "train.num_samples=0")
        trainer.prior = prior
        result = trainer.fit()
        runs.append((result.losses, trainer.validation_loss(), trainer.model.state_dict()))
    (losses_a, valid_a, weights_a), (losses_b, valid_b, weights_b) = runs
    assert losses_a == losses_b and valid_a == valid_b
    assert all(torch.equal(weights_a[key], weights_b[key]) for key in weights_a)


# --- vocoding -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def priorgrad_vocoder(tiny_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Vocoder:
    run_dir = tmp_path_factory.mktemp("priorgrad") / "run"
    train(load_config("tiny", ["train.max_steps=150", "train.save_every=150", *QUIET, *PRIORGRAD]), tiny_features,
          run_dir, device="cpu")
    return Vocoder.from_checkpoint(run_dir / "checkpoints" / "step_00000150.pt", device="cpu")


def _mel(vocoder: Vocoder, seconds: float) -> torch.Tensor:
    """A tone with a loud half and a quiet half, so the prior varies along it."""
    tone = harmonic_tone(RATE, seconds, f0=180.0)
    tone[len(tone) // 2:] *= 0.05
    return vocoder.mel(tone, RATE)


def test_vocoder_reads_the_prior_from_the_checkpoint(priorgrad_vocoder, tiny_features):
    prior = priorgrad_vocoder.prior
    energies = _training_energies(tiny_features, priorgrad_vocoder.config.audio)
    assert prior is not None and prior.energy_min == pytest.approx(energies.min(), rel=1e-12)
    std = prior.frame_std(_mel(priorgrad_vocoder, 0.5))
    assert std.max() > 3 * std.min()


def gaussian_priorgrad_vocoder() -> tuple[Vocoder, GaussianNetwork, torch.Tensor, torch.Tensor]:
    """(vocoder, its perfect network for Gaussian data under the prior S, a mel of a loud and a quiet half, S of
    that mel): the prior's range is the mel's own, so S varies across it."""
    tone = harmonic_tone(RATE, 0.3, f0=180.0)
    tone[len(tone) // 2:] *= 0.05
    standard = load_config("tiny")
    energy = frame_energy(LogMel(standard.audio)(torch.from_numpy(tone).float()), standard.audio)
    config = load_config("tiny", [*PRIORGRAD, f"diffusion.prior_energy_min={energy.min().item()}",
                                  f"diffusion.prior_energy_max={energy.max().item()}"])
    torch.manual_seed(0)
    model = GaussianNetwork(config, std=0.2)
    vocoder = Vocoder(model, config, device="cpu")
    mel = vocoder.mel(tone, RATE)
    model.prior_std = std = vocoder.prior.std(mel).double()
    return vocoder, model, mel, std


@pytest.mark.parametrize("sampler", ["fast", "ddim"])
def test_vocoder_chain_under_the_prior_follows_the_step_formulas(sampler):
    """With a perfect network for Gaussian data under the prior S (tests.analytic), every step is affine: the
    vocoder's output must equal the step formulas applied to the same positional draws, with x_T and every
    fresh draw scaled by S, to fp32 rounding. Every step is noisy (fast; DDIM with eta = 1)."""
    vocoder, model, mel, std = gaussian_priorgrad_vocoder()
    frames, length = mel.shape[-1], mel.shape[-1] * vocoder.hop_length
    assert std.shape == (length,) and std.max() > 3 * std.min()
    plan = fast_schedule(vocoder.schedule, "base") if sampler == "fast" else ddim(vocoder.schedule, 8, eta=1.0)
    assert (plan.sigmas[1:] > 0).all()  # the last step (onto the data) may be noise-free
    with torch.inference_mode():
        sampling = Sampling(plan, prior=vocoder.prior)
        mine = vocoder._reverse_chain(sampling, [mel], [PositionalNoise(9)], [(0, frames)], [None])[0].double()
        mean = model.mean_of(model.condition(mel.unsqueeze(0)))[0]
    draws = lambda i: PositionalNoise(9).fill(torch.empty(length), i, 0).double()  # noqa: E731
    expected = run_chain(plan, std * draws(len(plan)), draws, 0.2, mean, prior_std=std)
    torch.testing.assert_close(mine, expected, atol=1e-5, rtol=0)
    ignored = run_chain(plan, draws(len(plan)), draws, 0.2, mean)  # the same chain without the prior
    assert (mine - ignored).abs().max() > 1e-2


def test_griffin_lim_start_under_the_prior_scales_its_noise_by_the_prior():
    """x = sqrt(abar) x_GL + sqrt(1 - abar) S eps, then the last K states with every fresh draw scaled by S:
    the vocoder's audio equals the step formulas (tests.test_vocoder.griffin_lim_chain) to fp32 rounding, and
    not the same chain without the prior."""
    vocoder, model, mel, std = gaussian_priorgrad_vocoder()
    mine = vocoder.vocode(mel, init="griffin-lim", start_step=3, generator=torch.Generator().manual_seed(3),
                         chunk_seconds=None).double()
    torch.testing.assert_close(mine, griffin_lim_chain(vocoder, model, mel, 3, 3, prior_std=std), atol=1e-5, rtol=0)
    assert (mine - griffin_lim_chain(vocoder, model, mel, 3, 3)).abs().max() > 1e-2


def test_chunked_vocoding_under_the_prior_equals_unchunked(priorgrad_vocoder):
    """As for the standard prior (test_vocoder): the default sampler (fresh noise at every step) reaches 36
    samples over the chain, well inside the context, and the prior is per frame, so each window's S is the
    slice of the utterance's and chunked output equals unchunked output to fp32 rounding."""
    vocoder = priorgrad_vocoder
    assert vocoder.model.reach * len(vocoder.plan()) < 4 * vocoder.hop_length
    mel = _mel(vocoder, 1.0)  # 125 frames -> 4 windows of 32 frames
    with torch.inference_mode():
        whole = vocoder._noise_prior(vocoder.prior, [mel], [(0, mel.shape[-1])], [None], mel.shape[-1] * 64)
        for start, stop in ((0, 40), (24, 72), (88, 125)):
            window = vocoder._noise_prior(vocoder.prior, [mel], [(start, stop)], [None], (stop - start) * 64)
            assert torch.equal(window[0], whole[0, start * 64:stop * 64])
    unchunked = vocoder.vocode(mel, generator=torch.Generator().manual_seed(6), chunk_seconds=None)
    chunked = vocoder.vocode(mel, generator=torch.Generator().manual_seed(6), chunk_seconds=0.256,
                             overlap_seconds=0.064)
    assert unchunked.abs().max() > 0.1
    torch.testing.assert_close(chunked, unchunked, atol=1e-5, rtol=0)
    hard_cuts = vocoder.vocode(mel, generator=torch.Generator().manual_seed(6), chunk_seconds=0.256,
                               overlap_seconds=0.0)
    assert (hard_cuts - unchunked).abs().max() > 1e-2  # without context the seams show: the check can fail


def test_standard_vocoding_equals_the_prior_path_with_unit_std_bit_for_bit(priorgrad_vocoder):
    vocoder = Vocoder(priorgrad_vocoder.model, load_config("tiny"), device="cpu")
    mel = _mel(vocoder, 0.6)
    standard = vocoder.vocode(mel, generator=torch.Generator().manual_seed(2), chunk_seconds=0.256,
                              overlap_seconds=0.064)
    vocoder.prior = _UnitPrior()
    ones = vocoder.vocode(mel, generator=torch.Generator().manual_seed(2), chunk_seconds=0.256, overlap_seconds=0.064)
    assert torch.equal(standard, ones)


def test_checkpoint_config_round_trips_the_prior():
    config = load_config("tiny", [*PRIORGRAD, "diffusion.prior_energy_min=0.1", "diffusion.prior_energy_max=4.0"])
    again = config_from_dict(config_to_dict(config))
    assert EnergyPrior.from_config(again) == EnergyPrior(again.audio, 0.1, 4.0, 0.1)
