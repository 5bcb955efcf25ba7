"""What rank 0 measures on the validation split during a run: the EMA model's loss on fixed crops, steps and
noise, and a few vocoded samples with their mel images (TensorBoard)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from diffwave.audio import LogMel
from diffwave.audio.prior import MelPrior
from diffwave.config import Config
from diffwave.data.dataset import ValidationCrops, crops_for_validation, reference_energies
from diffwave.diffusion import ReversePlan, sample
from diffwave.diffusion.noise_priors import NoisePrior
from diffwave.errors import DataError
from diffwave.model import DiffWave
from diffwave.training.monitor import Monitor
from diffwave.training.objectives import Autocast, DiffusionObjective, network_call

logger = logging.getLogger("diffwave.train")

VALIDATION_SEED = 1234  # fixed steps and noise, so valid/loss is comparable across a run


def batch_noise_prior(prior: MelPrior | None, batch: dict[str, Tensor], mel: Tensor | None,
                      device: torch.device) -> NoisePrior:
    """The forward noise's law for a collated batch of crops (with their utterances' e_ref when they carry it)."""
    return None if prior is None else prior.noise_prior(mel, reference_energies(batch, device))


class Validation:
    """The validation crops of a feature folder (none when its split is empty, said once in the log), measured
    on steps 0 .. steps_drawn - 1, the range the run trains."""

    def __init__(self, data_dir: Path | str, config: Config, steps_drawn: int, device: torch.device) -> None:
        self.config, self.steps_drawn, self.device = config, steps_drawn, device
        try:
            self.crops: ValidationCrops | None = crops_for_validation(data_dir, config)
        except DataError as error:
            logger.warning("no validation: %s", error)
            self.crops = None

    def _batch(self, size: int) -> dict[str, Tensor]:
        return next(iter(DataLoader(self.crops, batch_size=min(len(self.crops), size))))

    def _mel(self, batch: dict[str, Tensor]) -> Tensor | None:
        return batch["mel"].to(self.device) if "mel" in batch else None

    @torch.no_grad()
    def loss(self, objective: DiffusionObjective, model: DiffWave, prior: MelPrior | None,
             autocast: Autocast) -> float | None:
        """The objective's loss of `model` (the EMA, in eval mode) on fixed crops, fixed steps and fixed noise."""
        if not self.crops:
            return None
        batch = self._batch(16)
        audio = batch["audio"].to(self.device)
        generator = torch.Generator(self.device).manual_seed(VALIDATION_SEED)
        t = torch.randint(0, self.steps_drawn, (audio.shape[0],), generator=generator, device=self.device)
        noise = torch.randn(audio.shape, generator=generator, device=self.device)
        mel = self._mel(batch)
        std = batch_noise_prior(prior, batch, mel, self.device)
        return objective.losses(network_call(model.eval()), audio, mel, t, noise, std, autocast).mean().item()

    @torch.no_grad()
    def samples(self, model: DiffWave, plan: ReversePlan, prior: MelPrior | None, monitor: Monitor,
                step: int) -> float | None:
        """Vocode a few validation crops with `model` (the EMA) and `plan`; log audio and mels, and return the
        log-mel L1 distance of the conditional samples to their references."""
        if not self.crops or self.config.train.num_samples == 0:
            return None
        count = min(self.config.train.num_samples, len(self.crops))
        batch = self._batch(count)
        model = model.eval()
        mel = self._mel(batch)
        cond = None if mel is None else model.condition(mel)
        audio = sample(plan, lambda x, t: model(x, t, cond), tuple(batch["audio"].shape),
                       generator=torch.Generator(self.device).manual_seed(VALIDATION_SEED), device=self.device,
                       output=self.config.model.output, clip=True,
                       prior_std=batch_noise_prior(prior, batch, mel, self.device))
        rate = self.config.audio.sample_rate
        for i in range(count):
            monitor.audio(step, f"sample/{i}/generated", audio[i].cpu(), rate)
        if mel is None:
            return None
        generated_mel = LogMel(self.config.audio).to(self.device)(audio)[..., : mel.shape[-1]]
        for i in range(count):
            monitor.audio(step, f"sample/{i}/reference", batch["audio"][i], rate)
            monitor.mel_image(step, f"sample/{i}/mel_reference", mel[i].cpu())
            monitor.mel_image(step, f"sample/{i}/mel_generated", generated_mel[i].cpu())
        return (generated_mel - mel[..., : generated_mel.shape[-1]]).abs().mean().item()
