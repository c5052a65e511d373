"""The orthonormal 3D Haar transform and the wavelet representation: against PyWavelets and a per-voxel
formula, exact inversion within a derived rounding bound, Parseval, the x0 projection, odd sizes refused.

Rounding bounds (u: unit roundoff, 2^-24 for float32; M = max|x|; c = 2^(-3/2)):
- forward: each coefficient is a depth-3 tree of additions over its 8 voxels (error <= γ_3 Σ|x| ≈ 3u Σ|x|),
  times the rounded constant c (<= u) with the product rounded (<= u): |ŷ − y| <= 5u · c · Σ|x| <= 5u · 8c · M.
- round trip: the exact inverse of the forward error adds at most 8c times it (40u M); the inverse's own
  rounding is again <= 5u · c · Σ|ŷ| <= 5u · 8c · 8c M = 40u M: |x' − x| <= 80u · M.
A factor 1.01 covers the second-order terms.
"""
import math

import numpy as np
import pytest
import torch

from ctdiff.config import Config, ModelConfig, PreprocessConfig, from_dict, to_dict
from ctdiff.model.representation import decode, encode, network_shape, project_wavelet, x0_clip
from ctdiff.model.wavelet import SUBBANDS, haar3d, ihaar3d

U32 = 2.0**-24
U64 = 2.0**-53
C = 2.0**-1.5


def _volumes(shape=(2, 3, 4, 6, 8), seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # Magnitudes over several binades, so rounding is not that of one exponent.
    return torch.randn(shape, generator=g) * torch.exp(2 * torch.randn(shape, generator=g))


def _per_voxel(x: np.ndarray) -> np.ndarray:
    """The module docstring's formula, voxel by voxel block: [C, D, H, W] → [8, C, D/2, H/2, W/2] (float64)."""
    c, d, h, w = x.shape
    out = np.zeros((8, c, d // 2, h // 2, w // 2))
    for band in range(8):
        i, j, k = (band >> 2) & 1, (band >> 1) & 1, band & 1
        for a in (0, 1):
            for b in (0, 1):
                for g in (0, 1):
                    sign = (-1) ** (i * a + j * b + k * g)
                    out[band] += sign * x[:, a::2, b::2, g::2]
    return out / (2 * math.sqrt(2))


def test_forward_matches_pywavelets_per_volume():
    pywt = pytest.importorskip("pywt")
    x = _volumes()
    y = haar3d(x)
    assert y.shape == (2, 24, 2, 3, 4)
    m = x.abs().amax().item()
    bound = 1.01 * 5 * U32 * 8 * C * m + 8 * U64 * 8 * C * m  # ours in float32; PyWavelets' float64 reference
    keys = ["".join("a" if s == "L" else "d" for s in band) for band in SUBBANDS]  # LLH → 'aad': D, H, W axes
    for b in range(2):
        for c in range(3):
            ref = pywt.dwtn(x[b, c].double().numpy(), "haar")
            for band, key in enumerate(keys):
                err = np.abs(y[b, band * 3 + c].double().numpy() - ref[key]).max()
                assert err <= bound, (b, c, SUBBANDS[band], err, bound)


def test_forward_matches_the_per_voxel_formula_and_lll_is_the_scaled_block_mean():
    x = _volumes(seed=1).double()
    y = haar3d(x).reshape(2, 8, 3, 2, 3, 4).numpy()  # sub-band-major channels
    m = x.abs().max().item()
    for b in range(2):
        np.testing.assert_allclose(y[b], _per_voxel(x[b].numpy()), rtol=0, atol=1.01 * 10 * U64 * 8 * C * m)
    means = x.reshape(2, 3, 2, 2, 3, 2, 4, 2).mean(dim=(3, 5, 7)).numpy()
    np.testing.assert_allclose(y[:, 0], 2 * math.sqrt(2) * means, rtol=1e-12)


def test_round_trip_within_the_rounding_bound_and_energy_is_kept():
    x = _volumes(seed=2)
    back = ihaar3d(haar3d(x))
    assert back.shape == x.shape and back.dtype == x.dtype
    m = x.abs().amax().item()
    assert (back - x).abs().max().item() <= 1.01 * 80 * U32 * m
    # Inverse of the forward, and forward of the inverse: the matrix is symmetric and orthogonal.
    y = _volumes((2, 16, 3, 2, 5), seed=3)
    assert (haar3d(ihaar3d(y)) - y).abs().max().item() <= 1.01 * 80 * U32 * y.abs().amax().item()
    # Parseval, in float64 (relative rounding of a sum of squares of ~150 terms, far below 1e-12).
    xd = x.double()
    assert torch.sum(haar3d(xd) ** 2).item() == pytest.approx(torch.sum(xd**2).item(), rel=1e-12)


def test_odd_sides_and_wrong_ranks_are_refused():
    with pytest.raises(ValueError, match=r"\(4, 5, 4\).*preprocess.size must be even"):
        haar3d(torch.zeros(1, 1, 4, 5, 4))
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        haar3d(torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="8 sub-bands"):
        ihaar3d(torch.zeros(1, 4, 2, 2, 2))


def test_config_refuses_sizes_the_wavelet_network_cannot_take():
    base = {"model": {"channels": [8, 16, 32], "groups": 4, "representation": "wavelet"},
            "preprocess": {"size": 15}, "sample": {"n": 4}, "evaluate": {"kid_subset_size": 2},
            "reader_study": {"n_cases": 8}}
    with pytest.raises(ValueError, match=r"preprocess.size=15 is odd.*model.representation: wavelet"):
        from_dict(base)
    # 20 suits the voxel network (divisible by 4), not the wavelet one, which runs at 10^3.
    base["preprocess"]["size"] = 20
    with pytest.raises(ValueError, match=r"preprocess.size=20 .*10\^3.*divisible by 4.*model.channels=\[8, 16, 32\]"):
        from_dict(base)
    base["model"]["representation"] = "voxels"
    assert from_dict(base).preprocess.size == 20
    assert Config().model.representation == "voxels"  # the paper


def test_projection_is_the_nearest_point_with_voxels_in_range():
    y = 2 * _volumes((3, 8, 2, 2, 2), seed=4).double()
    p = project_wavelet(y)
    v = ihaar3d(p)
    assert v.min() >= -1 - 1e-12 and v.max() <= 1 + 1e-12
    torch.testing.assert_close(project_wavelet(p), p, rtol=0, atol=1e-12)  # a projection
    # Its distance is that of the voxel clamp (an isometry), and no feasible point is nearer.
    dist = torch.linalg.vector_norm(y - p).item()
    assert dist == pytest.approx(torch.linalg.vector_norm(ihaar3d(y) - ihaar3d(y).clamp(-1, 1)).item(), rel=1e-12)
    g = torch.Generator().manual_seed(5)
    for _ in range(20):
        z = haar3d(torch.rand(3, 1, 4, 4, 4, generator=g, dtype=torch.float64) * 2 - 1)
        assert dist <= torch.linalg.vector_norm(y - z).item()
    # Clamping the coefficients instead would not keep LLL: a uniform volume at 0.9 has LLL = 0.9 · 2√2.
    flat = torch.full((1, 1, 2, 2, 2), 0.9, dtype=torch.float64)
    torch.testing.assert_close(project_wavelet(haar3d(flat)), haar3d(flat), rtol=0, atol=1e-12)


def test_representation_helpers():
    assert network_shape("voxels", 16) == (1, 16, 16, 16) and network_shape("wavelet", 16) == (8, 8, 8, 8)
    x = _volumes((1, 1, 4, 4, 4))
    assert encode(x, "voxels") is x and decode(x, "voxels") is x
    torch.testing.assert_close(decode(encode(x, "wavelet"), "wavelet"), x, rtol=0, atol=80.8 * U32 * x.abs().max())
    assert x0_clip("voxels")(torch.tensor([-3.0, 0.5, 2.0])).tolist() == [-1.0, 0.5, 1.0]
    with pytest.raises(ValueError, match="voxels, wavelet"):
        network_shape("pixels", 16)
    assert to_dict(ModelConfig(representation="wavelet"))["representation"] == "wavelet"
    with pytest.raises(ValueError, match="odd"):
        network_shape("wavelet", 9)
    assert PreprocessConfig().size % 2 == 0
