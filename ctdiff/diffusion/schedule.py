"""The forward (noising) process of a DDPM as precomputed float64 tables.

The schedule is plain data; every function that needs a network takes it as an argument, so the
schedule never lives inside an EMA copy or a ``state_dict`` and never needs moving between devices.

Notation (Ho et al. 2020, "Denoising Diffusion Probabilistic Models"; indices are 0-based here, so the
paper's step ``t`` is table row ``t - 1``):

- ``β_t``                      ``betas[t]``
- ``α_t = 1 − β_t``            ``alphas[t]``
- ``ᾱ_t = Π_{s≤t} α_s``       ``alphas_cumprod[t]``
- ``ᾱ_{t−1}`` (``ᾱ_{−1}=1``)   ``alphas_cumprod_prev[t]``
- ``β̃_t`` (eq. 7)              ``posterior_variance[t]``

Tensors are ``[B, ...]`` with any number of trailing axes (``[B, C, D, H, W]`` for CT volumes);
per-timestep scalars are broadcast with :func:`extract`, the one place that knows about shapes.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, fields

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from ctdiff.config import DiffusionConfig

from ctdiff.options import BETA_SCHEDULES


@dataclass(frozen=True, eq=False)
class Schedule:
    """Read-only float64 tables of length ``T`` indexed by the 0-based timestep ``t``.

    ``eq=False``: two schedules compare by identity (numpy arrays have no single truth value).
    """

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.betas)
        for f in fields(self):
            table = getattr(self, f.name)
            if not isinstance(table, np.ndarray) or table.dtype != np.float64 or table.shape != (n,):
                raise ValueError(f"Schedule.{f.name} must be a float64 array of shape ({n},)")
            table.setflags(write=False)

    @property
    def timesteps(self) -> int:
        """``T``, the number of diffusion steps."""
        return len(self.betas)


def _cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """Nichol & Dhariwal 2021, eq. 17: ``ᾱ(t) = f(t)/f(0)``, ``f(t) = cos²(π/2 · (t/T + s)/(1 + s))``."""
    steps = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], max_beta)


def make_schedule(
    timesteps: int = 1000,
    beta_schedule: str = "linear",
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Schedule:
    """Precompute every table of the forward process.

    ``linear``: ``β_t`` evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. 2020, Sec. 4; the
    paper reproduced here uses ``T = 1000``, ``1e-4 … 0.02``). ``cosine``: Nichol & Dhariwal 2021
    (``beta_start``/``beta_end`` are then unused).
    """
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 2:
        raise ValueError(f"timesteps must be an integer >= 2, got {timesteps!r}")
    if beta_schedule == "linear":
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    elif beta_schedule == "cosine":
        betas = _cosine_betas(timesteps)
    else:
        raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, got {beta_schedule!r}")

    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    # β̃_t = (1 − ᾱ_{t−1}) / (1 − ᾱ_t) · β_t  (eq. 7); zero at t = 0, where x_{−1} is x0 itself.
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    return Schedule(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        posterior_variance=posterior_variance,
        # log β̃_0 = −inf: repeat β̃_1 there, as improved-diffusion does (only used for likelihoods).
        posterior_log_variance_clipped=np.log(np.append(posterior_variance[1], posterior_variance[1:])),
        # μ̃_t(x_t, x0) = coef1 · x0 + coef2 · x_t  (eq. 7)
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


def extract(table: np.ndarray, t: Tensor, ndim: int) -> Tensor:
    """Gather ``table[t]`` and shape it to broadcast against a ``[B, ...]`` tensor of rank ``ndim``.

    ``table``: ``[T]`` float64; ``t``: ``[B]`` int64 → ``[B, 1, ..., 1]`` (``ndim`` axes), float32 on
    ``t``'s device.
    """
    if t.ndim != 1:
        raise ValueError(f"t must have shape [B], got {tuple(t.shape)}")
    values = _on_device(table, t.device)[t]  # indexing copies: the cached table is never written
    return values.reshape(t.shape[0], *([1] * (ndim - 1)))


#: ``(id(table), device) → (weak reference to the table, its float32 copy on the device)``.
_DEVICE_TABLES: dict[tuple[int, str], tuple[weakref.ref, Tensor]] = {}


def _on_device(table: np.ndarray, device: torch.device) -> Tensor:
    """``table`` as float32 on ``device``, copied there once per table and device: a copy per call would be a
    blocking host-to-device copy at every training and sampling step on a GPU. An entry goes when its table
    does (tables are read-only, so a cached copy never goes stale)."""
    key = (id(table), str(device))
    hit = _DEVICE_TABLES.get(key)
    if hit is not None and hit[0]() is table:
        return hit[1]
    values = torch.tensor(table, dtype=torch.float32, device=device)
    _DEVICE_TABLES[key] = (weakref.ref(table), values)
    weakref.finalize(table, _DEVICE_TABLES.pop, key, None)
    return values


def q_sample(s: Schedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """Draw ``x_t ~ q(x_t | x0)`` (Ho et al. eq. 4): ``x_t = √ᾱ_t · x0 + √(1 − ᾱ_t) · ε``.

    ``x0``, ``noise``: ``[B, ...]``; ``t``: ``[B]`` int64 → ``[B, ...]``.
    """
    return (
        extract(s.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior(s: Schedule, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, variance and clipped log-variance of ``q(x_{t−1} | x_t, x0)`` (Ho et al. eq. 6–7).

    ``x0``, ``x_t``: ``[B, ...]``; ``t``: ``[B]`` → mean ``[B, ...]``, variance and log-variance
    ``[B, 1, ..., 1]``.
    """
    mean = (
        extract(s.posterior_mean_coef1, t, x_t.ndim) * x0
        + extract(s.posterior_mean_coef2, t, x_t.ndim) * x_t
    )
    variance = extract(s.posterior_variance, t, x_t.ndim)
    log_variance = extract(s.posterior_log_variance_clipped, t, x_t.ndim)
    return mean, variance, log_variance


def predict_x0(s: Schedule, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """Invert eq. 4 for ``x0`` given the noise: ``x0 = (x_t − √(1 − ᾱ_t) · ε) / √ᾱ_t`` (Ho et al. eq. 15).

    ``x_t``, ``eps``: ``[B, ...]``; ``t``: ``[B]`` → ``[B, ...]``.
    """
    return (x_t - extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * eps) / extract(
        s.sqrt_alphas_cumprod, t, x_t.ndim
    )


def eps_from_x0(s: Schedule, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
    """Invert eq. 4 for the noise: ``ε = (x_t − √ᾱ_t · x0) / √(1 − ᾱ_t)``.

    ``x_t``, ``x0``: ``[B, ...]``; ``t``: ``[B]`` → ``[B, ...]``.
    """
    return (x_t - extract(s.sqrt_alphas_cumprod, t, x_t.ndim) * x0) / extract(
        s.sqrt_one_minus_alphas_cumprod, t, x_t.ndim
    )


def v_from_eps(s: Schedule, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
    """The v-prediction target ``v = √ᾱ_t · ε − √(1 − ᾱ_t) · x0`` (Salimans & Ho 2022, "Progressive
    Distillation", Sec. 4 and Appendix D, with ``α_t = √ᾱ_t``, ``σ_t = √(1 − ᾱ_t)``).

    ``x0``, ``eps``: ``[B, ...]``; ``t``: ``[B]`` → ``[B, ...]``.
    """
    return (
        extract(s.sqrt_alphas_cumprod, t, x0.ndim) * eps
        - extract(s.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0
    )


def eps_from_v(s: Schedule, x_t: Tensor, t: Tensor, v: Tensor) -> Tensor:
    """The noise a v-prediction implies, ``ε = √ᾱ_t · v + √(1 − ᾱ_t) · x_t`` (as ``ᾱ + (1 − ᾱ) = 1``):
    every ε-sampler runs a v-model unchanged.

    ``x_t``, ``v``: ``[B, ...]``; ``t``: ``[B]`` → ``[B, ...]``.
    """
    return (
        extract(s.sqrt_alphas_cumprod, t, x_t.ndim) * v
        + extract(s.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * x_t
    )


def training_loss(
    s: Schedule,
    model: nn.Module,
    x0: Tensor,
    *,
    objective: str = "eps",
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """The simplified objective (Ho et al. eq. 14, Algorithm 1), a scalar: the network's output against ε
    (``objective="eps"``, the paper) or against ``v`` (:func:`v_from_eps`, ``objective="v"``).

    ``x0``: ``[B, ...]`` data scaled to ``[-1, 1]``. ``t ~ U{0, …, T−1}`` (``[B]`` int64) and
    ``ε ~ N(0, I)`` (``x0``'s shape) are taken as given, or else drawn on ``generator``'s device (``x0``'s
    device when ``None``) and moved to ``x0``'s device; the model is called as ``model(x_t, t)``. The mean
    squared error is taken in float32.
    """
    if objective not in ("eps", "v"):
        raise ValueError(f"diffusion.objective={objective!r}: this loss trains eps or v "
                         "(flow: ctdiff.diffusion.flow.training_loss)")
    draw_device = generator.device if generator is not None else x0.device
    batch = x0.shape[0]
    if t is None:
        t = torch.randint(0, s.timesteps, (batch,), generator=generator, device=draw_device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=draw_device, dtype=x0.dtype)
    t, noise = t.to(x0.device), noise.to(device=x0.device, dtype=x0.dtype)
    out = model(q_sample(s, x0, t, noise), t)
    target = noise if objective == "eps" else v_from_eps(s, x0, t, noise)
    return F.mse_loss(out.float(), target.float())


def build_schedule(cfg: DiffusionConfig) -> Schedule:
    """The noise schedule described by a ``diffusion`` section."""
    return make_schedule(
        timesteps=cfg.timesteps,
        beta_schedule=cfg.beta_schedule,
        beta_start=cfg.beta_start,
        beta_end=cfg.beta_end,
    )
