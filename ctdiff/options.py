"""The closed option sets and the formats built from them, in one light module (no torch, no numpy).

Config, command line, samplers and workflow rules import these names instead of restating them; the
schema's ``enum`` lists are checked against them by ``tests/test_config.py``. Adding a sampler or a
precision starts here.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args

Sampler = Literal["ddpm", "ddim", "dpmpp"]
Precision = Literal["fp32", "bf16"]
TrainPrecision = Literal["fp32", "bf16", "auto"]  # auto: bf16 where it is measured faster (ctdiff.train)
Objective = Literal["eps"]
Representation = Literal["voxels", "wavelet"]  # what the U-Net denoises (ctdiff.model.representation)
BetaSchedule = Literal["linear"]
LrSchedule = Literal["constant", "cosine"]
Source = Literal["phantom", "dicom"]
SeriesChoice = Literal["largest", "all"]
Normalise = Literal["none", "zscore"]

SAMPLERS: tuple[str, ...] = get_args(Sampler)
PRECISIONS: tuple[str, ...] = get_args(Precision)
TRAIN_PRECISIONS: tuple[str, ...] = get_args(TrainPrecision)
OBJECTIVES: tuple[str, ...] = get_args(Objective)
REPRESENTATIONS: tuple[str, ...] = get_args(Representation)
BETA_SCHEDULES: tuple[str, ...] = get_args(BetaSchedule)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
SOURCES: tuple[str, ...] = get_args(Source)
SERIES_CHOICES: tuple[str, ...] = get_args(SeriesChoice)
NORMALISE: tuple[str, ...] = get_args(Normalise)

# Folder name of a resolved sampler setting in the sampler comparison: ``ddim-50``, ``dpmpp-25``,
# ``ddim-50-eta0.5``. TAG_REGEX is the Snakemake wildcard constraint for it; ``tag`` writes one.
TAG_REGEX = rf"({'|'.join(SAMPLERS)})-[0-9]+(-eta[0-9.e+-]+)?"


def tag(run: dict[str, Any]) -> str:
    """The folder name of a resolved setting ``{"sampler", "steps", "eta"}`` (steps an int, not None)."""
    name = f"{run['sampler']}-{run['steps']}" + (f"-eta{run['eta']:g}" if run["eta"] else "")
    if not re.fullmatch(TAG_REGEX, name):
        raise ValueError(f"sampler setting {run} gives the tag {name!r}, which TAG_REGEX does not match")
    return name
