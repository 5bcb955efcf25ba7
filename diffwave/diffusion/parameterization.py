"""What a network's output stands for, and the closed forms that convert between the choices.

With x_t = sqrt(abar) x_0 + sqrt(1 - abar) n (n the forward noise as drawn, S eps under a PriorGrad prior), a
network may predict n ("epsilon", DDPM) or the velocity v = sqrt(abar) n - sqrt(1 - abar) x_0 ("v", Salimans &
Ho 2022). The pair (x_t, v) is a rotation of (x_0, n), so
    x_0 = sqrt(abar) x_t - sqrt(1 - abar) v,    n = sqrt(1 - abar) x_t + sqrt(abar) v,
and both stay defined at abar = 0, the pure-noise state of a zero-terminal-SNR schedule, where x_0 cannot be
read off a noise estimate. `alpha_bar` is a float or a tensor broadcasting against x.
"""

from __future__ import annotations

import math

from torch import Tensor

OUTPUTS = ("epsilon", "v")


def _roots(alpha_bar: float | Tensor) -> tuple[float | Tensor, float | Tensor]:
    if isinstance(alpha_bar, Tensor):
        return alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    return math.sqrt(alpha_bar), math.sqrt(1 - alpha_bar)


def velocity(x0: Tensor, noise: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """The v-prediction target: sqrt(abar) noise - sqrt(1 - abar) x0."""
    signal, spread = _roots(alpha_bar)
    return signal * noise - spread * x0


def x0_from_velocity(x: Tensor, v: Tensor, alpha_bar: float | Tensor) -> Tensor:
    signal, spread = _roots(alpha_bar)
    return signal * x - spread * v


def noise_from_velocity(x: Tensor, v: Tensor, alpha_bar: float | Tensor) -> Tensor:
    signal, spread = _roots(alpha_bar)
    return spread * x + signal * v


def check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got '{output}'")

