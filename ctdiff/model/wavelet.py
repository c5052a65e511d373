"""The orthonormal one-level 3D Haar transform: ``[B, C, D, H, W]`` ↔ ``[B, 8C, D/2, H/2, W/2]``.

Per axis, a pair of neighbouring voxels ``(a, b)`` (``a`` at the even index) becomes a low-pass
coefficient ``L = (a + b)/√2`` and a high-pass one ``H = (a − b)/√2``; applied along D, H and W, each
``2×2×2`` block of voxels becomes 8 coefficients, one per sub-band. With the block's voxels
``x[2p+α, 2q+β, 2r+γ]`` (``α, β, γ ∈ {0, 1}``) and the sub-band's letters ``(i, j, k)`` for D, H, W
(0 = L, 1 = H):

    y_{ijk}[p, q, r] = 2^(−3/2) · Σ_{α,β,γ} (−1)^(iα + jβ + kγ) · x[2p+α, 2q+β, 2r+γ]

The 8×8 matrix of signs divided by 2√2 is orthogonal and symmetric, so the inverse is the same formula applied
to the coefficients, and the transform keeps Euclidean norms (Parseval): noise ``N(0, I)`` stays ``N(0, I)``,
and clamping in voxel space between an inverse and a forward transform is the exact Euclidean projection of
the coefficients onto the set whose voxels lie in ``[-1, 1]``. The sub-band with the letters of PyWavelets'
``dwtn`` keys (``a`` = L, ``d`` = H, axis order D, H, W) is the same coefficient array.

Channel layout: sub-band-major, ``band · C + c``, bands in the binary order of ``(i, j, k)``:
``LLL, LLH, LHL, LHH, HLL, HLH, HHL, HHH`` (``SUBBANDS``), so the first ``C`` channels are the low-pass
``LLL`` (the 2×2×2 block sums scaled by ``1/(2√2)``, i.e. ``2√2`` times the block means).

Rounding: each coefficient is three rounds of additions (one per axis) and one multiplication by the
rounded ``2^(−3/2)``, so its error is at most ``5u · 2^(−3/2) Σ|x|`` (``u`` the unit roundoff) and a round
trip returns ``x`` within ``80u · max|x|`` (``tests/test_wavelet.py`` derives and checks both).
"""

from __future__ import annotations

import torch
from torch import Tensor

SUBBANDS = ("LLL", "LLH", "LHL", "LHH", "HLL", "HLH", "HHL", "HHH")
_SCALE = 2.0**-1.5  # 1/(2√2): the three axes' 1/√2


def _check(x: Tensor, what: str) -> None:
    if x.ndim != 5:
        raise ValueError(f"{what}: expected a [B, C, D, H, W] tensor, got shape {tuple(x.shape)}")


def _butterflies(y: Tensor, axes: tuple[int, int, int]) -> Tensor:
    """``(a, b) → (a + b, a − b)`` along each of ``axes`` (each of length 2), unscaled."""
    for axis in axes:
        a, b = y.unbind(axis)
        y = torch.stack((a + b, a - b), axis)
    return y


def haar3d(x: Tensor) -> Tensor:
    """Forward transform: ``x [B, C, D, H, W]`` with D, H, W even → ``[B, 8C, D/2, H/2, W/2]``
    (sub-band-major, ``LLL`` first; see the module docstring).

    An odd side is refused with ``ValueError``: the workflow's volumes are ``preprocess.size`` per side, which
    ``model.representation: wavelet`` needs even.
    """
    _check(x, "haar3d")
    b, c, d, h, w = x.shape
    if d % 2 or h % 2 or w % 2:
        raise ValueError(f"the 3D Haar transform halves every axis: spatial size {(d, h, w)} has an odd side "
                         "(with model.representation: wavelet, preprocess.size must be even)")
    # [B, C, D/2, 2, H/2, 2, W/2, 2] → [B, 2, 2, 2, C, D/2, H/2, W/2]: the position in each block in front.
    y = x.reshape(b, c, d // 2, 2, h // 2, 2, w // 2, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
    y = _butterflies(y, (1, 2, 3)) * _SCALE
    return y.reshape(b, 8 * c, d // 2, h // 2, w // 2)


def ihaar3d(y: Tensor) -> Tensor:
    """Inverse transform: ``y [B, 8C, D, H, W]`` (sub-band-major, ``LLL`` first) → ``[B, C, 2D, 2H, 2W]``."""
    _check(y, "ihaar3d")
    b, c8, d, h, w = y.shape
    if c8 % 8:
        raise ValueError(f"ihaar3d: {c8} channels are not 8 sub-bands of whole channels")
    c = c8 // 8
    x = _butterflies(y.reshape(b, 2, 2, 2, c, d, h, w), (1, 2, 3)) * _SCALE
    # [B, 2, 2, 2, C, D, H, W] → [B, C, D, 2, H, 2, W, 2]: each block's voxels back in place.
    return x.permute(0, 4, 5, 1, 6, 2, 7, 3).reshape(b, c, 2 * d, 2 * h, 2 * w)
