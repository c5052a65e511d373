"""The sampling loop: noise ``x_T`` from per-sample generators, then the sampler's steps along its grid.

Each sampler states its grid, its step and its limits in its own module (:mod:`ctdiff.diffusion.samplers`);
this loop is the same for all of them. The network is an argument: ``model(x_t, t)`` with ``t`` ``[B]`` int64
for eps and v networks (a ``v`` is turned into ``ε``, :func:`ctdiff.diffusion.schedule.eps_from_v`, so every
ε-sampler runs a v-model unchanged), ``model(x_t, t·T)`` with float32 times for flow networks
(:func:`ctdiff.diffusion.flow.network_time`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ctdiff.diffusion.flow import network_time
from ctdiff.diffusion.samplers import Chain, family, network_evaluations
from ctdiff.diffusion.samplers.family import clip_x0
from ctdiff.diffusion.schedule import Schedule, eps_from_v
from ctdiff.options import check_sampler_fits

if TYPE_CHECKING:
    from ctdiff.diffusion.samplers.family import Clip


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


def _prediction(model: nn.Module, s: Schedule, objective: str, batch: int, device, dtype: torch.dtype
                ) -> Callable[[Tensor, int | float], Tensor]:
    """``(x, t) → `` what the samplers of ``objective`` step with, in float32: ``ε`` for eps and v networks
    (called with ``t`` as ``[B]`` int64), the velocity for flow networks (called with ``t·T`` as float32)."""
    state = torch.float32
    if objective == "flow":

        def velocity(x_t: Tensor, t: float) -> Tensor:
            times = network_time(torch.full((batch,), t, dtype=torch.float64, device=device), s.timesteps)
            return model(x_t.to(dtype), times).to(state)

        return velocity

    def eps(x_t: Tensor, t: int) -> Tensor:
        t_batch = torch.full((batch,), t, dtype=torch.long, device=device)
        out = model(x_t.to(dtype), t_batch).to(state)
        return eps_from_v(s, x_t, t_batch, out) if objective == "v" else out

    return eps


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
    (``s.timesteps``). ``objective`` is what the network predicts (``diffusion.objective``); a sampler whose
    family does not fit it is refused (eps and v take ddpm, ddim and dpmpp; flow takes euler and heun).
    ``x_t`` is passed in ``dtype``; the chain itself is kept in float32. ``clip`` is each step's clip of the
    predicted ``x0`` and of the result (``True``: the clamp to ``[-1, 1]``, the range the model was trained on;
    a callable for another representation, :mod:`ctdiff.diffusion.samplers.family`). Put the model in eval
    mode before calling.
    """
    if len(generators) == 0:
        raise ValueError("need at least one generator (one per sample)")
    check_sampler_fits(sampler, objective, where="")
    steps = s.timesteps if steps is None else steps
    network_evaluations(sampler, steps, s.timesteps)  # checks the sampler and the steps before any work
    f = family(sampler)
    state = torch.float32
    x = _randn(tuple(shape), generators, device, state)  # x_T (x_1 for flow) ~ N(0, I)
    chain = Chain(schedule=s, predict=_prediction(model, s, objective, len(generators), device, dtype),
                  noise=lambda: _randn(tuple(shape), generators, device, state), eta=eta, clip=clip)
    grid = f.grid(steps, s.timesteps)
    memory = None  # what a multistep sampler keeps between steps
    for t, t_next in tqdm(list(zip(grid, grid[1:])), disable=not progress, desc=f"{sampler} sampling"):
        x, memory = f.step(chain, t, t_next, x, memory)
    return clip_x0(x, clip if clip is not False else True)
