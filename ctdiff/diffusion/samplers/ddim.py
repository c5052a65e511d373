"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models"): eq. 12 with σ from eq. 16, on ``steps``
timesteps evenly spaced from ``T−1`` to ``0``; ``eta`` 0 is deterministic, 1 DDPM-like. One network evaluation
per step.

Clipping: the clamped ``x0`` and the unclamped ``ε`` would disagree, and deterministic DDIM then returns
noise; so ``ε`` is re-derived from the clamped ``x0``. ``t`` is a plain int, tensors are ``[B, ...]``, and the
step does no random draws of its own: the noise is an argument.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ctdiff.diffusion.samplers.family import Chain, SamplerFamily, batch_t, check_t, clip_x0

if TYPE_CHECKING:
    from torch import Tensor

    from ctdiff.diffusion.samplers.family import Clip
    from ctdiff.diffusion.schedule import Schedule


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
    from ctdiff.diffusion.schedule import eps_from_x0, predict_x0  # torch, when a step runs (package docstring)

    check_t(s, t)
    if not -1 <= t_prev < t:
        raise ValueError(f"t_prev must be in [-1, {t - 1}] for t={t}, got {t_prev}")
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    tb = batch_t(t, x_t)
    x0 = predict_x0(s, x_t, tb, eps)
    if clip is not False:
        x0 = clip_x0(x0, clip)
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


def grid(steps: int, timesteps: int) -> list[int]:
    """``steps`` distinct timesteps evenly spaced from ``T−1`` down to ``0``, rounded (``steps = 1`` gives
    ``[T−1]``), then ``−1``: the step after ``t = 0`` lands on ``ᾱ = 1``."""
    import numpy as np  # when a chain is laid out, not when the facts load (package docstring)

    # Spacing (T−1)/(steps−1) >= 1, so the rounded values are distinct.
    return [int(v) for v in np.round(np.linspace(timesteps - 1, 0, steps))] + [-1]


def step(chain: Chain, t: int, t_next: int, x: Tensor, memory: None) -> tuple[Tensor, None]:
    eps = chain.predict(x, t)
    noise = chain.noise() if chain.eta > 0 else None
    return ddim_step(chain.schedule, eps, t, t_next, x, noise, eta=chain.eta, clip=chain.clip), None


SAMPLER = SamplerFamily(
    name="ddim",
    summary="DDIM (Song et al. 2021), eta 0 = deterministic",
    objectives=("eps", "v"),
    grid=grid,
    evaluations=lambda steps: steps,
    step=step,
    takes_eta=True,
    typical_steps=50,
)
