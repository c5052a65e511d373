"""The samplers, one module per family, and :data:`FAMILIES`, the one place that lists them all.

Each module states every fact of its sampler in a :class:`~ctdiff.diffusion.samplers.family.SamplerFamily`
named ``SAMPLER`` (its name, the objectives it fits, its time grid, its network evaluations for ``n`` steps, its
limits and its step), beside the pure per-step update it is built on, the way diffusers gives each scheduler one
file:

- :mod:`~ctdiff.diffusion.samplers.ddpm`, :mod:`~ctdiff.diffusion.samplers.ddim`,
  :mod:`~ctdiff.diffusion.samplers.dpmpp`: eps and v networks, on integer timesteps of the noise schedule;
- :mod:`~ctdiff.diffusion.samplers.euler`, :mod:`~ctdiff.diffusion.samplers.heun`: flow networks, on flow
  times from 1 to 0.

Everything else derives from :data:`FAMILIES`: ``ctdiff.options`` (the ``sample.sampler`` values, the samplers
of each objective, the comparison tags), the config checks, the command line's choices and help, the
comparison's cost column (:func:`network_evaluations`), ``benchmarks/sample.py``'s rows, and the loop
:func:`ctdiff.diffusion.sampling.sample`, which calls the family's ``step``. The schema's two sampler ``enum``
lists are tested against it (``tests/test_sampler_families.py``). Adding a sampler is a module here, its entry
in :data:`FAMILIES`, its tests and its line in the README's samplers table.

The facts load at Snakefile parse time (``ctdiff.options`` and ``ctdiff.config`` read them), where torch and
numpy must not be imported (``tests/test_plan.py``): the modules here import them inside the functions that
compute, which run only when a volume is sampled.
"""

from __future__ import annotations

from ctdiff.diffusion.samplers import ddim, ddpm, dpmpp, euler, heun
from ctdiff.diffusion.samplers.ddim import ddim_step
from ctdiff.diffusion.samplers.ddpm import ddpm_step
from ctdiff.diffusion.samplers.dpmpp import dpmpp_2m_step
from ctdiff.diffusion.samplers.euler import clip_velocity, euler_step, flow_time_grid
from ctdiff.diffusion.samplers.family import Chain, SamplerFamily
from ctdiff.diffusion.samplers.heun import heun_step

#: Every sampler, in the order the schema, the command line and the comparison list them.
FAMILIES: tuple[SamplerFamily, ...] = (ddpm.SAMPLER, ddim.SAMPLER, dpmpp.SAMPLER, euler.SAMPLER, heun.SAMPLER)

__all__ = [
    "FAMILIES", "Chain", "SamplerFamily", "family", "network_evaluations", "timestep_sequence", "flow_time_grid",
    "ddpm_step", "ddim_step", "dpmpp_2m_step", "euler_step", "heun_step", "clip_velocity",
]


def family(name: str) -> SamplerFamily:
    """The family called ``name``; ``ValueError`` naming the samplers otherwise."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"sampler must be one of {tuple(f.name for f in FAMILIES)}, got {name!r}")


def _checked(sampler: str, steps: int, timesteps: int) -> SamplerFamily:
    """The family of ``sampler`` after checking ``steps`` against its limits with ``T = timesteps``."""
    f = family(sampler)
    most = f.max_steps(timesteps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= most:
        raise ValueError(f"steps must be an integer in [1, {most}] for {sampler} (T = {timesteps}), got {steps!r}")
    if f.full_chain and steps != timesteps:
        raise ValueError(f"the {sampler} sampler visits every timestep: steps must be {timesteps}, got {steps}")
    return f


def network_evaluations(sampler: str, steps: int | None, timesteps: int) -> int:
    """Network evaluations per volume of :func:`ctdiff.diffusion.sampling.sample` with ``sampler`` and
    ``steps`` (``None`` = ``T = timesteps``), the cost of a sampler on any machine: the family's
    ``evaluations`` (``steps`` for ddpm (``T``), ddim, dpmpp and euler; ``2·steps − 1`` for heun). Raises
    ``ValueError`` for an unknown sampler or steps outside its limits."""
    steps = timesteps if steps is None else steps
    return _checked(sampler, steps, timesteps).evaluations(steps)


def timestep_sequence(sampler: str, steps: int, T: int) -> list[int]:
    """The descending timesteps at which a sampler of eps and v networks evaluates the network: its grid
    without the final ``−1`` (``ddpm``: all of ``T−1, …, 0``; ``ddim``: ``steps`` evenly spaced values;
    ``dpmpp``: diffusers' default grid, without ``t = 0``; see each module's ``grid``)."""
    f = family(sampler)
    if "flow" in f.objectives:
        raise ValueError(f"{sampler} integrates the flow ODE on flow_time_grid(steps), not on DDPM timesteps")
    return _checked(sampler, steps, T).grid(steps, T)[:-1]
