"""Self-describing checkpoints: weights, EMA, optimizer, step, config and package version in one file.

``load_for_sampling`` rebuilds the network from the file alone, so sampling needs no config.

Compatibility: a file must carry ``FORMAT`` and come from a compatible ctdiff release — the same major
version, and for 0.x releases the same minor version (a 0.x minor release may change the network's layout).
Anything else is refused with both versions named, never loaded loosely.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ctdiff import __version__
from ctdiff.diffusion.schedule import Schedule, make_schedule
from ctdiff.io import atomic_path
from ctdiff.model.unet import UNet3D

FORMAT = "ctdiff-checkpoint/1"


def build_model(model_cfg: dict[str, Any], *, grad_checkpointing: bool = False,
                recompute_norm: bool = False) -> UNet3D:
    """The residual 3D U-Net described by a ``model`` config section (a plain dict)."""
    return UNet3D(
        channels=tuple(model_cfg["channels"]),
        res_blocks=model_cfg["res_blocks"],
        attention=model_cfg["attention"],
        groups=model_cfg["groups"],
        grad_checkpointing=grad_checkpointing,
        recompute_norm=recompute_norm,
    )


def build_schedule(diffusion_cfg: dict[str, Any]) -> Schedule:
    """The noise schedule described by a ``diffusion`` config section (a plain dict)."""
    return make_schedule(
        timesteps=diffusion_cfg["timesteps"],
        beta_schedule=diffusion_cfg["beta_schedule"],
        beta_start=diffusion_cfg["beta_start"],
        beta_end=diffusion_cfg["beta_end"],
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


def load_for_sampling(path: Path, device: str | torch.device = "cpu") -> tuple[UNet3D, Schedule, dict[str, Any]]:
    """Rebuild the EMA network and the schedule from a checkpoint.

    Returns ``(model in eval mode on device, schedule, checkpoint metadata without tensors)``.
    """
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    model = build_model(cfg["model"])
    try:
        model.load_state_dict(ckpt["ema"], strict=True)
    except RuntimeError as err:
        raise ValueError(
            f"checkpoint {path} (ctdiff {ckpt['version']}) does not match its model config {cfg['model']}: {err}"
        ) from err
    model.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "rng")}
    return model, build_schedule(cfg["diffusion"]), meta
