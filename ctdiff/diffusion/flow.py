"""The flow-matching objective (rectified flow): the straight path from data to noise, its velocity, how
training draws the time ``t``, the loss, and the timestep the network sees.

Notation (Liu et al. 2022, "Flow Straight and Fast"; Lipman et al. 2023, "Flow Matching for Generative
Modeling"; Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis"
(SD3), Sec. 2 and 3.1):

- ``x0``: data in ``[-1, 1]``; ``ε ~ N(0, I)``; ``t ∈ [0, 1]``, 0 = data, 1 = noise (the direction of the
  DDPM timesteps);
- ``x_t = (1 − t)·x0 + t·ε``                     the path (SD3's ``z_t = a_t x0 + b_t ε`` with
  ``a_t = 1 − t``, ``b_t = t``);
- ``v = dx_t/dt = ε − x0``                      the velocity the network learns (conditional flow matching,
  ``L = E‖v_θ(x_t, t) − (ε − x0)‖²``);
- ``x̂0 = x_t − t·v``, ``ε̂ = x_t + (1 − t)·v``   what a velocity implies about the endpoints.

Sampling integrates ``dx/dt = v_θ(x, t)`` from ``x_1 = ε`` at ``t = 1`` down to ``t = 0``
(:func:`ctdiff.diffusion.samplers.euler.euler_step`, :func:`ctdiff.diffusion.samplers.heun.heun_step`).

Time embedding: the network is called as ``model(x_t, t·T)`` with ``T = diffusion.timesteps`` (1000 by
default, :func:`network_time`), so the U-Net's sinusoidal embedding sees the numeric range of the DDPM
timesteps ``0 … T−1`` it was built for, as SD3 and diffusers' ``FlowMatchEulerDiscreteScheduler`` pass
``t·1000``. Tensors are ``[B, ...]`` (``[B, C, D, H, W]`` for volumes); ``t`` is ``[B]`` float.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ctdiff.options import FLOW_TIMES


def _per_sample(t: Tensor, ndim: int) -> Tensor:
    """``t`` ``[B]`` shaped ``[B, 1, ..., 1]`` to broadcast against a ``[B, ...]`` tensor of rank ``ndim``."""
    if t.ndim != 1:
        raise ValueError(f"t must have shape [B], got {tuple(t.shape)}")
    return t.reshape(t.shape[0], *([1] * (ndim - 1)))


def interpolate(x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """``x_t = (1 − t)·x0 + t·ε``.

    ``x0``, ``noise``: ``[B, ...]``; ``t``: ``[B]`` in ``[0, 1]`` → ``[B, ...]``.
    """
    tt = _per_sample(t, x0.ndim).to(x0.dtype)
    return (1.0 - tt) * x0 + tt * noise


def velocity(x0: Tensor, noise: Tensor) -> Tensor:
    """The target ``v = ε − x0``, the time derivative of :func:`interpolate` (the same for every ``t``)."""
    return noise - x0


def network_time(t: Tensor, timesteps: int) -> Tensor:
    """The timestep the network sees for flow time ``t`` ``[B]``: ``t·T`` as float32, in the range of the
    DDPM timesteps ``0 … T−1`` that the U-Net's time embedding was designed for (module docstring)."""
    return t.to(torch.float32) * float(timesteps)


def draw_t(
    n: int,
    distribution: str,
    *,
    location: float = 0.0,
    scale: float = 1.0,
    generator: torch.Generator | None = None,
    device: str | torch.device | None = None,
) -> Tensor:
    """``n`` training times ``[n]`` float32 in ``[0, 1)`` (``diffusion.flow_t``).

    ``uniform``: ``t ~ U[0, 1)`` (Liu et al. 2022). ``logit_normal``: ``t = sigmoid(location + scale·u)``,
    ``u ~ N(0, 1)`` (SD3 Sec. 3.1, "lognorm(m, s)"; density ``π(t) = φ((logit t − m)/s) / (s·t·(1 − t))``),
    which trains the middle of the path, where the velocity is hardest to predict, more often than its ends.
    Drawn on ``generator`` (its device, else ``device``).
    """
    device = generator.device if generator is not None else device
    if distribution == "uniform":
        return torch.rand(n, generator=generator, device=device)
    if distribution == "logit_normal":
        if not scale > 0:
            raise ValueError(f"diffusion.flow_t_scale={scale} must be > 0")
        return torch.sigmoid(location + scale * torch.randn(n, generator=generator, device=device))
    raise ValueError(f"diffusion.flow_t={distribution!r} must be one of {', '.join(FLOW_TIMES)}")


def training_loss(model: nn.Module, x0: Tensor, t: Tensor, noise: Tensor, timesteps: int) -> Tensor:
    """The conditional flow-matching loss, a scalar: ``mean ‖model(x_t, t·T) − (ε − x0)‖²``.

    ``x0``: ``[B, ...]`` data in ``[-1, 1]``; ``t``: ``[B]`` flow times (:func:`draw_t`); ``noise``: ``ε``,
    ``x0``'s shape; ``timesteps``: ``T`` of :func:`network_time`. The mean squared error is taken in float32.
    """
    t, noise = t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)
    v = model(interpolate(x0, t, noise), network_time(t, timesteps))
    return F.mse_loss(v.float(), velocity(x0, noise).float())
