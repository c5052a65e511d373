"""DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order multistep solver of the
diffusion ODE in the data-prediction form, which reuses the previous step's ``x0``; deterministic, one network
evaluation per step, on diffusers' ``DPMSolverMultistepScheduler`` default grid.

``t`` is a plain int and tensors are ``[B, ...]``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ctdiff.diffusion.samplers.family import Chain, SamplerFamily, batch_t, check_t, clip_x0

if TYPE_CHECKING:
    from torch import Tensor

    from ctdiff.diffusion.samplers.family import Clip
    from ctdiff.diffusion.schedule import Schedule


def _half_log_snr(alpha_bar: float) -> float:
    """``λ = log(α/σ) = ½ log(ᾱ / (1 − ᾱ))`` (Lu et al. notation)."""
    return 0.5 * math.log(alpha_bar / (1.0 - alpha_bar))


def dpmpp_2m_step(
    s: Schedule,
    eps: Tensor,
    t: int,
    t_prev: int,
    x_t: Tensor,
    x0_last: Tensor | None = None,
    t_last: int | None = None,
    *,
    clip: Clip = True,
) -> tuple[Tensor, Tensor]:
    """One DPM-Solver++(2M) step ``x_t → x_{t_prev}``; returns ``(x_{t_prev}, x̂0_t)``.

    ``x0_last`` is the ``x̂0`` returned by the previous step, taken at ``t_last > t``; without it (first
    step) the update is first order, and so is the final step onto ``t_prev = −1`` (``ᾱ = 1``, σ = 0),
    which returns ``x̂0_t`` itself. With ``α = √ᾱ``, ``σ = √(1 − ᾱ)``, ``λ = log(α/σ)``,
    ``h = λ_prev − λ_t`` and ``r = (λ_t − λ_last)/h``:

    1. ``x̂0_t = (x_t − σ_t ε)/α_t``, clamped to ``[-1, 1]`` if ``clip``;
    2. ``D = (1 + 1/(2r)) x̂0_t − 1/(2r) x0_last``  (``D = x̂0_t`` at first order);
    3. ``x_prev = (σ_prev/σ_t) x_t − α_prev (e^{−h} − 1) D``  (Lu et al. 2022, Algorithm 2).

    ``eps``, ``x_t``, ``x0_last``: ``[B, ...]``.
    """
    from ctdiff.diffusion.schedule import predict_x0  # torch, when a step runs (package docstring)

    check_t(s, t)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must be in [-1, {t - 1}] for t={t}, got {t_prev}")
    x0 = predict_x0(s, x_t, batch_t(t, x_t), eps)
    x0 = clip_x0(x0, clip)
    if t_prev < 0:
        return x0, x0
    a_t, a_prev = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t_prev])
    h = _half_log_snr(a_prev) - _half_log_snr(a_t)
    d = x0
    if x0_last is not None:
        if t_last is None or not t < t_last < s.timesteps:
            raise ValueError(f"t_last must be in [{t + 1}, {s.timesteps - 1}] with x0_last, got {t_last}")
        r = (_half_log_snr(a_t) - _half_log_snr(float(s.alphas_cumprod[t_last]))) / h
        d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * x0_last
    x_prev = math.sqrt((1.0 - a_prev) / (1.0 - a_t)) * x_t - math.sqrt(a_prev) * math.expm1(-h) * d
    return x_prev, x0


def grid(steps: int, timesteps: int) -> list[int]:
    """diffusers' default grid (``timestep_spacing="linspace"``): ``linspace(0, T−1, steps+1)`` rounded,
    descending, without its 0, then ``−1``: the last evaluation (at ``≈ (T−1)/steps``) steps straight to σ = 0
    (``final_sigmas_type="zero"``), so no evaluation is spent at ``t = 0``; hence ``steps ≤ T−1``."""
    import numpy as np  # when a chain is laid out, not when the facts load (package docstring)

    # Spacing (T−1)/steps >= 1 for steps <= T−1, so the rounded values are distinct and >= 1.
    return [int(v) for v in np.round(np.linspace(0, timesteps - 1, steps + 1))[::-1][:-1]] + [-1]


def step(chain: Chain, t: int, t_next: int, x: Tensor, memory: tuple | None) -> tuple[Tensor, tuple]:
    """``memory``: the previous step's ``(x̂0, t)``, the history of the multistep update."""
    x0_last, t_last = memory if memory is not None else (None, None)
    x, x0 = dpmpp_2m_step(chain.schedule, chain.predict(x, t), t, t_next, x, x0_last, t_last, clip=chain.clip)
    return x, (x0, t)


def _below_t(timesteps: int) -> int:
    """The grid holds at most the ``T − 1`` timesteps ``1 … T − 1``: none is spent at ``t = 0``."""
    return timesteps - 1


SAMPLER = SamplerFamily(
    name="dpmpp",
    summary="DPM-Solver++(2M), deterministic",
    objectives=("eps", "v"),
    grid=grid,
    evaluations=lambda steps: steps,
    step=step,
    max_steps=_below_t,
    max_steps_why="diffusion.timesteps - 1, no evaluation at t = 0",
    typical_steps=25,
)
