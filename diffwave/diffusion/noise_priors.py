"""The forward noise's law N(0, Sigma), as the sampler and the losses use it: three kinds, one interface.

- None: the standard N(0, I).
- A tensor S broadcasting to the data: Sigma = diag(S^2) (PriorGrad).
- A `NoiseShaper`, any linear L with Sigma = L L^T that can also (approximately) undo itself (SpecGrad's
  time-frequency filter, audio/prior.py SpectralShaper).

Noise enters as L z (`shape_noise`), and errors are measured in the whitened units L^-1 r (`whiten`): the
PriorGrad loss ||S^-1 r||^2 becomes SpecGrad's ||L^-1 r||^2. The update formulas of the chain do not change.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class NoiseShaper(Protocol):
    """A linear map L on signals of one shape: `shape` applies L, `whiten` applies (an approximation of) L^-1."""

    def shape(self, noise: Tensor) -> Tensor: ...

    def whiten(self, residual: Tensor) -> Tensor: ...


NoisePrior = Tensor | NoiseShaper | None


def shape_noise(prior: NoisePrior, noise: Tensor) -> Tensor:
    """L z for standard noise z: z itself, S z, or the shaper's L z (a new tensor except for None)."""
    if prior is None:
        return noise
    if isinstance(prior, Tensor):
        return noise * prior.to(noise.dtype)
    return prior.shape(noise).to(noise.dtype)


def whiten(prior: NoisePrior, residual: Tensor) -> Tensor:
    """L^-1 r: r itself, r / S, or the shaper's whitening."""
    if prior is None:
        return residual
    if isinstance(prior, Tensor):
        return residual / prior.to(residual.dtype)
    return prior.whiten(residual).to(residual.dtype)
