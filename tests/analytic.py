"""Data distributions whose optimal noise predictor is known in closed form.

For x_0 drawn from a Gaussian mixture, x_t = sqrt(a) x_0 + sqrt(1 - a) eps is again a mixture, and the
minimiser of the epsilon loss is eps*(x_t) = E[eps | x_t] = sum_k r_k(x_t) sqrt(1 - a) (x_t - sqrt(a) m_k) / V_k
with V_k = a s_k^2 + 1 - a and r_k the posterior component weights. One component gives the Gaussian case
eps* = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a). These stand in for a perfectly trained network.

With PriorGrad's diagonal prior Sigma = diag(S^2) the forward noise is n = S eps, independently per dimension,
and the network predicts n itself. Per dimension and component, (x_0, x_t) is jointly Gaussian with
Var(x_t | k) = a s_k^2 + (1 - a) S^2 =: V_k and Cov(n, x_t | k) = sqrt(1 - a) S^2, so
E[n | x_t, k] = sqrt(1 - a) S^2 (x_t - sqrt(a) m_k) / V_k, weighted by the posterior r_k(x_t) computed with
these V_k. S = 1 is the standard case above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from diffwave.config import Config
from diffwave.diffusion import NoiseSchedule
from diffwave.model import DiffWave


def alpha_bar_at(schedule: NoiseSchedule, t: Tensor) -> Tensor:
    """alpha_bar at a possibly fractional step: sqrt(alpha_bar) interpolated linearly between steps.

    This is the inverse of DiffWave's alignment, so a fast-schedule state told step t_s gets its own
    alpha_bar back exactly (up to rounding).
    """
    root = schedule.alpha_bars.sqrt()
    t = t.to(torch.float64)
    low = t.floor().long().clamp(0, schedule.num_steps - 1)
    high = t.ceil().long().clamp(0, schedule.num_steps - 1)
    return (root[low] + (root[high] - root[low]) * (t - low)) ** 2


@dataclass
class GaussianMixture:
    """A mixture sum_k w_k N(m_k, s_k^2) in each of d independent dimensions; samples have shape [n, d].

    `prior_std` (S) is a float (d = 1) or a [d] tensor: each dimension's forward noise is S_j eps_j.
    """

    weights: tuple[float, ...]
    means: tuple[float, ...]
    stds: tuple[float, ...]

    def _params(self) -> tuple[Tensor, Tensor, Tensor]:
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
        return as_tensor(self.weights), as_tensor(self.means), as_tensor(self.stds)

    def sample(self, n: int, alpha_bar: float, generator: torch.Generator,
               prior_std: Tensor | float = 1.0) -> Tensor:
        """Exact draws of x_t [n, d] for a state with the given alpha_bar (alpha_bar = 1: the data itself)."""
        w, m, s = self._params()
        prior = _prior(prior_std)
        d = prior.numel()
        k = torch.multinomial(w, n * d, replacement=True, generator=generator).reshape(n, d)
        std = (alpha_bar * s[k] ** 2 + (1 - alpha_bar) * prior**2).sqrt()
        z = torch.randn(n * d, generator=generator, dtype=torch.float64).reshape(n, d)
        return math.sqrt(alpha_bar) * m[k] + std * z

    def optimal_eps(self, x: Tensor, alpha_bar: Tensor, prior_std: Tensor | float = 1.0) -> Tensor:
        """E[S eps | x_t = x] for x [n, d] and states whose alpha_bar is given per example ([n] tensor)."""
        w, m, s = self._params()
        a = alpha_bar.to(torch.float64).reshape(-1, 1, 1)
        prior2 = _prior(prior_std).reshape(-1, 1) ** 2  # [d, 1]
        xk = x.to(torch.float64).unsqueeze(-1)  # [n, d, 1] against components [K]
        centre = a.sqrt() * m
        var = a * s**2 + (1 - a) * prior2
        log_r = torch.log(w) - 0.5 * torch.log(var) - 0.5 * (xk - centre) ** 2 / var
        r = torch.softmax(log_r, dim=-1)
        return ((1 - a).sqrt() * prior2 * (xk - centre) / var * r).sum(dim=-1).to(x.dtype)

    def eps_fn(self, schedule: NoiseSchedule, prior_std: Tensor | float = 1.0):
        """The optimal predictor as the samplers call it: eps(x_t, t) with t a (fractional) step."""
        return lambda x, t: self.optimal_eps(x, alpha_bar_at(schedule, t), prior_std)

    def cdf(self, x: Tensor) -> Tensor:
        w, m, s = self._params()
        return (w * 0.5 * (1 + torch.erf((x.reshape(-1, 1) - m) / (s * math.sqrt(2))))).sum(dim=1)

    def nll(self, x: Tensor) -> Tensor:
        """-log density of the data, in nats, per example."""
        w, m, s = self._params()
        log_p = torch.log(w) - 0.5 * torch.log(2 * math.pi * s**2) - 0.5 * (x - m) ** 2 / s**2
        return -torch.logsumexp(log_p, dim=1)


def _prior(prior_std: Tensor | float) -> Tensor:
    return torch.as_tensor(prior_std, dtype=torch.float64).reshape(-1)


def gaussian(mean: float, std: float) -> GaussianMixture:
    return GaussianMixture((1.0,), (mean,), (std,))


def chain_law(plan, mean: float, std: float, prior_std: float = 1.0, from_prior: bool = False,
              start: tuple[float, float] | None = None) -> tuple[float, float]:
    """Exact mean and variance of a plan's output for Gaussian data N(mean, std^2) and the optimal predictor
    of the noise S eps (S = `prior_std`), starting from the exact marginal of the plan's noisiest state, or
    from the prior N(0, S^2) with `from_prior`, or from N(m, v) for `start` = (m, v) (denoising: a point).

    Every step is affine in x plus Gaussian noise, so the law stays Gaussian; the step formulas are written
    here from the papers (Ho et al. eq. 11, Song et al. eq. 12), independently of the package's code. Under
    the prior the reverse steps keep their means (x_t / S is a standard chain) and their noise is S z.
    """
    a_T, prior2 = plan.alpha_bars[-1].item(), prior_std**2
    m, v = math.sqrt(a_T) * mean, a_T * std**2 + (1 - a_T) * prior2
    if from_prior:
        m, v = 0.0, prior2
    if start is not None:
        m, v = start
    for i in reversed(range(len(plan))):
        gain, offset = step_affine(plan, i, std, prior_std)
        m, v = gain * m + offset * mean, gain**2 * v + plan.sigmas[i].item() ** 2 * prior2
    return m, v


def step_affine(plan, i: int, std: float, prior_std: Tensor | float = 1.0) -> tuple:
    """(gain, offset) of plan step i under the optimal predictor of S eps for data N(mean, std^2): the step's
    mean is gain x + offset * mean, written from the papers (Ho et al. eq. 11, Song et al. eq. 12); its fresh
    noise is sigma_i S z. `prior_std` S may be a tensor (one value per sample): gain and offset are then too."""
    a, a_prev, sigma = (plan.alpha_bars[i].item(), plan.alpha_bars_prev[i].item(), plan.sigmas[i].item())
    prior2 = prior_std**2
    c = math.sqrt(1 - a) * prior2 / (a * std**2 + (1 - a) * prior2)  # eps*(x) = c x - c sqrt(a) mean
    if plan.update == "ancestral":
        alpha = a / a_prev
        gain = (1 - (1 - alpha) * c / math.sqrt(1 - a)) / math.sqrt(alpha)
        return gain, (1 - alpha) * c * math.sqrt(a) / (math.sqrt(1 - a) * math.sqrt(alpha))
    direction = math.sqrt(1 - a_prev - sigma**2) - math.sqrt(a_prev * (1 - a) / a)
    return math.sqrt(a_prev / a) + direction * c, -direction * c * math.sqrt(a)


def run_chain(plan, x_T: Tensor, draws, std: float, mean: Tensor | float = 0.0,
              prior_std: Tensor | float = 1.0) -> Tensor:
    """A plan's output, in float64, from x_T and the standard normal draws(i) of each step i, for data
    N(mean, std^2) (mean and S per sample allowed) and the optimal predictor: `step_affine` step by step."""
    x = x_T.double()
    for i in reversed(range(len(plan))):
        gain, offset = step_affine(plan, i, std, prior_std)
        x = gain * x + offset * mean + plan.sigmas[i].item() * prior_std * draws(i).double()
    return x


class GaussianNetwork(DiffWave):
    """A DiffWave module (real upsampler and conditioner, randomly initialised) whose forward is the optimal
    predictor of S eps for data N(mean, std^2), sample by sample: a perfectly trained network, so a chain's
    output follows from the step formulas alone (`run_chain`).

    A conditional one takes each sample's data mean from its conditioning (`mean_of`), so a chain given the
    wrong conditioning lands elsewhere. `prior_std` is PriorGrad's S (a float, or [N] for one utterance). The
    estimate leaves through a 1x1 convolution of unit weight, exact in fp32, as a network's output projection
    does, so that autocast really runs it in bf16 when asked; `dtypes` records each estimate's dtype.
    """

    def __init__(self, config: Config, std: float, prior_std: Tensor | float = 1.0) -> None:
        super().__init__(num_steps=config.diffusion.num_steps, residual_channels=config.model.residual_channels,
                         residual_layers=config.model.residual_layers, dilation_cycle=config.model.dilation_cycle,
                         n_mels=config.audio.n_mels if config.model.conditional else None,
                         hop_length=config.audio.hop_length)
        self.schedule, self.std, self.prior_std = NoiseSchedule.from_config(config.diffusion), std, prior_std
        self.register_buffer("unit", torch.ones(1, 1, 1))
        self.dtypes: list[torch.dtype] = []

    def conditioning_dtype(self, dtype: torch.dtype, device: torch.device) -> torch.dtype:
        """Its forward is not the CPU engine that reads fp16: the chain must see the exact conditioning."""
        return dtype

    @staticmethod
    def mean_of(cond: Tensor) -> Tensor:
        """Each sample's data mean [B, N], read off the first channel of the first layer's conditioning."""
        return 0.3 * torch.tanh(10 * cond[:, 0, 0].double())

    def forward(self, x: Tensor, t: Tensor, cond: Tensor | None = None, mask: Tensor | None = None, *,
                mel: Tensor | None = None) -> Tensor:
        alpha_bar = alpha_bar_at(self.schedule, t)
        centred = x.double() - alpha_bar.sqrt()[:, None] * (0.0 if cond is None else self.mean_of(cond))
        eps = gaussian(0.0, self.std).optimal_eps(centred, alpha_bar, self.prior_std).float()
        eps = F.conv1d(eps.unsqueeze(1), self.unit).squeeze(1)
        self.dtypes.append(eps.dtype)
        return eps
