"""Exponential moving averages of a model's weights: the EMA a run validates, exports and ships, and the target
network of consistency distillation. Both are torch's `AveragedModel` with one update rule."""

from __future__ import annotations

from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel


class ExponentialAverage:
    """An `AveragedModel` of `model` (weights and buffers) that moves by `1 - decay` towards it at each update.

    With `warmup` the decay after n updates is min(decay, (1 + n) / (10 + n)), so early averages track the
    quickly changing weights instead of the random initialisation, and the first update copies the weights
    (AveragedModel's own start). Without it the decay is constant and the average starts as `model` is now.
    """

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool) -> None:
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._move, use_buffers=True)
        if not warmup:
            self.averaged.n_averaged.fill_(1)  # AveragedModel copies instead of averaging at its first update

    @property
    def module(self) -> nn.Module:
        """The averaged network itself."""
        return self.averaged.module

    def _move(self, averaged: list[Tensor], current: list[Tensor], _num_averaged: Tensor) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        for avg, cur in zip(averaged, current, strict=True):
            avg.lerp_(cur, 1 - decay)

    def update(self, model: nn.Module) -> None:
        self.averaged.update_parameters(model)
        self.updates += 1

    def restore(self, weights: dict[str, Tensor], updates: int) -> None:
        """The average as a checkpoint saved it: its weights and how many updates made them."""
        self.module.load_state_dict(weights)
        self.updates = updates
        if self.warmup:
            self.averaged.n_averaged.fill_(updates)
