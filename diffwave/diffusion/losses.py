"""Training objective (epsilon prediction) and the full variational bound used for evaluation.

Both are computed in float32 or wider, outside any autocast region, so mixed-precision training never
reduces a loss in half precision. The bound is reported per audio sample (per dimension), in nats and bits.

With a data-dependent prior N(0, Sigma), Sigma = diag(S^2) (PriorGrad; `prior_std` = S, broadcasting to the
data), the forward noise is S eps and the network predicts it as drawn; the loss is the Mahalanobis norm
||S^-1 (eps_hat - S eps)||^2 (the likelihood weighting of the paper), and every Gaussian of the bound has
its covariance multiplied by Sigma. `prior_std=None` is the standard prior, computed exactly as before. A
`NoiseShaper` L (Sigma = L L^T, SpecGrad) shapes the noise as L eps and weights the loss by L^-1; the bound
needs a diagonal Sigma.

`output="v"`: the network predicts v = sqrt(abar) n - sqrt(1 - abar) x_0 (n the noise as drawn) and the loss
regresses v with the same S^-1 weighting; the bound reads x_0 off v (diffusion/parameterization.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffwave.diffusion.noise_priors import NoisePrior, shape_noise, whiten
from diffwave.diffusion.noise_schedule import NoiseSchedule
from diffwave.diffusion.parameterization import check_output, velocity, x0_from_velocity
from diffwave.diffusion.sampling import EpsFn, ancestral_mean

LOSS_KINDS = ("l2", "l1")


def _per_example_mean(values: Tensor) -> Tensor:
    return values.flatten(1).mean(dim=1)


def epsilon_loss(eps_hat: Tensor, eps: Tensor, kind: str = "l2", prior_std: NoisePrior = None) -> Tensor:
    """Per-example mean error between predicted and true noise: L2 (the paper) or L1 (the reference code);
    with `prior_std` S the error is measured in units of S: (eps_hat - eps) / S (L^-1 of it for a shaper)."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got '{kind}'")
    error = whiten(prior_std, eps_hat.float() - eps.float())
    return _per_example_mean(error.square() if kind == "l2" else error.abs())


def diffusion_loss(eps_fn: EpsFn, schedule: NoiseSchedule, x0: Tensor, *, kind: str = "l2",
                   generator: torch.Generator | None = None, prior_std: NoisePrior = None,
                   steps: Tensor | None = None, noise: Tensor | None = None, output: str = "epsilon"
                   ) -> tuple[Tensor, Tensor]:
    """L_simple with one uniformly drawn step per example; returns (per-example loss, the steps drawn).

    With `prior_std` S the noise is S eps and the loss is weighted by S^-2 (see the module doc). `steps` and
    standard `noise` given are used instead of drawing them (the trainer draws them per example). The
    target is the noise, or v with `output="v"`."""
    check_output(output)
    t = steps if steps is not None else torch.randint(0, schedule.num_steps, (x0.shape[0],), generator=generator,
                                                      device=x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    noise = shape_noise(prior_std, noise)
    x_t = schedule.q_sample(x0, t, noise)
    target = noise if output == "epsilon" else velocity(x0, noise, schedule.alpha_bar_at(t, x0))
    return epsilon_loss(eps_fn(x_t, t.float()), target, kind, prior_std), t


def gaussian_kl(mean1: Tensor, var1: Tensor | float, mean2: Tensor, var2: Tensor | float) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats."""
    var1, var2 = torch.as_tensor(var1, dtype=mean1.dtype), torch.as_tensor(var2, dtype=mean1.dtype)
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2).square()) / var2 - 1)


def gaussian_nll(x: Tensor, mean: Tensor, var: Tensor | float) -> Tensor:
    """-log N(x; mean, var) elementwise, in nats (a continuous decoder for real-valued audio)."""
    var = torch.as_tensor(var, dtype=x.dtype)
    return 0.5 * (torch.log(2 * math.pi * var) + (x - mean).square() / var)


@dataclass
class VariationalBound:
    """The terms of -ELBO for each example, in nats per sample: L_T, L_{t-1} for t = 1..T-1, and L_0."""

    prior: Tensor  # [B]     KL(q(x_{T-1} | x_0) || N(0, Sigma)), Sigma = I for the standard prior
    kl: Tensor  # [B, T-1]   column t-1: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), t = 1..T-1
    decoder: Tensor  # [B]   -log p(x_0 | state 0)

    @property
    def total(self) -> Tensor:
        return self.prior + self.kl.sum(dim=1) + self.decoder

    @property
    def bits_per_sample(self) -> Tensor:
        return self.total / math.log(2)


def reverse_variances(schedule: NoiseSchedule, variance: str | Tensor) -> Tensor:
    """sigma_t^2 of p(x_{t-1} | x_t) for t = 0..T-1; entry 0 is the decoder's variance.

    "beta_tilde" and "beta" are DDPM's two fixed choices (the decoder takes beta_0 for both, since
    beta_tilde_0 is zero); a tensor of T variances stands for a model with its own (e.g. learned) ones.
    """
    if isinstance(variance, Tensor):
        variances = variance.to(torch.float64).flatten()
        if variances.numel() != schedule.num_steps or not (variances > 0).all():
            raise ValueError(f"need {schedule.num_steps} positive reverse variances, got {variances.numel()}")
        return variances
    if variance == "beta_tilde":
        return torch.cat([schedule.betas[:1], schedule.posterior_variance[1:]])
    if variance == "beta":
        return schedule.betas
    raise ValueError(f"variance must be 'beta_tilde', 'beta' or a tensor, got '{variance}'")


@torch.no_grad()
def variational_bound(eps_fn: EpsFn, schedule: NoiseSchedule, x0: Tensor, *,
                      variance: str | Tensor = "beta_tilde", generator: torch.Generator | None = None,
                      prior_std: NoisePrior = None, output: str = "epsilon") -> VariationalBound:
    """Monte Carlo estimate (one x_t per term) of the negative ELBO of x0 under the model's reverse chain.

    The reverse variances come from `reverse_variances`; the decoder p(x_0 | state 0) is Gaussian around
    the model's mean. With `prior_std` S every variance (forward, posterior, reverse, decoder, prior) is
    multiplied by S^2 elementwise, and eps_fn predicts the noise as drawn (S eps), or v with `output="v"`,
    whose model mean is the posterior mean at x0_hat. T model calls per batch.
    """
    check_output(output)
    if prior_std is not None and not isinstance(prior_std, Tensor):
        raise ValueError("the variational bound needs a diagonal prior (None or a tensor of standard deviations)")
    sigma2 = reverse_variances(schedule, variance)
    batch = x0.shape[0]
    last = schedule.num_steps - 1
    abar_last = schedule.alpha_bars[last].item()
    cov = 1.0 if prior_std is None else prior_std.to(x0.dtype).square()  # the diagonal of Sigma
    prior = _per_example_mean(gaussian_kl(math.sqrt(abar_last) * x0, (1 - abar_last) * cov,
                                          torch.zeros_like(x0), cov))

    def model_mean(t: int) -> tuple[Tensor, Tensor]:
        steps = torch.full((batch,), t, device=x0.device, dtype=torch.long)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = schedule.q_sample(x0, steps, shape_noise(prior_std, noise))
        out = eps_fn(x_t, steps.float()).to(x0.dtype)
        if output == "v":
            return x_t, schedule.posterior(x0_from_velocity(x_t, out, schedule.alpha_bars[t].item()), x_t, steps)[0]
        return x_t, ancestral_mean(x_t, out, schedule.alpha_bars[t].item(), schedule.alpha_bars_prev[t].item())

    kl = x0.new_zeros(batch, last)
    for t in range(1, last + 1):
        x_t, p_mean = model_mean(t)
        q_mean, q_var = schedule.posterior(x0, x_t, torch.full((batch,), t, dtype=torch.long))
        kl[:, t - 1] = _per_example_mean(gaussian_kl(q_mean, q_var * cov, p_mean, sigma2[t].item() * cov))
    _, decoder_mean = model_mean(0)
    decoder = _per_example_mean(gaussian_nll(x0, decoder_mean, sigma2[0].item() * cov))
    return VariationalBound(prior, kl, decoder)
