"""What the diffusion runs on (``model.representation``) and how to get there from voxels and back.

``voxels`` (the paper): the volume itself, ``[B, 1, S, S, S]`` in ``[-1, 1]``. ``wavelet``: its orthonormal
3D Haar transform (:mod:`ctdiff.model.wavelet`), ``[B, 8, S/2, S/2, S/2]``, LLL first; the U-Net then has 8
input and output channels and runs at half resolution per axis. Training encodes each batch's ``x0`` and draws
its noise in the encoded shape; sampling draws ``x_T`` in that shape and decodes the final ``x0``.

The data range ``[-1, 1]`` holds in voxel space. :func:`x0_clip` is the sampler's clip of a predicted
``x0``: a clamp for voxels; for wavelets inverse transform → clamp → forward transform, which, the transform
being orthonormal, is the exact Euclidean projection onto the coefficients whose voxels lie in ``[-1, 1]``.
(WDM-3D clips the same way, but also divides LLL by 3; see docs/facts.md.)
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from ctdiff.model.wavelet import haar3d, ihaar3d
from ctdiff.options import REPRESENTATIONS


def _known(representation: str) -> None:
    if representation not in REPRESENTATIONS:
        raise ValueError(f"model.representation={representation!r} must be one of {', '.join(REPRESENTATIONS)}")


def channels(representation: str) -> int:
    """Input (and output) channels of the U-Net: 1 for voxels, 8 Haar sub-bands for wavelets."""
    _known(representation)
    return 8 if representation == "wavelet" else 1


def network_shape(representation: str, size: int) -> tuple[int, int, int, int]:
    """Per-sample shape ``(C, D, H, W)`` the diffusion runs on for ``size``³ volumes."""
    side = size // 2 if representation == "wavelet" else size
    if representation == "wavelet" and size % 2:
        raise ValueError(f"preprocess.size={size} is odd: model.representation: wavelet needs it even")
    return (channels(representation), side, side, side)


def encode(x: Tensor, representation: str) -> Tensor:
    """Voxels ``[B, 1, S, S, S]`` → the diffusion's space (the same tensor for ``voxels``)."""
    _known(representation)
    return haar3d(x) if representation == "wavelet" else x


def decode(y: Tensor, representation: str) -> Tensor:
    """The diffusion's space → voxels ``[B, 1, S, S, S]`` (the same tensor for ``voxels``)."""
    _known(representation)
    return ihaar3d(y) if representation == "wavelet" else y


def clamp_voxels(x: Tensor) -> Tensor:
    """Clamp to the data range ``[-1, 1]``."""
    return x.clamp(-1.0, 1.0)


def project_wavelet(y: Tensor) -> Tensor:
    """The nearest (Euclidean) Haar coefficients whose voxels lie in ``[-1, 1]``: inverse, clamp, forward."""
    return haar3d(ihaar3d(y).clamp(-1.0, 1.0))


def x0_clip(representation: str) -> Callable[[Tensor], Tensor]:
    """The samplers' clip of a predicted ``x0`` in the diffusion's space (see the module docstring)."""
    _known(representation)
    return project_wavelet if representation == "wavelet" else clamp_voxels
