"""One reverse step and the loop that runs any reverse plan with a noise-prediction function.

The loop knows nothing about networks: it calls `eps_fn(x_t, t)`, where t is a float tensor [batch] of
(possibly fractional) training steps. Randomness comes only from the `torch.Generator` passed in.

A data-dependent prior (PriorGrad, Lee et al. 2022) is a tensor S of standard deviations that broadcasts to
the sample's shape: the forward noise is S eps, so x_T ~ N(0, S^2) and the network predicts the noise as drawn,
S eps. Dividing every state by S turns that chain into the standard one, so the update formulas stay as they
are and only the fresh noise (x_T and each step's) is scaled by S. `prior_std=None` is the standard N(0, I).
A `NoiseShaper` L (SpecGrad) stands in the same way for S: x_T = L z and each step's noise is L z
(diffusion/noise_priors.py).

Predictor-corrector sampling (Song et al. 2021, "Score-based generative modeling through SDEs", Algorithm 5,
VP case): after a reverse step lands on a noisy state, K steps of Langevin dynamics at that state's noise
level pull x toward its marginal p(x_t). The score is read off the noise predictor,
grad log p(x_t) = -E[eps | x_t] / sqrt(1 - abar), and each step is x <- x + e score + sqrt(2 e) z with the step
e = 2 alpha (r ||z|| / ||score||)^2 set by the signal-to-noise ratio r (`langevin_step`).

`output="v"`: eps_fn returns the velocity v instead of the noise (diffusion/parameterization.py). Each update
is then written through x_0 = sqrt(abar) x - sqrt(1 - abar) v, which is defined at abar = 0, the first state
of a zero-terminal-SNR chain, where the noise form divides by sqrt(alpha) = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from diffwave.diffusion.noise_priors import NoisePrior, shape_noise, whiten
from diffwave.diffusion.parameterization import check_output, noise_from_velocity
from diffwave.diffusion.reverse_plans import ReversePlan
from diffwave.errors import ScheduleError

EpsFn = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[int, Tensor], None]
# noise_fn(i): standard normal noise of x's shape for draw i: i = 0..len(plan) - 1 the reverse steps' noise,
# i = len(plan) x_T, and i = corrector_draw(...) > len(plan) the corrector's (each index at most once). Callers
# whose noise must depend on where a slice sits in a longer signal (chunked synthesis) supply it; by default
# the noise comes from the generator.
NoiseFn = Callable[[int], Tensor]

# Song et al.'s signal-to-noise ratio: score_sde's configs/default_cifar10_configs.py sets sampling.snr = 0.16
# for all its CIFAR-10 models, VP (DDPM) ones included, with one corrector step per noise level.
CORRECTOR_SNR = 0.16


def ancestral_mean(x: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_prev: float) -> Tensor:
    """DDPM's posterior mean with x_0 predicted from eps: (x - beta / sqrt(1 - abar) eps) / sqrt(alpha)."""
    alpha = alpha_bar / alpha_bar_prev
    return (x - (1 - alpha) / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha)


def _ddim_direction(alpha_bar_prev: float, sigma: float) -> float:
    """sqrt(1 - abar' - sigma^2), the weight of the noise direction in Song et al.'s step."""
    remaining = 1 - alpha_bar_prev - sigma**2
    # When sigma takes all of the next level's noise (consistency sampling), `remaining` is 0 up to rounding,
    # whose square root (about 1e-8) would still leak eps into the state.
    return math.sqrt(remaining) if remaining > 1e-12 else 0.0


def ddim_mean(x: Tensor, eps: Tensor, alpha_bar: float, alpha_bar_prev: float, sigma: float) -> Tensor:
    """Song et al.'s step without its noise: sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps."""
    x0_hat = (x - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)
    return math.sqrt(alpha_bar_prev) * x0_hat + _ddim_direction(alpha_bar_prev, sigma) * eps


def _velocity_coefficients(plan: ReversePlan, i: int) -> tuple[float, float]:
    """(a, b) with mean = a x + b v: each update as weights on (x0_hat, x) or (x0_hat, eps_hat), with
    x0_hat = r x - q v and eps_hat = q x + r v (r = sqrt(abar), q = sqrt(1 - abar))."""
    alpha_bar, alpha_bar_prev = plan.alpha_bars[i].item(), plan.alpha_bars_prev[i].item()
    r, q = math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)
    if plan.update == "ancestral":  # the posterior mean c0 x0_hat + cx x (noise_schedule.posterior_coef_*)
        alpha = alpha_bar / alpha_bar_prev
        c0 = math.sqrt(alpha_bar_prev) * (1 - alpha) / (1 - alpha_bar)
        cx = math.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)
        return c0 * r + cx, -c0 * q
    signal, direction = math.sqrt(alpha_bar_prev), _ddim_direction(alpha_bar_prev, plan.sigmas[i].item())
    return signal * r + direction * q, -signal * q + direction * r


def update_coefficients(plan: ReversePlan, i: int, output: str = "epsilon") -> tuple[float, float]:
    """(a, b) with mean = a x + b out for plan state i, `out` the network's output (`output`: epsilon or v):
    both updates are linear in (x, out), so they are read off the formulas above, and the loop can update x
    in place instead of allocating new tensors every step."""
    check_output(output)
    if output == "v":
        return _velocity_coefficients(plan, i)
    alpha_bar, alpha_bar_prev = plan.alpha_bars[i].item(), plan.alpha_bars_prev[i].item()
    if alpha_bar == 0.0:
        raise ScheduleError(f"plan '{plan.name}' starts at pure noise (alpha_bar 0), where a noise estimate says "
                            "nothing about the data; that needs a v-prediction model")
    if plan.update == "ancestral":
        return (ancestral_mean(1.0, 0.0, alpha_bar, alpha_bar_prev),
                ancestral_mean(0.0, 1.0, alpha_bar, alpha_bar_prev))
    sigma = plan.sigmas[i].item()
    return (ddim_mean(1.0, 0.0, alpha_bar, alpha_bar_prev, sigma),
            ddim_mean(0.0, 1.0, alpha_bar, alpha_bar_prev, sigma))


def reverse_step(plan: ReversePlan, i: int, x: Tensor, eps: Tensor,
                 generator: torch.Generator | None = None, noise_fn: NoiseFn | None = None,
                 prior_std: NoisePrior = None, output: str = "epsilon") -> Tensor:
    """Move x from plan state i to the state before it, in place (x keeps its dtype whatever eps's); `eps` is
    the network's output, a noise estimate or v as `output` says; fresh noise (shaped by the prior) only where
    sigma_i > 0. Returns x."""
    scale_x, scale_eps = update_coefficients(plan, i, output)
    x.mul_(scale_x).add_(eps, alpha=scale_eps)
    sigma = plan.sigmas[i].item()
    if sigma > 0:
        noise = standard_noise(x.shape, i, generator, noise_fn, x.device, x.dtype)
        x.add_(shape_noise(prior_std, noise), alpha=sigma)
    return x


def standard_noise(shape: tuple[int, ...] | torch.Size, i: int, generator: torch.Generator | None,
                   noise_fn: NoiseFn | None, device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """Noise for plan index i: from noise_fn when given (checked against `shape`), else from the generator."""
    if noise_fn is None:
        return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
    noise = noise_fn(i)
    if tuple(noise.shape) != tuple(shape):
        raise ValueError(f"noise_fn({i}) gave shape {tuple(noise.shape)}, expected {tuple(shape)}")
    return noise.to(device, dtype)


def checked_prior(prior_std: Tensor, shape: tuple[int, ...] | torch.Size) -> Tensor:
    """The prior's standard deviations, refused unless finite, positive and broadcasting to `shape`."""
    try:
        broadcast = torch.broadcast_shapes(tuple(prior_std.shape), tuple(shape))
    except RuntimeError:
        broadcast = None
    if broadcast != tuple(shape):
        raise ValueError(f"prior_std of shape {tuple(prior_std.shape)} does not broadcast to {tuple(shape)}")
    if not (torch.isfinite(prior_std).all() and (prior_std > 0).all()):
        raise ValueError("prior_std must be finite and positive everywhere")
    return prior_std


def check_corrector(steps: int, snr: float) -> None:
    """Refuse corrector settings that are not a whole number of steps >= 0 and a finite snr > 0."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ScheduleError(f"corrector steps must be a whole number >= 0, got {steps!r}")
    if isinstance(snr, bool) or not isinstance(snr, int | float) or not (math.isfinite(snr) and snr > 0):
        raise ScheduleError(f"corrector snr must be a finite number > 0, got {snr!r}")


def corrector_draw(plan: ReversePlan, state: int, step: int, steps: int) -> int:
    """The noise_fn index of corrector step `step` (of `steps`) at plan state `state`: above len(plan), so it
    never collides with the predictor's draws 0..len(plan)."""
    return len(plan) + 1 + state * steps + step


def _row_norms(v: Tensor, outside: Tensor | None) -> Tensor:
    """The L2 norm of each example (row) of v, over its real samples only, shaped to broadcast against v."""
    if outside is not None:
        v = v.masked_fill(outside, 0.0)
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1).reshape(-1, *[1] * (v.ndim - 1))


def langevin_step(x: Tensor, eps: Tensor, alpha_bar: float, alpha: float, snr: float, noise: Tensor,
                  prior_std: NoisePrior = None, outside: Tensor | None = None) -> Tensor:
    """One Langevin corrector step at a state of the given alpha_bar, in place: x <- x + e g + sqrt(2 e) S z.

    g = -eps / sqrt(1 - alpha_bar) is the score times S^2 (the score itself without a prior); `noise` is z,
    standard normal. The step e = 2 alpha (snr ||z|| / ||g / S||)^2 is Song et al.'s (Algorithm 5, VP;
    `alpha` = alpha_bar / alpha_bar_prev of the state), with norms per example (row), so that an example
    never depends on the others in its batch, and over its real samples only (`outside`: True on padding).

    PriorGrad (S = `prior_std`): y = x / S is the standard chain, whose score is -(eps / S) / sqrt(1 - abar).
    Song's step on y, mapped back by x = S y, is the one above: the norm of the score is measured in the
    S-normalised coordinates and the noise is S z. In x it is Langevin preconditioned by S^2, which leaves
    p(x_t) invariant for any fixed positive preconditioner. A row whose score vanishes is left as it is. A
    `NoiseShaper` L takes S's place: the norm is measured after whitening and the noise is L z.
    """
    score = eps.to(x.dtype) * (-1.0 / math.sqrt(1 - alpha_bar))
    score_norm = _row_norms(whiten(prior_std, score), outside)
    ratio = snr * _row_norms(noise, outside) / score_norm.clamp(min=torch.finfo(score_norm.dtype).tiny)
    step = torch.where(score_norm > 0, 2 * alpha * ratio**2, torch.zeros_like(ratio))
    x.add_(step * score)
    return x.add_(torch.sqrt(2 * step) * shape_noise(prior_std, noise))


def _correct(plan: ReversePlan, state: int, x: Tensor, eps_fn: EpsFn, t: Tensor, steps: int, snr: float,
             generator: torch.Generator | None, noise_fn: NoiseFn | None, prior_std: NoisePrior,
             outside: Tensor | None, output: str) -> None:
    """`steps` Langevin steps at plan state `state` (its alpha_bar, its alpha, its model step), in place."""
    alpha_bar = plan.alpha_bars[state].item()
    alpha = alpha_bar / plan.alpha_bars_prev[state].item()
    t.fill_(plan.model_steps[state].item())
    for step in range(steps):
        eps = eps_fn(x, t)
        if output == "v":
            eps = noise_from_velocity(x, eps.to(x.dtype), alpha_bar)
        noise = standard_noise(x.shape, corrector_draw(plan, state, step, steps), generator, noise_fn, x.device,
                               x.dtype)
        langevin_step(x, eps, alpha_bar, alpha, snr, noise, prior_std, outside)
        if outside is not None:
            x.masked_fill_(outside, 0.0)


def _check_states_chain(plan: ReversePlan) -> None:
    """The corrector runs at the state step i lands on, taken to be plan state i - 1: check that it is."""
    if not torch.allclose(plan.alpha_bars_prev[1:], plan.alpha_bars[:-1], rtol=1e-9, atol=0.0):
        raise ScheduleError(f"plan '{plan.name}': step i does not land on state i - 1 (alpha_bars_prev[1:] != "
                            "alpha_bars[:-1]), so the corrector has no model step for the states it lands on")


@torch.inference_mode()
def sample(plan: ReversePlan, eps_fn: EpsFn, shape: tuple[int, ...] | torch.Size, *,
           generator: torch.Generator | None = None, x_T: Tensor | None = None,
           device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
           clip: bool = False, callback: StepCallback | None = None, noise_fn: NoiseFn | None = None,
           prior_std: NoisePrior = None, mask: Tensor | None = None, corrector_steps: int = 0,
           corrector_snr: float = CORRECTOR_SNR, output: str = "epsilon") -> Tensor:
    """Run the reverse chain of `plan` from x_T (default: noise of `shape` from the prior) down to the data.

    One tensor x holds the state and is updated in place at every step, in `dtype` (x_T's dtype when given)
    whatever precision eps_fn computes in: a low-precision network still gets a float32 chain.
    `callback(i, x)` is called after each step with the plan index just completed (S-1 down to 0); x is the
    live state, so a callback that keeps it must clone it.
    `clip` clamps the result to [-1, 1], as audio output wants; the exactness tests leave it off.
    `noise_fn` replaces the generator as the source of x_T and of every step's fresh (standard) noise.
    `prior_std` (broadcasting to `shape`) is PriorGrad's S: x_T ~ N(0, S^2) and each step's noise is scaled
    by S; or a `NoiseShaper` L: x_T = L z and each step's noise is L z. An x_T passed in is used as it is.
    `mask` (bool, broadcasting to `shape`, True on real samples) keeps x at zero elsewhere, from x_T on: the
    padding of a batch of different lengths (eps_fn masks the network itself).
    `corrector_steps` K > 0 makes it a predictor-corrector sampler: after every step that lands on a noisy
    state (all but the last), K Langevin steps at that state (`langevin_step`, signal-to-noise ratio
    `corrector_snr`; the default 0.16 is score_sde's), each costing one more eps_fn call. Its noise comes from
    the generator, or from noise_fn at the indices `corrector_draw` gives. K = 0 is the plain sampler, bit
    for bit. `callback` sees the corrected state.
    `output` is what eps_fn returns: "epsilon" (the noise as drawn) or "v" (see the module doc).
    """
    check_corrector(corrector_steps, corrector_snr)
    check_output(output)
    if corrector_steps:
        _check_states_chain(plan)
    if x_T is None:
        x = standard_noise(shape, len(plan), generator, noise_fn, device, dtype).clone()
    else:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {tuple(shape)}")
        x = x_T.clone()
    if isinstance(prior_std, Tensor):
        prior_std = checked_prior(prior_std, shape).to(x.device, x.dtype)
    if prior_std is not None and x_T is None:
        x = shape_noise(prior_std, x)
    outside = None if mask is None else ~mask.to(x.device).expand(x.shape)
    if outside is not None:
        x.masked_fill_(outside, 0.0)
    t = torch.empty(x.shape[0], device=x.device, dtype=torch.float32)
    for i in reversed(range(len(plan))):
        reverse_step(plan, i, x, eps_fn(x, t.fill_(plan.model_steps[i].item())), generator, noise_fn, prior_std,
                     output)
        if outside is not None:
            x.masked_fill_(outside, 0.0)
        if corrector_steps and i > 0:
            _correct(plan, i - 1, x, eps_fn, t, corrector_steps, corrector_snr, generator, noise_fn, prior_std,
                     outside, output)
        if callback is not None:
            callback(i, x)
    return x.clamp_(-1.0, 1.0) if clip else x
