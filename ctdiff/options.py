"""The closed option sets and the formats built from them, in one light module (no torch, no numpy).

Config, command line, samplers and workflow rules import these names instead of restating them; the
schema's ``enum`` lists are checked against them by ``tests/test_config.py``. Adding a precision starts here;
the samplers' names and facts come from :data:`ctdiff.diffusion.samplers.FAMILIES` (a module per sampler).
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

from ctdiff.diffusion.samplers import FAMILIES, family

# The sampler names, in the order of ctdiff.diffusion.samplers.FAMILIES (a Literal built from that tuple).
SAMPLERS: tuple[str, ...] = tuple(f.name for f in FAMILIES)
Sampler = Literal[SAMPLERS]  # type: ignore[valid-type]
Precision = Literal["fp32", "bf16"]
TrainPrecision = Literal["fp32", "bf16", "auto"]  # auto: bf16 where it is measured faster (ctdiff.training.loop)
Objective = Literal["eps", "v", "flow"]
FlowTime = Literal["logit_normal", "uniform"]  # how training draws the flow time t (diffusion.flow_t)
Representation = Literal["voxels", "wavelet"]  # what the U-Net denoises (ctdiff.model.representation)
BetaSchedule = Literal["linear", "cosine"]  # Ho et al. 2020 (the paper); Nichol & Dhariwal 2021
LrSchedule = Literal["constant", "cosine"]
Source = Literal["phantom", "dicom"]
SeriesChoice = Literal["largest", "all"]
Normalise = Literal["none", "zscore"]
Condition = Literal["none", "nodules"]  # what enters the U-Net beside x_t (ctdiff.model.condition)

PRECISIONS: tuple[str, ...] = get_args(Precision)
TRAIN_PRECISIONS: tuple[str, ...] = get_args(TrainPrecision)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
FLOW_TIMES: tuple[str, ...] = get_args(FlowTime)
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
SOURCES: tuple[str, ...] = get_args(Source)
SERIES_CHOICES: tuple[str, ...] = get_args(SeriesChoice)
NORMALISE: tuple[str, ...] = get_args(Normalise)
CONDITIONS: tuple[str, ...] = get_args(Condition)

# The samplers that fit each objective (each family's ``objectives``): ε- and v-prediction networks are sampled
# through the diffusion of the noise schedule (a v-prediction is turned into ε before each step); a flow
# network's velocity is integrated by the ODE solvers. A row of the variants table compares only the
# evaluate.compare_samplers entries that fit its variant's objective.
SAMPLERS_FOR: dict[str, tuple[str, ...]] = {o: tuple(f.name for f in FAMILIES if o in f.objectives) for o in OBJECTIVES}
# The samplers that use sample.eta (it must stay 0 for the others).
ETA_SAMPLERS: tuple[str, ...] = tuple(f.name for f in FAMILIES if f.takes_eta)


def check_sampler_fits(sampler: str, objective: str, *, key: str = "sample.sampler", where: str = "config: ") -> None:
    """Raise ``ValueError`` naming ``key`` (the sampler's config key) and ``diffusion.objective`` with the
    allowed values when ``sampler`` cannot sample a network trained with ``objective``; ``where`` begins the
    message (the config, or the checkpoint that records the objective)."""
    if objective not in SAMPLERS_FOR:
        raise ValueError(f"{where}diffusion.objective={objective!r} must be one of {', '.join(OBJECTIVES)}")
    if sampler not in SAMPLERS_FOR[objective]:
        fits = [o for o, samplers in SAMPLERS_FOR.items() if sampler in samplers]
        hint = f" (it samples {' and '.join(fits)} models)" if fits else ""
        raise ValueError(f"{where}{key}={sampler!r} cannot sample a diffusion.objective={objective!r} model{hint}; "
                         f"allowed samplers for {objective}: {', '.join(SAMPLERS_FOR[objective])}")


def check_guidance(guidance: float, conditioned: bool, *, masks: bool = False, where: str = "config: ") -> None:
    """Raise ``ValueError`` naming ``sample.guidance`` when the classifier-free guidance scale ``guidance`` is
    negative, or is not 1 (or nodule ``masks`` are given) for a model that is not ``conditioned``
    (``model.condition: none``): it has nothing to guide. ``where`` begins the message (the config, or the
    checkpoint that records the condition). Config checks, ``ctdiff.sampling.generate`` and
    ``ctdiff.model.condition.guided`` all ask here."""
    if guidance < 0:
        raise ValueError(f"{where}sample.guidance={guidance} must be >= 0")
    if not conditioned and (guidance != 1.0 or masks):
        asked = (f"sample.guidance={guidance} needs model.condition: nodules (guidance needs a conditioned model)"
                 if guidance != 1.0 else "nodule masks need model.condition: nodules")
        raise ValueError(f"{where}{asked}; with model.condition: none: it takes no nodule masks and no "
                         "sample.guidance (leave it 1)")


def max_steps(sampler: str, timesteps: int) -> int:
    """The most steps ``sampler`` takes with ``T = timesteps`` (its family's ``max_steps``): T, except
    DPM-Solver++, whose grid never evaluates the network at t = 0 and so holds at most the T − 1 timesteps
    1 … T − 1."""
    return family(sampler).max_steps(timesteps)


# Folder name of a resolved sampler setting in the sampler comparison: ``ddim-50``, ``dpmpp-25``,
# ``ddim-50-eta0.5``. TAG_REGEX is the Snakemake wildcard constraint for it; ``tag`` writes one.
TAG_REGEX = rf"({'|'.join(SAMPLERS)})-[0-9]+(-eta[0-9.e+-]+)?"


# The name of a model variant (config ``variants``) and of the main row (config ``name``): a folder name under
# ``{results}/models/``, so a letter or digit first, then letters, digits, ``_``, ``-`` or ``.``, at most 64.
NAME_REGEX = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"

# What a variant may override: whole sections the model is trained by, and the sample section's sampler
# setting and guidance (a variant with another objective needs its own sampler); count, seed and precision
# stay shared.
VARIANT_SECTIONS: tuple[str, ...] = ("model", "diffusion", "train", "sample")
VARIANT_SAMPLE_KEYS: tuple[str, ...] = ("sampler", "steps", "eta", "guidance")

def tag(run: dict[str, Any]) -> str:
    """The folder name of a resolved setting ``{"sampler", "steps", "eta"}`` (steps an int, not None)."""
    name = f"{run['sampler']}-{run['steps']}" + (f"-eta{run['eta']:g}" if run["eta"] else "")
    if not re.fullmatch(TAG_REGEX, name):
        raise ValueError(f"sampler setting {run} gives the tag {name!r}, which TAG_REGEX does not match")
    return name
