"""3-D MS-SSIM against pytorch-msssim and an independent scipy implementation; both protocols."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_msssim import ms_ssim as library_ms_ssim
from scipy import ndimage

from ctdiff.metrics.msssim import (
    STANDARD_WEIGHTS,
    diversity_msssim,
    msssim,
    msssim_settings,
    paired_msssim,
)


def _smooth_volumes(n: int, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    """[n, *shape] float32 in [0, 1]: blurred noise, so that structure exists at several scales."""
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random((n, *shape)), sigma=(0, 2, 2, 2))
    v = (v - v.min()) / (v.max() - v.min())
    return v.astype(np.float32)


def _noisy(v: np.ndarray, scale: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(v + scale * rng.standard_normal(v.shape), 0, 1).astype(np.float32)


def _reference_msssim(x: np.ndarray, y: np.ndarray, window: int, weights: list[float]) -> float:
    """Eq. (1)-(2) of ctdiff.metrics.msssim in float64 with scipy; even sides only (plain 2× mean-pooling)."""
    sigma, r = 1.5, window // 2

    def blur(a):  # Gaussian of radius r, then keep only the 'valid' part
        b = ndimage.gaussian_filter(a, sigma, mode="constant", truncate=r / sigma)
        return b[r:-r, r:-r, r:-r]

    def pool(a):
        d, h, w = a.shape
        return a.reshape(d // 2, 2, h // 2, 2, w // 2, 2).mean(axis=(1, 3, 5))

    c1, c2 = 0.01**2, 0.03**2
    x, y = x.astype(np.float64), y.astype(np.float64)
    result = 1.0
    for level, w in enumerate(weights):
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        cs = (2 * cxy + c2) / (vx + vy + c2)
        if level < len(weights) - 1:
            result *= max(cs.mean(), 0.0) ** w
            x, y = pool(x), pool(y)
        else:
            ssim = ((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs).mean()
            result *= max(ssim, 0.0) ** w
    return result


def test_settings_at_paper_and_demo_sizes():
    assert msssim_settings(128) == (7, list(STANDARD_WEIGHTS))
    w32 = np.array(STANDARD_WEIGHTS[:3])
    window, weights = msssim_settings(32)
    assert window == 7 and np.allclose(weights, w32 / w32.sum())
    window, weights = msssim_settings(16)
    assert window == 7 and len(weights) == 2 and sum(weights) == pytest.approx(1.0)
    assert msssim_settings(97) == (7, list(STANDARD_WEIGHTS)) and len(msssim_settings(96)[1]) == 4
    assert msssim_settings(6) == (5, [1.0]) and msssim_settings(5) == (5, [1.0])
    assert msssim_settings(8, window=11) == (7, [1.0])
    with pytest.raises(ValueError, match="too small"):
        msssim_settings(2)
    with pytest.raises(ValueError, match="odd"):
        msssim_settings(64, window=6)


def test_identical_volumes_give_one():
    for shape in [(16, 16, 16), (32, 32, 32), (20, 17, 18)]:
        x = torch.from_numpy(_smooth_volumes(2, shape, 0)).unsqueeze(1)
        np.testing.assert_allclose(msssim(x, x.clone()).numpy(), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape, window", [((36, 34, 35), 3), ((100, 100, 100), 7)])
def test_matches_pytorch_msssim_where_it_applies(shape, window):
    """Five scales, odd sides along the way; (100³, 7) is the paper's window."""
    x = _smooth_volumes(1, shape, 1)
    y = _noisy(x, 0.1, 2)
    tx, ty = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).unsqueeze(1)
    expected = library_ms_ssim(tx, ty, data_range=1.0, size_average=False, win_size=window)
    got = msssim(tx, ty, window=window)
    assert len(msssim_settings(min(shape), window)[1]) == 5
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("size", [16, 32])
def test_matches_independent_scipy_reference(size):
    x = _smooth_volumes(2, (size,) * 3, 3)
    y = _noisy(x[::-1].copy(), 0.05, 4)  # pair different structures: values well inside (0, 1)
    window, weights = msssim_settings(size)
    got = msssim(torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).unsqueeze(1)).numpy()
    expected = [_reference_msssim(x[k], y[k], window, weights) for k in range(2)]
    assert 0.05 < min(expected) and max(expected) < 0.95
    # Tolerances from the conditioning, not from one machine: in float64 the two implementations agree to
    # ~1e-14, i.e. ~100 u64 (the variance μ(x²) − μ(x)² cancels); the same factor at float32's u32 = 2^-24
    # gives ~1e-5, whatever order the convolutions and means add in.
    in_float64 = msssim(torch.from_numpy(x).double().unsqueeze(1), torch.from_numpy(y).double().unsqueeze(1))
    np.testing.assert_allclose(in_float64.numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_paired_msssim_recovers_copies():
    real = _smooth_volumes(5, (16, 16, 16), 6)
    perm = np.array([3, 0, 4])
    out = paired_msssim(real[perm], real)
    assert out["nearest"] == perm.tolist() and out["n"] == 3
    np.testing.assert_allclose(out["values"], 1.0, atol=1e-5)
    assert out["mean"] == pytest.approx(1.0, abs=1e-5) and out["window"] == 7 and len(out["weights"]) == 2
    noisy = paired_msssim(_noisy(real[perm], 0.2, 7), real)
    assert noisy["nearest"] == perm.tolist() and noisy["mean"] < 0.99 and noisy["std"] > 0


def test_diversity_msssim_pairs_are_distinct_and_seeded():
    syn = _smooth_volumes(5, (16, 16, 16), 8)
    a = diversity_msssim(syn, n_pairs=6, seed=0)
    b = diversity_msssim(syn, n_pairs=6, seed=0)
    assert a["pairs"] == b["pairs"] and a["values"] == b["values"] and a["n_pairs"] == 6
    assert all(i < j for i, j in a["pairs"]) and len({tuple(p) for p in a["pairs"]}) == 6
    direct = msssim(torch.from_numpy(syn[[i for i, _ in a["pairs"]]]).unsqueeze(1),
                    torch.from_numpy(syn[[j for _, j in a["pairs"]]]).unsqueeze(1))
    assert a["mean"] == pytest.approx(float(direct.double().mean()), rel=1e-6)
    every = diversity_msssim(syn, n_pairs=10, seed=1)
    assert sorted(map(tuple, every["pairs"])) == [(i, j) for i in range(5) for j in range(i + 1, 5)]
    same = diversity_msssim(np.repeat(syn[:1], 3, axis=0), n_pairs=3, seed=0)
    assert same["mean"] == pytest.approx(1.0, abs=1e-5)  # identical samples: no diversity at all
    with pytest.raises(ValueError, match="1..10"):
        diversity_msssim(syn, n_pairs=11, seed=0)
