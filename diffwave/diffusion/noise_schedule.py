"""The forward process of a DDPM: betas, alphas, alpha_bars, q(x_t|x_0) and the posterior q(x_{t-1}|x_t,x_0).

Steps are 0-based: state t (t = 0 .. T-1) is reached after applying beta[0..t], so
x_t = sqrt(alpha_bar[t]) x_0 + sqrt(1 - alpha_bar[t]) eps. This is the paper's x_{t+1}, and the index the
model is given. The state before step 0 is the data itself (alpha_bar = 1), so the posterior at t = 0 is a
point mass on x_0. Coefficients are kept in float64: products of hundreds of (1 - beta) lose digits in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from diffwave.errors import ScheduleError


def validate_betas(betas: Tensor | Sequence[float], what: str = "betas", terminal_one: bool = False) -> Tensor:
    """Betas as a float64 1-D tensor, refused unless every value is finite and inside (0, 1); with
    `terminal_one` the last may be exactly 1 (a schedule that ends at pure noise)."""
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if betas.numel() == 0:
        raise ScheduleError(f"{what} is empty: a schedule needs at least one step")
    high = torch.ones_like(betas)
    if terminal_one:
        high[-1] = math.nextafter(1.0, 2.0)
    bad = ~torch.isfinite(betas) | (betas <= 0) | (betas >= high)
    if bad.any():
        index = int(bad.nonzero()[0])
        bounds = "every beta must lie in (0, 1)" + (" (the last in (0, 1])" if terminal_one else "")
        raise ScheduleError(f"{what}[{index}] = {betas[index].item():g}, but {bounds}")
    return betas


def rescale_to_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Lin et al. (2024, "Common diffusion noise schedules and sample steps are flawed", Algorithm 1): shift
    sqrt(abar) so that its last value is 0 and scale it so that its first is unchanged; the last beta becomes 1,
    so training's noisiest state is pure noise, as sampling from N(0, I) assumes."""
    root = torch.cumprod(1 - validate_betas(betas, terminal_one=True), dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bars = root.square()
    alphas = torch.cat([alpha_bars[:1], alpha_bars[1:] / alpha_bars[:-1]])
    return 1 - alphas


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] shaped to broadcast against `like` ([B, ...]), in like's dtype and device."""
    picked = values.to(like.device)[t.to(like.device).long()]
    return picked.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule:
    """A training noise schedule beta[0..T-1] and the closed forms of the forward process it defines. Its last
    beta may be 1 (zero terminal SNR): alpha_bar[T-1] = 0, where only an x0- or v-predicting model can act."""

    def __init__(self, betas: Tensor) -> None:
        self.betas = validate_betas(betas, terminal_one=True)
        self.alphas = 1.0 - self.betas
        self.alpha_bars = torch.cumprod(self.alphas, dim=0)
        self.alpha_bars_prev = torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars[:-1]])
        # Posterior q(x_{t-1} | x_t, x_0) = N(c0 x_0 + ct x_t, beta_tilde); beta_tilde[0] = 0.
        self.posterior_variance = (1 - self.alpha_bars_prev) / (1 - self.alpha_bars) * self.betas
        self.posterior_coef_x0 = self.alpha_bars_prev.sqrt() * self.betas / (1 - self.alpha_bars)
        self.posterior_coef_xt = self.alphas.sqrt() * (1 - self.alpha_bars_prev) / (1 - self.alpha_bars)

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    @classmethod
    def linear(cls, num_steps: int, beta_start: float, beta_end: float) -> NoiseSchedule:
        """The paper's schedules: BASE T=50 over [1e-4, 0.05]; LARGE T=200 over [1e-4, 0.02]."""
        return cls(torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, num_steps: int, offset: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal (2021): alpha_bar follows cos^2, betas capped at `max_beta` near the end."""
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        f = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
        return cls(betas)

    @classmethod
    def from_config(cls, diffusion_config) -> NoiseSchedule:
        """Build from a `DiffusionConfig` (schedule name, num_steps, beta range, zero_terminal_snr)."""
        if diffusion_config.schedule == "cosine":
            schedule = cls.cosine(diffusion_config.num_steps)
        else:
            schedule = cls.linear(diffusion_config.num_steps, diffusion_config.beta_start, diffusion_config.beta_end)
        return cls(rescale_to_zero_terminal_snr(schedule.betas)) if diffusion_config.zero_terminal_snr else schedule

    @property
    def zero_terminal_snr(self) -> bool:
        return self.alpha_bars[-1].item() == 0.0

    def alpha_bar_at(self, t: Tensor, like: Tensor) -> Tensor:
        """alpha_bar[t] per example, shaped to broadcast against `like` ([B, ...]), in its dtype and device."""
        return _gather(self.alpha_bars, t, like)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) with the given standard noise."""
        abar = self.alpha_bar_at(t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0); at t = 0 that is x_0 with variance 0."""
        mean = _gather(self.posterior_coef_x0, t, x0) * x0 + _gather(self.posterior_coef_xt, t, xt) * xt
        return mean, _gather(self.posterior_variance, t, x0).expand_as(mean)
