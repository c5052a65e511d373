"""Heun's method on the flow ODE (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
Generative Models", Algorithm 1: the trapezoidal rule with an Euler predictor), on Euler's grid
(:func:`ctdiff.diffusion.samplers.euler.flow_time_grid`): second order, two network evaluations per step except
the last, whose corrector would need the velocity at ``t = 0``; the last step is an Euler step, as in Karras et
al. and diffusers' ``FlowMatchHeunDiscreteScheduler``. So ``steps`` steps cost ``2·steps − 1`` evaluations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctdiff.diffusion.samplers.euler import check_flow_times, clip_velocity, euler_step, flow_time_grid
from ctdiff.diffusion.samplers.family import Chain, SamplerFamily

if TYPE_CHECKING:
    from torch import Tensor

    from ctdiff.diffusion.samplers.family import Clip


def heun_step(
    v: Tensor, v_next: Tensor, t: float, t_next: float, x_t: Tensor, x_euler: Tensor, *, clip: Clip = True
) -> Tensor:
    """Heun's corrector for ``x_t → x_{t_next}`` with ``0 < t_next < t`` (Karras et al. 2022, Algorithm 1):

    1. ``x_euler = euler_step(v, t, t_next, x_t)``, the predictor (the caller evaluated ``v`` at ``(x_t, t)``);
    2. ``v_next``: the network's velocity at ``(x_euler, t_next)``;
    3. ``x_{t_next} = x_t + (t_next − t)·(v + v_next)/2``.

    With ``clip``, ``v`` is clipped at ``(x_t, t)`` and ``v_next`` at ``(x_euler, t_next)``
    (:func:`~ctdiff.diffusion.samplers.euler.clip_velocity`). ``v``, ``v_next``, ``x_t``, ``x_euler``:
    ``[B, ...]`` → ``[B, ...]``.
    """
    check_flow_times(t, t_next)
    if t_next == 0.0:
        raise ValueError("the step to t = 0 is an Euler step: the corrector would need the velocity at t = 0")
    if clip is not False:
        v, v_next = clip_velocity(v, t, x_t, clip), clip_velocity(v_next, t_next, x_euler, clip)
    return x_t + (t_next - t) * 0.5 * (v + v_next)


def step(chain: Chain, t: float, t_next: float, x: Tensor, memory: None) -> tuple[Tensor, None]:
    v = chain.predict(x, t)
    x_euler = euler_step(v, t, t_next, x, clip=chain.clip)
    if t_next == 0.0:  # no corrector on the last step
        return x_euler, None
    return heun_step(v, chain.predict(x_euler, t_next), t, t_next, x, x_euler, clip=chain.clip), None


SAMPLER = SamplerFamily(
    name="heun",
    summary="Heun's second-order method on the flow ODE (the last step, to t = 0, is an Euler step)",
    objectives=("flow",),
    grid=lambda steps, timesteps: flow_time_grid(steps),
    evaluations=lambda steps: 2 * steps - 1,
    step=step,
    typical_steps=15,
)
