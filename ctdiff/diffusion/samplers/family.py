"""What every sampler family states (:class:`SamplerFamily`), what its step is handed (:class:`Chain`), and the
clip of the predicted ``x0`` that every step applies.

Clipping: the predicted ``x0`` is clamped to the data range ``[-1, 1]``. ``clip`` is ``True`` (that clamp),
``False``, or a callable that maps ``x0`` onto the data range in the space the chain runs in: with
``model.representation: wavelet`` the data range holds in voxel space, and
:func:`ctdiff.model.representation.x0_clip` gives the projection. Each family says how it keeps its other
quantities consistent with the clipped ``x0`` (DDIM re-derives ``ε``, the flow steps the velocity).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: this package loads without torch (package docstring)
    from torch import Tensor

    from ctdiff.diffusion.schedule import Schedule

    Clip = bool | Callable[[Tensor], Tensor]


def clip_x0(x0: Tensor, clip: Clip) -> Tensor:
    """``x0`` clipped as ``clip`` says: ``True`` clamps to ``[-1, 1]``, ``False`` leaves it, a callable maps it."""
    if callable(clip):
        return clip(x0)
    return x0.clamp(-1.0, 1.0) if clip else x0


def every_timestep(timesteps: int) -> int:
    """The most steps of a sampler that may visit every timestep: ``T``."""
    return timesteps


@dataclass(frozen=True)
class Chain:
    """What one step of :func:`ctdiff.diffusion.sampling.sample` hands a family's ``step`` besides the state.

    ``predict(x, t)``: the network's prediction at ``x`` (``[B, ...]``, float32) and time ``t`` of the grid, as
    float32 ``[B, ...]``: ``ε`` for an eps or v network (a ``v`` turned into ``ε``), the velocity for a flow
    network. ``noise()``: fresh ``[B, ...]`` standard normal draws, sample ``b`` from its own generator (call it
    only when the step adds noise: every call advances the generators). ``eta``: ``sample.eta``.
    """

    schedule: Schedule
    predict: Callable[[Tensor, Any], Tensor]
    noise: Callable[[], Tensor]
    eta: float
    clip: Clip


@dataclass(frozen=True)
class SamplerFamily:
    """Every fact of one sampler, stated once (one module per family, listed in
    :data:`ctdiff.diffusion.samplers.FAMILIES`).

    - ``name``: the value of ``sample.sampler`` and ``--sampler``, the first part of a comparison tag;
    - ``summary``: what it is, in a few words (help texts);
    - ``objectives``: the ``diffusion.objective`` values whose networks it samples;
    - ``grid(steps, T)``: the ``steps + 1`` times the chain passes through, noise first; the network is
      evaluated at all but the last (integer timesteps ending in ``−1``, where ``ᾱ = 1``, for eps and v
      networks; flow times ending in ``0.0`` for flow networks);
    - ``evaluations(steps)``: network evaluations per volume for ``steps`` steps (what
      :func:`~ctdiff.diffusion.sampling.sample` calls the model, counted by the tests);
    - ``step(chain, t, t_next, x, memory)`` → ``(x_next, memory)``: one step from ``t`` to the next time of the
      grid (``memory`` starts as ``None``: what a multistep method keeps between steps);
    - limits: ``max_steps(T)`` (``max_steps_why`` says why, when it is not ``T``), ``full_chain`` (steps must be
      ``T``: the sampler visits every timestep), ``takes_eta`` (``sample.eta`` acts; it must stay 0 for the
      others);
    - ``typical_steps``: the steps it is measured with in ``benchmarks/sample.py`` (``None``: ``T``).
    """

    name: str
    summary: str
    objectives: tuple[str, ...]
    grid: Callable[[int, int], list]
    evaluations: Callable[[int], int]
    step: Callable[[Chain, Any, Any, Tensor, Any], tuple[Tensor, Any]]
    max_steps: Callable[[int], int] = every_timestep
    max_steps_why: str = "diffusion.timesteps"
    full_chain: bool = False
    takes_eta: bool = False
    typical_steps: int | None = None


# What the three samplers of eps and v networks share: the integer timestep as a checked int and as a tensor.


def check_t(s: Schedule, t: int) -> None:
    """``t`` is a timestep of ``s``: ``0 ≤ t < T``."""
    if not 0 <= t < s.timesteps:
        raise ValueError(f"t must be in [0, {s.timesteps - 1}], got {t}")


def batch_t(t: int, x: Tensor) -> Tensor:
    """The int ``t`` as a ``[B]`` int64 tensor on ``x``'s device."""
    import torch  # imported by the step that runs, not by the facts (package docstring)

    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
