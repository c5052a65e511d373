"""Self-describing checkpoints: weights, EMA, optimizer, step, config and package version in one file.

``load_for_sampling`` rebuilds the network from the file alone, so sampling needs no config.

On disk the config is plain dicts (``torch.load(weights_only=True)`` reads nothing else):
``{"model", "diffusion", "train", "data"}``, the first three as :func:`ctdiff.config.to_dict` writes the
sections and ``data`` as :class:`TrainingData`. :func:`checkpoint_config` turns them back into the typed
sections; a key this release does not know is refused, a key it added since takes its default.

Compatibility: a file must carry ``FORMAT`` and come from a compatible ctdiff release — the same major
version, and for 0.x releases the same minor version (a 0.x minor release may change the network's layout).
Anything else is refused with both versions named, never loaded loosely.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ctdiff import __version__
from ctdiff.config import (
    DiffusionConfig,
    ModelConfig,
    TrainConfig,
    check_network_size,
    dataclass_from_dict,
    section_from_dict,
)
from ctdiff.diffusion.schedule import Schedule, build_schedule
from ctdiff.files import atomic_path
from ctdiff.model import representation
from ctdiff.model.build import build_model
from ctdiff.model.condition import condition_channels
from ctdiff.model.unet import UNet3D

FORMAT = "ctdiff-checkpoint/1"


@dataclass(frozen=True)
class TrainingData:
    """What a checkpoint records about its training data, so samples match it without the config.

    ``size``: voxels per side; ``files``: the training volumes' file names; ``affine``: the first training
    volume's 4×4 affine (rows), whose orientation and spacing the samples get; ``spacing_mm`` and
    ``hu_window``: the preprocessing settings (``spacing_mm`` is None where the volumes were not resampled),
    the window being what turns samples back into HU.
    """

    size: int
    files: tuple[str, ...]
    affine: tuple[tuple[float, ...], ...]
    spacing_mm: float | None
    hu_window: tuple[float, float]


@dataclass(frozen=True)
class CheckpointConfig:
    """The typed sections a checkpoint records: how to rebuild the network and schedule, how it was
    trained, and what it was trained on."""

    model: ModelConfig
    diffusion: DiffusionConfig
    train: TrainConfig
    data: TrainingData


def checkpoint_config(raw: dict[str, Any]) -> CheckpointConfig:
    """The typed view of a checkpoint's ``config`` entry (plain dicts, lists for tuples).

    Every section is recorded whole by the training run that wrote it, so a missing key (a file of another
    release) or an unknown one raises ``ValueError`` naming it; nothing takes a default.
    """
    expected = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig, "data": TrainingData}
    for name, cls in expected.items():
        missing = sorted(set(cls.__dataclass_fields__) - set(raw[name]))
        if missing:
            raise ValueError(f"{name}.{missing[0]} is not recorded (a file of another release of ctdiff?)")
    data = dict(raw["data"])
    data["affine"] = tuple(tuple(row) for row in data["affine"])
    return CheckpointConfig(
        model=section_from_dict("model", raw["model"]),
        diffusion=section_from_dict("diffusion", raw["diffusion"]),
        train=section_from_dict("train", raw["train"]),
        data=dataclass_from_dict(TrainingData, data, "data", source="checkpoint"),
    )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write a checkpoint atomically, stamped with the format and package version."""
    payload = {"format": FORMAT, "version": __version__, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint; a missing, truncated or foreign file raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err}); is it truncated?") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path} is not a {FORMAT} file (found {found!r})")
    missing = [k for k in ("config", "ema", "step", "version") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}")
    if not compatible(str(ckpt["version"]), __version__):
        raise ValueError(
            f"checkpoint {path} was written by ctdiff {ckpt['version']}; this ctdiff {__version__} reads "
            f"checkpoints of ctdiff {_series(__version__)}.x only (sample with the release that trained it)"
        )
    return ckpt


def _series(version: str) -> str:
    major, minor = (version.split(".") + ["0"])[:2]
    return major if major != "0" else f"{major}.{minor}"


def compatible(written: str, running: str) -> bool:
    """Whether a checkpoint written by ctdiff ``written`` can be read by ctdiff ``running``."""
    return _series(written) == _series(running)


def load_for_sampling(path: Path, device: str | torch.device = "cpu") -> tuple[UNet3D, Schedule, CheckpointConfig]:
    """Rebuild the EMA network and the schedule from a checkpoint.

    Returns ``(model in eval mode on device, schedule, the checkpoint's typed config)``.
    """
    ckpt = read_checkpoint(path)
    try:
        cfg = checkpoint_config(ckpt["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {path} (ctdiff {ckpt['version']}) records an unreadable config: {err}") from err
    # model.representation is recorded with the model section; the weights and the volume size must agree with it.
    # The condition's channels (model.condition) follow x_t's, in the same representation.
    per = representation.channels(cfg.model.representation)
    want = per * (1 + condition_channels(cfg.model.condition))
    have = ckpt["ema"].get("conv_in.weight")
    if have is not None and have.shape[1] != want:
        raise ValueError(
            f"checkpoint {path} records model.representation: {cfg.model.representation} and model.condition: "
            f"{cfg.model.condition} ({want} input channels) but its weights take {have.shape[1]}: the file is "
            "inconsistent, it cannot be sampled"
        )
    try:
        check_network_size(cfg.data.size, tuple(cfg.model.channels), cfg.model.representation,
                           source=f"checkpoint {path}")
    except ValueError as err:
        raise ValueError(f"{err} (the size and model it records do not fit together)") from err
    model = build_model(cfg.model)
    try:
        model.load_state_dict(ckpt["ema"], strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} (ctdiff {ckpt['version']}) does not match its model config {cfg.model}: {err}"
        ) from err
    model.to(device).eval()
    return model, build_schedule(cfg.diffusion), cfg
