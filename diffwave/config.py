"""Configuration: typed dataclasses, named presets, YAML files and `key=value` overrides.

The defaults are the paper's BASE model on LJSpeech. Presets are built in, so an installed package
needs no conf/ folder; conf/*.yaml mirror them for people and recipes (a test keeps them equal).
OmegaConf does the merging and type checking; its errors are turned into one-line `ConfigError`s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from diffwave.diffusion.losses import LOSS_KINDS
from diffwave.diffusion.reverse_plans import FAST_SCHEDULES
from diffwave.errors import ConfigError
from diffwave.precision import PRECISIONS

MEL_PRESETS = ("hifigan", "lmnt")
SCHEDULES = ("linear", "cosine")
PRIORS = ("standard", "priorgrad", "specgrad")
PRIOR_NORMALIZATIONS = ("corpus", "utterance")  # audio/prior.py: what sets a priorgrad S of 1
# Where a vocoder's reverse chain starts (inference/options.py says what each one is): pure noise, a Griffin-Lim
# estimate of the mel, or that estimate rescaled toward the mel's envelope (audio/griffin_lim.rescale_to_mel).
INITS = ("noise", "griffin-lim", "griffin-lim-envelope")
# What a vocoder does to the chain's output: nothing, or rescale its STFT toward the mel's envelope (the same
# rescaling as the griffin-lim-envelope start, phase kept): it removes the noise floor a network leaves in quiet
# bands and the level errors of its louder ones.
FINISHES = ("none", "envelope")


def _check_choice(section: str, key: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{section}.{key} is '{value}', expected one of: {', '.join(choices)}")


def _check_positive(section: str, **values: float) -> None:
    for key, value in values.items():
        if value <= 0:
            raise ConfigError(f"{section}.{key} must be positive, got {value}")


@dataclass
class AudioConfig:
    """Sample rate and log-mel front-end; `mel_preset` fixes the conventions (padding, log, scale)."""

    sample_rate: int = 22050
    mel_preset: str = "hifigan"
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 256
    n_mels: int = 80
    f_min: float = 0.0
    f_max: float | None = 8000.0  # None: the Nyquist frequency

    def __post_init__(self) -> None:
        _check_choice("audio", "mel_preset", self.mel_preset, MEL_PRESETS)
        _check_positive("audio", sample_rate=self.sample_rate, n_fft=self.n_fft,
                        win_length=self.win_length, hop_length=self.hop_length, n_mels=self.n_mels)
        if self.win_length > self.n_fft:
            raise ConfigError(f"audio.win_length ({self.win_length}) exceeds audio.n_fft ({self.n_fft})")
        nyquist = self.sample_rate / 2
        f_max = nyquist if self.f_max is None else self.f_max
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ConfigError(f"audio.f_min/f_max must satisfy 0 <= f_min < f_max <= {nyquist:g} Hz "
                              f"(sample_rate / 2), got f_min={self.f_min:g}, f_max={f_max:g}")


# What a network's output means: a noise estimate (a diffusion model), the velocity v = sqrt(abar) eps -
# sqrt(1 - abar) x_0 (Salimans & Ho 2022; defined at zero SNR too), or an x_0 map through the consistency
# parameterisation (a student of `diffwave distill`, diffusion/consistency.py).
PREDICTIONS = ("epsilon", "v", "consistency")


@dataclass
class ModelConfig:
    """The network's size; `conditional: false` drops the mel conditioner (unconditional model). `prediction`
    is what its output means, a property of the weights: epsilon, v, or consistency (sampled only with the
    consistency sampler)."""

    conditional: bool = True
    residual_channels: int = 64
    residual_layers: int = 30
    dilation_cycle: int = 10
    prediction: str = "epsilon"

    def __post_init__(self) -> None:
        _check_choice("model", "prediction", self.prediction, PREDICTIONS)
        _check_positive("model", residual_channels=self.residual_channels,
                        residual_layers=self.residual_layers, dilation_cycle=self.dilation_cycle)

    @property
    def output(self) -> str:
        """What the sampling loop reads the output as (diffusion/parameterization.py OUTPUTS): a consistency student's
        output is in the units of its teacher's noise."""
        return "v" if self.prediction == "v" else "epsilon"


@dataclass
class DiffusionConfig:
    """Training noise schedule (T steps), the fast reverse schedule for inference, the loss, and the prior.

    `prior: priorgrad` shapes the noise by the mel's frame energy (PriorGrad; see audio/prior.py), `specgrad`
    by its spectral envelope too (SpecGrad). Both normalise the energy with the training corpus's range, which
    training fills in and checkpoints carry, and with `prior_normalization: utterance` each utterance's loudness.
    """

    schedule: str = "linear"
    num_steps: int = 50
    beta_start: float = 1e-4
    beta_end: float = 0.05
    zero_terminal_snr: bool = False  # rescale the schedule so its last state is pure noise (needs prediction v)
    fast_schedule: list[float] = field(default_factory=lambda: list(FAST_SCHEDULES["base"]))
    loss: str = "l2"
    prior: str = "standard"
    prior_floor: float = 0.1  # PriorGrad's smallest standard deviation
    prior_normalization: str = "corpus"  # PRIOR_NORMALIZATIONS: "utterance" brings each to the corpus's loudness
    prior_energy_min: float | None = None  # corpus statistics, set when training starts
    prior_energy_max: float | None = None
    # An auxiliary loss on the clean-signal estimate x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t):
    # this weight times the L1 distance of its log-mel to the clean audio's, for examples at steps 0..x0_max_step
    # only (at high noise x0_hat is a blur whatever the network; WaveFM and FreGrad use such a term). 0: off.
    x0_mel_weight: float = 0.0
    x0_max_step: int = 10
    # Where `vocode` starts the reverse chain when the caller does not say (INITS): "noise" runs the whole plan;
    # a Griffin-Lim init refines its estimate through the plan's last init_start_step states.
    init: str = "noise"
    init_start_step: int | None = None
    finish: str = "none"  # FINISHES: what `vocode` does to the chain's output when the caller does not say

    def __post_init__(self) -> None:
        _check_choice("diffusion", "schedule", self.schedule, SCHEDULES)
        _check_choice("diffusion", "init", self.init, INITS)
        _check_choice("diffusion", "finish", self.finish, FINISHES)
        if self.init == INITS[0] and self.init_start_step is not None:
            raise ConfigError(f"diffusion.init_start_step applies to a Griffin-Lim init only (a chain from noise runs "
                              f"the whole plan), got {self.init_start_step} with init '{self.init}'")
        if self.init != INITS[0] and (self.init_start_step is None or self.init_start_step < 1):
            raise ConfigError(f"diffusion.init '{self.init}' needs init_start_step >= 1 (how many of the plan's last "
                              f"states refine the estimate), got {self.init_start_step}")
        if self.x0_mel_weight < 0 or not 0 <= self.x0_max_step < self.num_steps:
            raise ConfigError(f"diffusion.x0_mel_weight must be >= 0 and x0_max_step in 0..{self.num_steps - 1}, "
                              f"got {self.x0_mel_weight} and {self.x0_max_step}")
        _check_choice("diffusion", "loss", self.loss, LOSS_KINDS)
        _check_choice("diffusion", "prior", self.prior, PRIORS)
        _check_choice("diffusion", "prior_normalization", self.prior_normalization, PRIOR_NORMALIZATIONS)
        if not 0 < self.prior_floor <= 1:
            raise ConfigError(f"diffusion.prior_floor must lie in (0, 1], got {self.prior_floor}")
        energies = (self.prior_energy_min, self.prior_energy_max)
        if energies.count(None) == 1 or (None not in energies and not 0 <= energies[0] < energies[1] < math.inf):
            raise ConfigError("diffusion.prior_energy_min/max must both be unset or satisfy 0 <= min < max, got "
                              f"{energies[0]} and {energies[1]}")
        _check_positive("diffusion", num_steps=self.num_steps)
        if self.schedule == "linear" and not 0 < self.beta_start <= self.beta_end < 1:
            raise ConfigError("diffusion.beta_start/beta_end must satisfy 0 < beta_start <= beta_end < 1, "
                              f"got {self.beta_start:g} and {self.beta_end:g}")
        last = 1 if self.zero_terminal_snr else math.nextafter(1, 0)  # only a zero-SNR schedule reaches noise
        if not self.fast_schedule or not all(0 < b < 1 for b in self.fast_schedule[:-1]) \
                or not 0 < self.fast_schedule[-1] <= last:
            raise ConfigError(f"diffusion.fast_schedule must be a non-empty list of betas in (0, 1) (the last may be 1 "
                              f"with diffusion.zero_terminal_snr), got {list(self.fast_schedule)}")


@dataclass
class DataConfig:
    """Training crops: mel frames for the conditional model, raw samples for the unconditional one."""

    crop_frames: int = 62
    crop_samples: int = 16000
    num_workers: int = 2
    valid_fraction: float = 0.01  # of the utterances not in the test split
    test_fraction: float = 0.02  # folder corpora; LJSpeech holds out LJ001* and LJ002*, as the reference did
    # Unconditional models only: each utterance scaled to this RMS (None: as recorded), then to a level drawn
    # from [-level_jitter_db, 0] dB per crop; a denoising prior meets speech at the level denoise normalises to.
    target_rms: float | None = None
    level_jitter_db: float = 0.0

    def __post_init__(self) -> None:
        _check_positive("data", crop_frames=self.crop_frames, crop_samples=self.crop_samples)
        if self.target_rms is not None:
            _check_positive("data", target_rms=self.target_rms)
        if self.level_jitter_db < 0:
            raise ConfigError(f"data.level_jitter_db must not be negative, got {self.level_jitter_db}")
        for key in ("valid_fraction", "test_fraction"):
            if not 0 <= getattr(self, key) < 1:
                raise ConfigError(f"data.{key} must lie in [0, 1), got {getattr(self, key)}")


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping (Adam at the paper's learning rate)."""

    batch_size: int = 16
    learning_rate: float = 2e-4
    max_steps: int = 1_000_000
    # The largest 0-based diffusion step drawn for a training example (None: T - 1). A denoising prior only
    # meets the low-noise steps that denoise starts from, so it spends its training there.
    max_step: int | None = None
    precision: str = "auto"
    ema_decay: float = 0.9999
    grad_clip_norm: float | None = None
    warmup_steps: int = 0  # linear learning-rate warm-up
    seed: int = 0
    log_every: int = 100
    valid_every: int = 1000  # validation loss of the EMA model
    sample_every: int = 5000  # vocode a few validation crops: audio, mel images, valid/mel_l1
    num_samples: int = 2
    save_every: int = 5000
    keep_last: int = 3
    max_non_finite_steps: int = 25  # consecutive skipped steps before training stops
    dist_timeout_s: int = 1800  # how long a rank waits for the others before the run fails
    # MiB for the activations the residual layers keep for the backward (3 [batch, C, samples] tensors each).
    # Beyond it the first layers keep 1 and recompute their gate in the backward (one more run of their
    # convolutions), as few as fit: BASE at batch 4 x 62 frames recomputes none, at batch 16 (5,580 MiB kept
    # otherwise) 14, for a peak under 6 GB. null: never recompute.
    activation_memory_mb: float | None = 3900.0

    def __post_init__(self) -> None:
        _check_choice("train", "precision", self.precision, PRECISIONS)
        _check_positive("train", batch_size=self.batch_size, learning_rate=self.learning_rate,
                        max_steps=self.max_steps, log_every=self.log_every, valid_every=self.valid_every,
                        sample_every=self.sample_every, save_every=self.save_every, keep_last=self.keep_last,
                        max_non_finite_steps=self.max_non_finite_steps, dist_timeout_s=self.dist_timeout_s)
        if self.warmup_steps < 0 or self.num_samples < 0:
            raise ConfigError("train.warmup_steps and train.num_samples must not be negative")
        if self.activation_memory_mb is not None:
            _check_positive("train", activation_memory_mb=self.activation_memory_mb)
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must lie in [0, 1), got {self.ema_decay}")


@dataclass
class DistillConfig:
    """Consistency distillation (`diffwave distill`, Song et al. 2023; see diffusion/consistency.py).

    The distill command records the teacher a student started from; the student itself is marked by
    `model.prediction: consistency`.
    """

    teacher: str | None = None
    target_ema: float = 0.95  # the target network's EMA decay (Song et al.'s mu); 0: the student itself
    skip: int = 1  # training steps between the two states joined by one teacher ODE step

    def __post_init__(self) -> None:
        if not 0 <= self.target_ema < 1:
            raise ConfigError(f"distill.target_ema must lie in [0, 1), got {self.target_ema}")
        _check_positive("distill", skip=self.skip)


@dataclass
class Config:
    """Everything a run needs; saved whole inside every checkpoint."""

    name: str = "base"
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        if self.train.max_step is not None and not 0 <= self.train.max_step < self.diffusion.num_steps:
            raise ConfigError(f"train.max_step must lie in 0..{self.diffusion.num_steps - 1} (diffusion.num_steps - "
                              f"1), got {self.train.max_step}")
        if self.data.target_rms is not None and self.model.conditional:
            raise ConfigError("data.target_rms rescales the audio but not its mel; it is for unconditional models "
                              "(model.conditional: false)")
        if self.diffusion.zero_terminal_snr and self.model.prediction != "v":
            raise ConfigError("diffusion.zero_terminal_snr ends the schedule at pure noise, where a noise estimate "
                              "says nothing about the data; it needs model.prediction=v")
        if self.diffusion.prior != "standard" and not self.model.conditional:
            raise ConfigError(f"diffusion.prior is '{self.diffusion.prior}', but the model is unconditional "
                              "(model.conditional: false): that prior comes from the mel; use diffusion.prior=standard")


def trained_steps(config: Config) -> int:
    """How many steps, from 0, a model of `config` was trained on (train.max_step + 1, or the whole schedule)."""
    return config.diffusion.num_steps if config.train.max_step is None else config.train.max_step + 1


def _large() -> Config:
    return Config(
        name="large",
        model=ModelConfig(residual_channels=128),
        diffusion=DiffusionConfig(num_steps=200, beta_end=0.02, fast_schedule=list(FAST_SCHEDULES["large"])),
    )


def _lmnt() -> Config:
    """BASE with the reference implementation's (lmnt-com/diffwave) front-end: its mels in [0, 1] from 20 Hz
    to Nyquist, so a model fits features and checkpoints made with that code."""
    return Config(name="lmnt", audio=AudioConfig(mel_preset="lmnt", f_min=20.0, f_max=None))


def _unconditional() -> Config:
    """The paper's SC09 recipe: 16 kHz, 1-second crops, no conditioner."""
    return Config(
        name="unconditional",
        audio=AudioConfig(sample_rate=16000),
        model=ModelConfig(conditional=False, residual_channels=256, residual_layers=36, dilation_cycle=12),
        diffusion=DiffusionConfig(num_steps=200, beta_end=0.02, fast_schedule=list(FAST_SCHEDULES["large"])),
        data=DataConfig(crop_samples=16000),
    )


def _tiny() -> Config:
    """A few thousand parameters at 8 kHz: for tests and the CPU quickstart."""
    return Config(
        name="tiny",
        audio=AudioConfig(sample_rate=8000, n_fft=256, win_length=256, hop_length=64, n_mels=20,
                          f_max=4000.0),
        model=ModelConfig(residual_channels=8, residual_layers=4, dilation_cycle=2),
        data=DataConfig(crop_frames=16, crop_samples=2048, num_workers=0),
        train=TrainConfig(batch_size=4, learning_rate=1e-3, max_steps=1000, ema_decay=0.999, log_every=10,
                          valid_every=100, sample_every=500, save_every=100),
    )


PRESETS: dict[str, Callable[[], Config]] = {
    "base": Config,
    "large": _large,
    "lmnt": _lmnt,
    "unconditional": _unconditional,
    "tiny": _tiny,
}


def _merge(base: Config, source: str, update: Any) -> Config:
    """Merge `update` (a dict, DictConfig or dotlist config) into `base` with OmegaConf's type checks."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(base), update)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        message = str(getattr(error, "msg", error)).splitlines()[0]
        key = getattr(error, "full_key", None)
        where = f" (key '{key}')" if key else ""
        raise ConfigError(f"{source}: {message}{where}") from None


def load_config(spec: str | Path = "base", overrides: Sequence[str] = ()) -> Config:
    """A preset name or YAML path, then `key=value` overrides (unknown keys and wrong types refused).

    A YAML file is merged onto the BASE defaults, so it may hold only the keys it changes.
    """
    spec = str(spec)
    if spec in PRESETS:
        config = PRESETS[spec]()
    else:
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"config '{spec}' is neither a preset ({', '.join(PRESETS)}) nor an existing "
                              "YAML file")
        try:
            loaded = OmegaConf.load(path)
        except (OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as error:
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(f"{path}: not a readable YAML config ({first_line})") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path}: a config file must be a mapping of sections (audio, model, ...)")
        config = _merge(Config(), str(path), loaded)
    return with_overrides(config, overrides)


def with_overrides(config: Config, overrides: Sequence[str]) -> Config:
    """`config` with `key=value` overrides applied (unknown keys and wrong types refused)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.batch_size=8)")
    if overrides:
        config = _merge(config, "override", OmegaConf.from_dotlist(list(overrides)))
    return config


def config_to_dict(config: Config) -> dict[str, Any]:
    """Plain Python types only, so a checkpoint holding it loads under `torch.load(weights_only=True)`."""
    return dataclasses.asdict(config)


def config_from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Rebuild a config saved with `config_to_dict`; unknown keys or wrong types are a ConfigError."""
    return _merge(Config(), source, values)


def config_to_yaml(config: Config) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
