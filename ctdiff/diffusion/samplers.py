"""Reverse-process samplers: pure per-step updates and one short loop.

``ddpm_step`` is ancestral sampling (Ho et al. 2020, Algorithm 2, written through the predicted ``x0``
and the posterior of eq. 6–7); ``ddim_step`` is Song et al. 2021 ("Denoising Diffusion Implicit
Models") eq. 12 with σ from eq. 16. Both take ``t`` as a plain int, tensors as ``[B, ...]``
(``[B, C, D, H, W]`` for volumes), and do no random draws of their own: the noise is an argument.

``dpmpp_2m_step`` is DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2): a second-order
multistep solver of the diffusion ODE in the data-prediction form, which reuses the previous step's ``x0``.
These three sample ε-prediction networks, and v-prediction networks once ``sample`` has turned ``v`` into
``ε`` (:func:`ctdiff.diffusion.schedule.eps_from_v`).

``euler_step`` and ``heun_step`` integrate the flow ODE ``dx/dt = v(x, t)`` of a flow-matching network
(:mod:`ctdiff.diffusion.flow`) from ``t = 1`` to ``t = 0`` on the uniform grid of :func:`flow_time_grid`:
Euler (first order, one network evaluation per step) and Heun's method (the trapezoidal predictor–corrector,
second order, two evaluations per step except the last, whose corrector would need the velocity at ``t = 0``;
the last step is an Euler step, as in Karras et al. 2022, Algorithm 1, and diffusers'
``FlowMatchHeunDiscreteScheduler``). Their times are plain floats.

Clipping: the predicted ``x0`` is clamped to the data range ``[-1, 1]``; DDIM then re-derives ``ε``
from the clamped ``x0``. Without that, the clamped ``x0`` and the unclamped ``ε`` disagree and
deterministic DDIM returns noise. The flow steps do the same with the velocity: ``x̂0 = x_t − t·v`` is
clamped and ``v`` re-derived as ``(x_t − x̂0)/t``, the velocity of the straight path through ``x_t`` and the
clamped ``x̂0`` (:func:`clip_velocity`), so a step to ``t = 0`` lands on the clamped ``x̂0``.
``clip`` is ``True`` (that clamp), ``False``, or a callable that maps
``x0`` onto the data range in the space the chain runs in: with ``model.representation: wavelet`` the data
range holds in voxel space, and :func:`ctdiff.model.representation.x0_clip` gives the projection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ctdiff.diffusion.flow import network_time
from ctdiff.diffusion.schedule import Schedule, eps_from_v, eps_from_x0, predict_x0, q_posterior
from ctdiff.options import SAMPLERS, SAMPLERS_FOR, check_sampler_fits, max_steps


def _check_t(s: Schedule, t: int) -> None:
    if not 0 <= t < s.timesteps:
        raise ValueError(f"t must be in [0, {s.timesteps - 1}], got {t}")


Clip = bool | Callable[[Tensor], Tensor]


def _clip(x0: Tensor, clip: Clip) -> Tensor:
    """``x0`` clipped as ``clip`` says: ``True`` clamps to ``[-1, 1]``, ``False`` leaves it, a callable maps it."""
    if callable(clip):
        return clip(x0)
    return x0.clamp(-1.0, 1.0) if clip else x0


def _batch_t(t: int, x: Tensor) -> Tensor:
    """The int ``t`` as a ``[B]`` int64 tensor on ``x``'s device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def ddpm_step(
    s: Schedule, eps: Tensor, t: int, x_t: Tensor, noise: Tensor | None, *, clip: Clip = True
) -> Tensor:
    """One ancestral step ``x_t → x_{t−1}`` (Ho et al. Algorithm 2, line 4).

    1. ``x̂0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t``  (eq. 15), clamped to ``[-1, 1]`` if ``clip``;
    2. ``μ̃_t = coef1_t · x̂0 + coef2_t · x_t``  (eq. 7);
    3. ``x_{t−1} = μ̃_t + σ_t · z`` with ``σ_t² = β̃_t`` (eq. 7, the "fixed small" variance) and
       ``z = noise``; at ``t = 0`` no noise is added and ``noise`` may be ``None``.

    ``eps``, ``x_t``, ``noise``: ``[B, ...]`` → ``[B, ...]``.
    """
    _check_t(s, t)
    tb = _batch_t(t, x_t)
    x0 = predict_x0(s, x_t, tb, eps)
    x0 = _clip(x0, clip)
    mean, _, _ = q_posterior(s, x0, x_t, tb)
    if t == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step needs noise at t={t} > 0")
    return mean + math.sqrt(s.posterior_variance[t]) * noise


def ddim_step(
    s: Schedule,
    eps: Tensor,
    t: int,
    t_prev: int,
    x_t: Tensor,
    noise: Tensor | None,
    *,
    eta: float = 0.0,
    clip: Clip = True,
) -> Tensor:
    """One DDIM step ``x_t → x_{t_prev}`` (Song et al. eq. 12), ``t_prev < t``; ``t_prev = −1`` means
    ``ᾱ_prev = 1`` (the step lands on ``x0``).

    1. ``x̂0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t``; if ``clip``: clamp to ``[-1, 1]`` and re-derive
       ``ε = (x_t − √ᾱ_t · x̂0) / √(1 − ᾱ_t)`` so that ``x̂0`` and ``ε`` stay consistent;
    2. ``σ = η · √((1 − ᾱ_prev)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_prev)``  (eq. 16; η = 1 is DDPM-like);
    3. ``x_prev = √ᾱ_prev · x̂0 + √(1 − ᾱ_prev − σ²) · ε + σ · z``  (eq. 12).

    ``noise`` (``z``) is used only when ``σ > 0`` and may be ``None`` otherwise.
    ``eps``, ``x_t``, ``noise``: ``[B, ...]`` → ``[B, ...]``.
    """
    _check_t(s, t)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must be in [-1, {t - 1}] for t={t}, got {t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    tb = _batch_t(t, x_t)
    x0 = predict_x0(s, x_t, tb, eps)
    if clip is not False:
        x0 = _clip(x0, clip)
        eps = eps_from_x0(s, x_t, tb, x0)

    a_t = s.alphas_cumprod[t]
    a_prev = s.alphas_cumprod[t_prev] if t_prev >= 0 else 1.0
    sigma = eta * math.sqrt((1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev))
    x_prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1.0 - a_prev - sigma**2, 0.0)) * eps
    if sigma == 0.0:
        return x_prev
    if noise is None:
        raise ValueError(f"ddim_step needs noise when sigma > 0 (eta={eta}, t={t}, t_prev={t_prev})")
    return x_prev + sigma * noise


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
    _check_t(s, t)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must be in [-1, {t - 1}] for t={t}, got {t_prev}")
    x0 = predict_x0(s, x_t, _batch_t(t, x_t), eps)
    x0 = _clip(x0, clip)
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


def _check_steps(sampler: str, steps: int, T: int) -> None:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    most = max_steps(sampler, T)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ValueError(f"steps must be an integer in [1, {most}] for {sampler} (T = {T}), got {steps!r}")


def timestep_sequence(sampler: str, steps: int, T: int) -> list[int]:
    """The descending timesteps at which a diffusion sampler evaluates the network.

    ``ddpm``: all of ``T−1, …, 0`` (``steps`` must equal ``T``). ``ddim``: ``steps`` distinct values evenly
    spaced from ``T−1`` down to ``0``, rounded (``steps = 1`` gives ``[T−1]``); the step after ``t = 0`` lands
    on ``ᾱ = 1``. ``dpmpp``: diffusers' ``DPMSolverMultistepScheduler`` default grid
    (``timestep_spacing="linspace"``): ``linspace(0, T−1, steps+1)`` rounded, descending, without its 0 — the
    last evaluation (at ``≈ (T−1)/steps``) steps straight to σ = 0 (``final_sigmas_type="zero"``), so no
    evaluation is spent at ``t = 0``; hence ``steps ≤ T−1`` (``ctdiff.options.max_steps``).
    """
    if sampler in SAMPLERS_FOR["flow"]:
        raise ValueError(f"{sampler} integrates the flow ODE on flow_time_grid(steps), not on DDPM timesteps")
    _check_steps(sampler, steps, T)
    if sampler == "ddpm":
        if steps != T:
            raise ValueError(f"the ddpm sampler visits every timestep: steps must be {T}, got {steps}")
        return list(range(T - 1, -1, -1))
    if sampler == "dpmpp":
        # Spacing (T−1)/steps >= 1 for steps <= T−1, so the rounded values are distinct and >= 1.
        return [int(v) for v in np.round(np.linspace(0, T - 1, steps + 1))[::-1][:-1]]
    # Spacing (T−1)/(steps−1) >= 1, so the rounded values are distinct.
    return [int(v) for v in np.round(np.linspace(T - 1, 0, steps))]


def flow_time_grid(steps: int) -> list[float]:
    """The ``steps + 1`` flow times ``1, 1 − 1/steps, …, 1/steps, 0`` (float64) that Euler and Heun step
    between: uniform steps of ``h = 1/steps`` from the noise (``t = 1``) to the data (``t = 0``)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return [1.0 - i / steps for i in range(steps)] + [0.0]


def network_evaluations(sampler: str, steps: int | None, timesteps: int) -> int:
    """Network evaluations per volume of :func:`sample` with ``sampler`` and ``steps`` (``None`` = ``T =
    timesteps``), the cost of a sampler on any machine: ``steps`` for ddpm (``T``), ddim, dpmpp and euler;
    ``2·steps − 1`` for heun (a predictor and a corrector per step, no corrector on the last step to
    ``t = 0``). Raises ``ValueError`` for an unknown sampler or steps outside ``1 … max_steps``."""
    steps = timesteps if steps is None else steps
    if sampler in SAMPLERS_FOR["flow"]:
        _check_steps(sampler, steps, timesteps)
        return 2 * steps - 1 if sampler == "heun" else steps
    return len(timestep_sequence(sampler, steps, timesteps))


def clip_velocity(v: Tensor, t: float, x_t: Tensor, clip: Clip = True) -> Tensor:
    """The velocity whose ``x̂0`` is clipped: ``x̂0 = clip(x_t − t·v)`` (``True``: clamped to ``[-1, 1]``; a
    callable: the representation's projection), then ``v' = (x_t − x̂0)/t`` (``x_t − t·v' = x̂0``; ``v' = v``
    wherever ``x̂0`` was in range). ``t > 0``.

    ``v``, ``x_t``: ``[B, ...]`` → ``[B, ...]``.
    """
    if not 0.0 < t <= 1.0:
        raise ValueError(f"t must be in (0, 1] to clip a velocity, got {t}")
    x0 = _clip(x_t - t * v, clip)
    return (x_t - x0) / t


def _check_flow_times(t: float, t_next: float) -> None:
    if not 0.0 <= t_next < t <= 1.0:
        raise ValueError(f"flow times must satisfy 0 <= t_next < t <= 1, got t={t}, t_next={t_next}")


def euler_step(v: Tensor, t: float, t_next: float, x_t: Tensor, *, clip: Clip = True) -> Tensor:
    """One Euler step of the flow ODE ``x_t → x_{t_next}``, ``t_next < t``:
    ``x_{t_next} = x_t + (t_next − t)·v`` with ``v`` the network's velocity at ``(x_t, t)``, clipped by
    :func:`clip_velocity` if ``clip`` (a step to ``t_next = 0`` then returns the clamped ``x̂0``).

    ``v``, ``x_t``: ``[B, ...]`` → ``[B, ...]``.
    """
    _check_flow_times(t, t_next)
    if clip is not False:
        v = clip_velocity(v, t, x_t, clip)
    return x_t + (t_next - t) * v


def heun_step(
    v: Tensor, v_next: Tensor, t: float, t_next: float, x_t: Tensor, x_euler: Tensor, *, clip: Clip = True
) -> Tensor:
    """Heun's corrector for ``x_t → x_{t_next}`` with ``0 < t_next < t`` (Karras et al. 2022, "Elucidating the
    Design Space of Diffusion-Based Generative Models", Algorithm 1: the trapezoidal rule with an Euler
    predictor):

    1. ``x_euler = euler_step(v, t, t_next, x_t)``, the predictor (the caller evaluated ``v`` at ``(x_t, t)``);
    2. ``v_next``: the network's velocity at ``(x_euler, t_next)``;
    3. ``x_{t_next} = x_t + (t_next − t)·(v + v_next)/2``.

    With ``clip``, ``v`` is clipped at ``(x_t, t)`` and ``v_next`` at ``(x_euler, t_next)``
    (:func:`clip_velocity`). ``v``, ``v_next``, ``x_t``, ``x_euler``: ``[B, ...]`` → ``[B, ...]``.
    """
    _check_flow_times(t, t_next)
    if t_next == 0.0:
        raise ValueError("the step to t = 0 is an Euler step: the corrector would need the velocity at t = 0")
    if clip is not False:
        v, v_next = clip_velocity(v, t, x_t, clip), clip_velocity(v_next, t_next, x_euler, clip)
    return x_t + (t_next - t) * 0.5 * (v + v_next)


def _randn(shape: tuple[int, ...], generators: Sequence[torch.Generator], device, dtype) -> Tensor:
    """``[B, *shape]`` standard normal noise, element ``b`` drawn on the CPU from ``generators[b]``.

    For a CUDA device the draws land in pinned memory and go over without blocking the host, so the host draws
    a step's noise while the GPU still runs the network (torch's pinned-memory allocator keeps the buffer until
    the copy is done)."""
    device = torch.device(device)
    pinned = device.type == "cuda"
    draws = torch.empty((len(generators), *shape), dtype=torch.float32, pin_memory=pinned)
    for b, g in enumerate(generators):
        torch.randn(shape, generator=g, dtype=torch.float32, out=draws[b])
    return draws.to(device=device, dtype=dtype, non_blocking=pinned)


@torch.no_grad()
def sample(
    model: nn.Module,
    s: Schedule,
    shape: tuple[int, ...],
    generators: Sequence[torch.Generator],
    *,
    sampler: str = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    objective: str = "eps",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
    clip: Clip = True,
) -> Tensor:
    """Draw ``B = len(generators)`` samples of per-sample ``shape`` (``(C, D, H, W)``) → ``[B, *shape]``.

    Every random number of element ``b`` (``x_T`` and each step's noise) comes from ``generators[b]``
    (CPU generators), so a sample depends on its generator alone, not on the rest of the batch, and sample
    ``b`` starts from the same noise whatever the sampler. ``steps=None`` means ``T`` steps
    (``s.timesteps``). ``objective`` is what the network predicts (``diffusion.objective``): ``eps`` and
    ``v`` take ddpm, ddim and dpmpp, called as ``model(x_t, t)`` with ``t`` ``[B]`` int64; ``flow`` takes
    euler and heun, called as ``model(x_t, t·T)`` with float32 times (:func:`ctdiff.diffusion.flow.network_time`);
    any other pairing is refused. ``x_t`` is passed in ``dtype``; the chain itself is kept in float32.
    ``clip`` is each step's clip of the predicted ``x0`` and of the result (``True``: the clamp to ``[-1, 1]``,
    the range the model was trained on; a callable for another representation, see the module docstring).
    Put the model in eval mode before calling.
    """
    if len(generators) == 0:
        raise ValueError("need at least one generator (one per sample)")
    check_sampler_fits(sampler, objective, where="")
    steps = s.timesteps if steps is None else steps
    network_evaluations(sampler, steps, s.timesteps)  # checks the sampler and the steps before any work
    state = torch.float32
    x = _randn(tuple(shape), generators, device, state)  # x_T (x_1 for flow) ~ N(0, I)
    batch = len(generators)
    if objective == "flow":
        grid = flow_time_grid(steps)

        def velocity(x_t: Tensor, t: float) -> Tensor:
            times = network_time(torch.full((batch,), t, dtype=torch.float64, device=device), s.timesteps)
            return model(x_t.to(dtype), times).to(state)

        for t, t_next in tqdm(list(zip(grid, grid[1:])), disable=not progress, desc=f"{sampler} sampling"):
            v = velocity(x, t)
            x_euler = euler_step(v, t, t_next, x, clip=clip)
            if sampler == "heun" and t_next > 0:
                x = heun_step(v, velocity(x_euler, t_next), t, t_next, x, x_euler, clip=clip)
            else:
                x = x_euler
        return _clip(x, clip if clip is not False else True)

    timesteps = timestep_sequence(sampler, steps, s.timesteps)
    x0_last, t_last = None, None  # DPM-Solver++(2M) history
    for i, t in enumerate(tqdm(timesteps, disable=not progress, desc=f"{sampler} sampling")):
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        eps = model(x.to(dtype), t_batch).to(state)
        if objective == "v":
            eps = eps_from_v(s, x, t_batch, eps)
        t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
        if sampler == "ddpm":
            noise = _randn(tuple(shape), generators, device, state) if t > 0 else None
            x = ddpm_step(s, eps, t, x, noise, clip=clip)
        elif sampler == "ddim":
            noise = _randn(tuple(shape), generators, device, state) if eta > 0 else None
            x = ddim_step(s, eps, t, t_prev, x, noise, eta=eta, clip=clip)
        else:
            x, x0_last = dpmpp_2m_step(s, eps, t, t_prev, x, x0_last, t_last, clip=clip)
            t_last = t
    return _clip(x, clip if clip is not False else True)
