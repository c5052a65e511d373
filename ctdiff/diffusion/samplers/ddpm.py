"""DDPM ancestral sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models", Algorithm 2), the
paper's sampler: every timestep ``T−1, …, 0``, one network evaluation each, written through the predicted
``x0`` and the posterior of eq. 6–7.

``t`` is a plain int, tensors are ``[B, ...]`` (``[B, C, D, H, W]`` for volumes), and the step does no random
draws of its own: the noise is an argument.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ctdiff.diffusion.samplers.family import Chain, SamplerFamily, batch_t, check_t, clip_x0

if TYPE_CHECKING:
    from torch import Tensor

    from ctdiff.diffusion.samplers.family import Clip
    from ctdiff.diffusion.schedule import Schedule


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
    from ctdiff.diffusion.schedule import predict_x0, q_posterior  # torch, when a step runs (package docstring)

    check_t(s, t)
    tb = batch_t(t, x_t)
    x0 = predict_x0(s, x_t, tb, eps)
    x0 = clip_x0(x0, clip)
    mean, _, _ = q_posterior(s, x0, x_t, tb)
    if t == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step needs noise at t={t} > 0")
    return mean + math.sqrt(s.posterior_variance[t]) * noise


def grid(steps: int, timesteps: int) -> list[int]:
    """All of ``T−1, …, 0``, then ``−1`` (``steps`` is ``T``: :attr:`SamplerFamily.full_chain`)."""
    return list(range(timesteps - 1, -1, -1)) + [-1]


def step(chain: Chain, t: int, t_next: int, x: Tensor, memory: None) -> tuple[Tensor, None]:
    eps = chain.predict(x, t)
    noise = chain.noise() if t > 0 else None
    return ddpm_step(chain.schedule, eps, t, x, noise, clip=chain.clip), None


SAMPLER = SamplerFamily(
    name="ddpm",
    summary="ancestral sampling over all T steps (the paper)",
    objectives=("eps", "v"),
    grid=grid,
    evaluations=lambda steps: steps,
    step=step,
    full_chain=True,
)
