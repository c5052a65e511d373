"""The network a ``model`` config section describes (training builds it fresh, sampling from a checkpoint's record)."""

from __future__ import annotations

from ctdiff.config import ModelConfig
from ctdiff.model import representation
from ctdiff.model.condition import condition_channels
from ctdiff.model.unet import UNet3D


def build_model(cfg: ModelConfig, *, grad_checkpointing: bool = False, recompute_norm: bool = False) -> UNet3D:
    """The residual 3D U-Net described by a ``model`` section (8 input channels for the wavelet representation;
    ``model.condition`` adds its channels, in the same representation)."""
    return UNet3D(
        channels=tuple(cfg.channels),
        res_blocks=cfg.res_blocks,
        attention=cfg.attention,
        in_channels=representation.channels(cfg.representation),
        groups=cfg.groups,
        cond_channels=condition_channels(cfg.condition) * representation.channels(cfg.representation),
        grad_checkpointing=grad_checkpointing,
        recompute_norm=recompute_norm,
    )
