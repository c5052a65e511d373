"""Euler's method on the flow ODE ``dx/dt = v(x, t)`` of a flow-matching network
(:mod:`ctdiff.diffusion.flow`), from ``t = 1`` to ``t = 0`` on the uniform grid of :func:`flow_time_grid`:
first order, one network evaluation per step. Times are plain floats; tensors are ``[B, ...]``.

Clipping: ``x̂0 = x_t − t·v`` is clipped and ``v`` re-derived as ``(x_t − x̂0)/t``, the velocity of the
straight path through ``x_t`` and the clipped ``x̂0`` (:func:`clip_velocity`), so a step to ``t = 0`` lands on
the clipped ``x̂0``. Heun's method (:mod:`ctdiff.diffusion.samplers.heun`) shares the grid, the clip and this
step as its predictor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctdiff.diffusion.samplers.family import Chain, SamplerFamily, clip_x0

if TYPE_CHECKING:
    from torch import Tensor

    from ctdiff.diffusion.samplers.family import Clip


def flow_time_grid(steps: int) -> list[float]:
    """The ``steps + 1`` flow times ``1, 1 − 1/steps, …, 1/steps, 0`` (float64) that Euler and Heun step
    between: uniform steps of ``h = 1/steps`` from the noise (``t = 1``) to the data (``t = 0``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return [1.0 - i / steps for i in range(steps)] + [0.0]


def clip_velocity(v: Tensor, t: float, x_t: Tensor, clip: Clip = True) -> Tensor:
    """The velocity whose ``x̂0`` is clipped: ``x̂0 = clip(x_t − t·v)`` (``True``: clamped to ``[-1, 1]``; a
    callable: the representation's projection), then ``v' = (x_t − x̂0)/t`` (``x_t − t·v' = x̂0``; ``v' = v``
    wherever ``x̂0`` was in range). ``t > 0``.

    ``v``, ``x_t``: ``[B, ...]`` → ``[B, ...]``.
    """
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must be in (0, 1] to clip a velocity, got {t}")
    x0 = clip_x0(x_t - t * v, clip)
    return (x_t - x0) / t


def check_flow_times(t: float, t_next: float) -> None:
    """``0 ≤ t_next < t ≤ 1``: a step towards the data."""
    if not 0.0 <= t_next < t <= 1.0:
        raise ValueError(f"flow times must satisfy 0 <= t_next < t <= 1, got t={t}, t_next={t_next}")


def euler_step(v: Tensor, t: float, t_next: float, x_t: Tensor, *, clip: Clip = True) -> Tensor:
    """One Euler step of the flow ODE ``x_t → x_{t_next}``, ``t_next < t``:
    ``x_{t_next} = x_t + (t_next − t)·v`` with ``v`` the network's velocity at ``(x_t, t)``, clipped by
    :func:`clip_velocity` if ``clip`` (a step to ``t_next = 0`` then returns the clamped ``x̂0``).

    ``v``, ``x_t``: ``[B, ...]`` → ``[B, ...]``.
    """
    check_flow_times(t, t_next)
    if clip is not False:
        v = clip_velocity(v, t, x_t, clip)
    return x_t + (t_next - t) * v


def step(chain: Chain, t: float, t_next: float, x: Tensor, memory: None) -> tuple[Tensor, None]:
    return euler_step(chain.predict(x, t), t, t_next, x, clip=chain.clip), None


SAMPLER = SamplerFamily(
    name="euler",
    summary="Euler on the flow ODE, uniform steps from t = 1 to 0",
    objectives=("flow",),
    grid=lambda steps, timesteps: flow_time_grid(steps),
    evaluations=lambda steps: steps,
    step=step,
    typical_steps=30,
)
