"""What a conditioned U-Net sees beside ``x_t`` (``model.condition``), and classifier-free guidance.

Encoding of a nodule mask (``model.condition: nodules``), two channels in [-1, 1] on the volume's grid:

1. the mask: +1 inside any nodule (label > 0), −1 outside;
2. the signed distance to the mask's boundary in millimetres (negative inside, positive outside, measured
   with the voxel spacing of the volume's affine), clipped to ±:data:`DISTANCE_CLIP_MM` and divided by it.

Why both: a 3 mm nodule on a 3 mm grid is one voxel of channel 1, which a 3³ input convolution sees in 27
output voxels only; the distance channel tells every voxel within 30 mm where the nearest nodule is and how
far, so the network can lay out the nodule's surroundings (the lung shell, vessels that run past it) from
the first layer on, and it carries the size of a nodule in the depth of its negative part. The clip at
30 mm (LIDC's largest nodules) keeps the channel local: voxels far from any nodule read +1.

The no-nodule encoding (−1, +1 everywhere) is what an empty mask gives, and what classifier-free guidance
replaces a condition by (``train.condition_dropout``): the unconditional branch is thus the model of a scan
without nodules mixed with the dropped examples, the form of guidance of Ho & Salimans (2022) with the null
token taken from the data itself, so no learned embedding is needed.

Guidance (Ho & Salimans 2022, eq. 6, on whatever the network predicts: ε, v or the flow velocity):
``out = uncond + w · (cond − uncond)``. ``w = 1`` is the plain conditional network and ``w = 0`` the
unconditional one, each one network evaluation per step; any other ``w`` runs the conditional and the
unconditional inputs as one doubled batch (the same network cost as two evaluations).

The condition is a separate set of input channels (``UNet3D(cond_channels=...)``, concatenated after
``x_t``), so it composes with the representation of ``x_t`` (``model.representation``): with ``wavelet`` the
two condition channels are Haar-transformed like the volume, into sixteen half-resolution sub-bands
(:func:`ctdiff.model.build.build_model` multiplies the channels, training and sampling transform the encoded
condition, dropout and the null condition included, after encoding it in voxels).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from ctdiff.options import CONDITIONS, check_guidance

#: Signed distances are clipped to ± this many millimetres before scaling to [-1, 1].
DISTANCE_CLIP_MM = 30.0

#: Version of :func:`encode_mask`'s output; cached encodings of another version are rebuilt.
ENCODING = "nodules-mask-sdf30/1"


def condition_channels(condition: str) -> int:
    """Input channels ``model.condition`` adds to the U-Net: 0 for none, 2 for nodules."""
    if condition == "none":
        return 0
    if condition == "nodules":
        return 2
    raise ValueError(f"model.condition={condition!r} must be one of {', '.join(CONDITIONS)}")


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel spacing (mm) along the array axes of a 4×4 affine: the lengths of its first three columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))


def encode_mask(labels: np.ndarray, spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """``labels`` ``[D, H, W]`` (0 = background, > 0 = a nodule) → ``[2, D, H, W]`` float32 (module docstring).

    The signed distance of a voxel is its Euclidean distance (in mm, ``spacing_mm`` per axis) to the nearest
    voxel of the other kind: outside, to the nearest nodule voxel (positive); inside, to the nearest
    background voxel (negative). An empty mask gives the no-nodule encoding.
    """
    inside = np.asarray(labels) > 0
    out = np.empty((2, *inside.shape), dtype=np.float32)
    out[0] = np.where(inside, 1.0, -1.0)
    if not inside.any():
        out[1] = 1.0
        return out
    outside_d = ndimage.distance_transform_edt(~inside, sampling=spacing_mm)
    inside_d = ndimage.distance_transform_edt(inside, sampling=spacing_mm)
    signed = np.where(inside, -inside_d, outside_d)
    out[1] = np.clip(signed / DISTANCE_CLIP_MM, -1.0, 1.0)
    return out


def null_condition(like: Tensor) -> Tensor:
    """The no-nodule encoding shaped and placed like ``like`` (``[B, 2, D, H, W]``): −1, then +1."""
    null = torch.ones_like(like)
    null[:, 0] = -1.0
    return null


def drop_conditions(cond: Tensor, dropped: Tensor) -> Tensor:
    """``cond`` ``[B, C, ...]`` with the rows where ``dropped`` (``[B]`` bool) is true replaced by the
    no-nodule encoding."""
    keep = (~dropped.to(cond.device)).view(-1, *([1] * (cond.ndim - 1)))
    return torch.where(keep, cond, null_condition(cond))


def copies_per_call(guidance: float) -> int:
    """How many copies of each volume one guided network call holds: 1 at guidance 0 or 1 (only the
    unconditional or only the conditional prediction is needed), 2 otherwise (both, as one doubled batch)."""
    return 1 if guidance in (0.0, 1.0) else 2


def guided(model, cond: Tensor | None, guidance: float = 1.0, null: Tensor | None = None):
    """``model(x, t, cond)`` as the samplers call a network, ``(x, t) → out``, with classifier-free guidance
    of scale ``guidance`` (module docstring); ``cond`` ``[B, C, D, H, W]`` or None for an unconditional
    model (then ``guidance`` must be 1: there is nothing to guide). ``null`` is the no-nodule condition in
    ``cond``'s representation (default :func:`null_condition`, right for voxels; the wavelet representation
    passes the transform of the voxel one). Both are cast to ``x``'s dtype."""
    check_guidance(guidance, cond is not None, where="")
    if cond is None:
        return model
    null = null_condition(cond) if null is None else null

    def forward(x: Tensor, t: Tensor) -> Tensor:
        if copies_per_call(guidance) == 1:
            return model(x, t, (cond if guidance == 1.0 else null).to(x.dtype))
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null]).to(x.dtype))
        out, uncond = both.chunk(2)
        return uncond + guidance * (out - uncond)

    return forward


__all__ = ["DISTANCE_CLIP_MM", "ENCODING", "condition_channels", "spacing_of", "encode_mask", "null_condition",
           "drop_conditions", "copies_per_call", "guided"]
