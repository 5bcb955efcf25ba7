"""What a training run shows while it runs: TensorBoard events on rank 0, and a progress bar or log lines.

Only rank 0 writes (RELIABILITY 28): on every other rank the `Monitor` is built with `enabled=False` and
each method returns at once, with no writer and no file, so ranks never race on one event file.

`start_step` is the number of steps already done (the checkpoint's step), so the first step a resumed run
logs is start_step + 1. Its writer opens with `purge_step=start_step + 1`: TensorBoard then hides every
event of the crashed run after the checkpoint, and keeps those up to and including it, which the resumed
run does not write again; each step shows once (RELIABILITY 13). Event files are read in file-name order,
and the name starts with the creation time in whole seconds, so this relies on the resumed writer being
created in a later second than the one it replaces, as a new process is.

Progress goes to a tqdm bar when stderr is a terminal, and otherwise to one `logging` line every
`log_every` steps, because a bar's carriage returns turn a CI log or a `nohup` file into noise.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from types import TracebackType

import torch
from matplotlib import colormaps
from torch import Tensor
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

logger = logging.getLogger("diffwave.training")

# Perceptually uniform, so equal steps in level look like equal steps in brightness.
_MEL_COLORMAP = "viridis"


class Monitor:
    """TensorBoard and progress for one training run; every method is a no-op when not enabled.

    `step` everywhere is the number of optimizer steps completed, the same count the checkpoints carry,
    so a resumed run continues the same axis.
    """

    def __init__(self, log_dir: Path, *, enabled: bool, start_step: int, total_steps: int, log_every: int,
                 progress_bar: bool | None = None) -> None:
        if log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self._writer: SummaryWriter | None = None
        self._bar: tqdm | None = None
        self._total_steps = total_steps
        self._log_every = log_every
        self._last_logged_step = start_step
        self._last_logged_time = time.perf_counter()
        if not enabled:
            return
        self._writer = SummaryWriter(str(log_dir), purge_step=start_step + 1 if start_step > 0 else None)
        if sys.stderr.isatty() if progress_bar is None else progress_bar:
            self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One point per tag, e.g. {"train/loss": 0.02, "train/lr": 2e-4}."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), step)

    def audio(self, step: int, tag: str, audio: Tensor, sample_rate: int) -> None:
        """A mono clip [samples]; clamped here, since the writer would otherwise clip with a print()."""
        if self._writer is None:
            return
        clip = torch.nan_to_num(audio.detach().float().cpu(), nan=0.0).clamp(-1.0, 1.0)
        self._writer.add_audio(tag, clip, step, sample_rate=sample_rate)

    def mel_image(self, step: int, tag: str, mel: Tensor) -> None:
        """A spectrogram [n_mels, frames] as a colour image, low frequencies at the bottom.

        Normalised per image, so each image uses the whole colour range whatever its level.
        """
        if self._writer is None:
            return
        image = mel.detach().float().cpu().flip(0)  # row 0 is the top of an image: put the highest bin there
        low, high = image.min(), image.max()
        image = (image - low) / (high - low).clamp_min(1e-8)
        rgb = colormaps[_MEL_COLORMAP](image.numpy())[..., :3]  # RGBA floats in [0, 1] -> RGB
        self._writer.add_image(tag, rgb, step, dataformats="HWC")

    def text(self, step: int, tag: str, message: str) -> None:
        """An event worth reading later next to the curves, e.g. a skipped non-finite step."""
        if self._writer is None:
            return
        self._writer.add_text(tag, message, step)

    def step_done(self, step: int, loss: float) -> None:
        """Advance the bar, or log "step k/N loss L r steps/s" when `step` is a multiple of `log_every`.

        The rate is measured over the interval since the previous line, so it shows the current speed,
        not an average that includes start-up.
        """
        if self._writer is None:
            return
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        if step % self._log_every != 0:
            return
        now = time.perf_counter()
        rate = (step - self._last_logged_step) / max(now - self._last_logged_time, 1e-9)
        logger.info("step %d/%d loss %.4f %.1f steps/s", step, self._total_steps, loss, rate)
        self._last_logged_step, self._last_logged_time = step, now

    def flush(self) -> None:
        """Write pending events now, e.g. before a checkpoint, so the two agree after a crash."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the writer and the bar; safe to call twice."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def loss_by_step_buckets(t: Tensor, losses: Tensor, num_steps: int, buckets: int = 5) -> dict[str, float]:
    """Mean loss per range of diffusion steps, tagged "train/loss_by_step/00-09"; empty ranges are left out.

    The loss differs by orders of magnitude between small and large t, so the overall mean hides which
    end of the chain is learning. `t` holds 0-based steps and `losses` the per-example losses, both
    [batch]. The ranges split 0..num_steps-1 as evenly as integers allow; with more buckets than steps, the
    empty ones are left out like the rest.
    """
    if t.shape != losses.shape or t.dim() != 1:
        raise ValueError(f"t and losses must both be [batch], got {tuple(t.shape)} and {tuple(losses.shape)}")
    if num_steps < 1 or buckets < 1:
        raise ValueError(f"num_steps and buckets must be >= 1, got {num_steps} and {buckets}")
    width = len(str(num_steps - 1))
    t, losses = t.detach().cpu(), losses.detach().float().cpu()
    means: dict[str, float] = {}
    for i in range(buckets):
        first, end = i * num_steps // buckets, (i + 1) * num_steps // buckets
        in_range = (t >= first) & (t < end)
        if in_range.any():
            means[f"train/loss_by_step/{first:0{width}d}-{end - 1:0{width}d}"] = losses[in_range].mean().item()
    return means
