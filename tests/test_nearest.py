"""Nearest-volume search: against scipy's float64 cdist within the rounding bound, exact copies at exactly 0,
and ties (a duplicated reference) to the lowest index whatever the block and chunk sizes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from ctdiff.metrics.nearest import expansion_bound, nearest_l2, nearest_over_chunks, nearest_real


def _brute(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(argmin, min) of scipy's float64 Euclidean distances over flattened volumes."""
    flat = [v.reshape(len(v), -1).astype(np.float64) for v in (query, reference)]
    d = cdist(*flat)
    return d.argmin(1), d.min(1)


def _rtol(volume_shape: tuple[int, ...]) -> float:
    """Both sides sum n rounded non-negative squares: each D within γ_{n+2} of the exact square, so the
    two distances (square roots, rounded) agree within γ_{n+3} relative."""
    return expansion_bound(int(np.prod(volume_shape)))


def test_nearest_l2_distances_against_cdist():
    rng = np.random.default_rng(0)
    ref = rng.random((9, 5, 6, 4)).astype(np.float32)
    query = rng.random((7, 5, 6, 4)).astype(np.float32)
    query[0] = ref[3]  # an exact copy: distance exactly 0, not a tiny negative, positive or NaN
    query[1] = ref[5] + 0.01
    idx, dist = _brute(query, ref)
    for block in (1, 3, 64):
        i, d = nearest_l2(query, ref, block=block)
        np.testing.assert_array_equal(i, idx)
        np.testing.assert_allclose(d, dist, rtol=_rtol(ref.shape[1:]), atol=0)
    i, d = nearest_l2(torch.from_numpy(query), torch.from_numpy(ref))
    assert i[0] == 3 and d[0] == 0.0 and np.isfinite(d).all()
    assert d[1] == pytest.approx(0.01 * np.sqrt(5 * 6 * 4), rel=1e-4)  # 0.01 is rounded to float32 per voxel
    with pytest.raises(ValueError, match="block"):
        nearest_l2(query, ref, block=0)
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_l2(query, ref[:, :4])


def test_chunked_reference_equals_one_search():
    rng = np.random.default_rng(1)
    ref = rng.random((10, 4, 4, 4))
    ref[7] = ref[2]  # a tie across chunks goes to the lowest index, as in one search
    q1, q2 = rng.random((5, 4, 4, 4)), rng.random((3, 4, 4, 4))
    q1[4] = ref[2]
    one = [nearest_l2(q, ref, block=2) for q in (q1, q2)]
    for size in (1, 3, 7, 10):
        chunks = (ref[i : i + size] for i in range(0, len(ref), size))
        got = nearest_over_chunks([q1, q2], chunks, block=2)
        for (i, d), (i1, d1), q in zip(got, one, (q1, q2)):
            idx, dist = _brute(q, ref)
            np.testing.assert_array_equal(i, idx)
            np.testing.assert_allclose(d, dist, rtol=_rtol(ref.shape[1:]), atol=0)
            np.testing.assert_array_equal(i, i1)
            np.testing.assert_array_equal(d, d1)  # the same sums, whatever the chunks
        assert got[0][0][4] == 2 and got[0][1][4] == 0.0
    with pytest.raises(ValueError, match="no reference"):
        nearest_over_chunks([q1], iter([]))


def test_duplicated_reference_goes_to_the_lowest_index_at_any_block_and_chunk():
    """A patient scanned twice: the two copies' expanded distances can differ by ~1e-12 and used to pick the
    second copy depending on the block size and the CPU's matrix-product kernel."""
    rng = np.random.default_rng(0)
    real = rng.random((23, 20, 18, 14)).astype(np.float32)
    real[17] = real[5]
    query = (real[5] + 0.01 * rng.standard_normal((8, 20, 18, 14))).astype(np.float32)
    query[0] = real[5]
    expected = nearest_l2(query, real)
    assert (expected[0] == 5).all() and expected[1][0] == 0.0
    for block in (1, 2, 3, 5, 7, 64):
        i, d = nearest_l2(query, real, block=block)
        np.testing.assert_array_equal(i, expected[0])
        np.testing.assert_array_equal(d, expected[1])
    for size in (1, 4, 5, 6, 17, 18, 23):
        for block in (3, 64):
            chunks = [real[k : k + size] for k in range(0, len(real), size)]
            ((i, d),) = nearest_over_chunks([query], chunks, block=block)
            np.testing.assert_array_equal(i, expected[0])
            np.testing.assert_array_equal(d, expected[1])
    _, dist = _brute(query, real)
    np.testing.assert_allclose(expected[1], dist, rtol=_rtol(real.shape[1:]), atol=0)


def test_non_finite_volumes_are_refused_by_position():
    ref = np.zeros((3, 2, 2, 2))
    query = np.ones((2, 2, 2, 2))
    ref[1, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="query volume 0 or reference volume 1 holds NaN or infinite"):
        nearest_l2(query, ref)


def test_nearest_real_against_brute_force():
    rng = np.random.default_rng(5)
    real = rng.random((13, 6, 5, 4)).astype(np.float32)
    syn = rng.random((11, 6, 5, 4)).astype(np.float32)
    syn[:4] = real[[7, 2, 12, 2]] + 1e-3 * rng.standard_normal((4, 6, 5, 4)).astype(np.float32)
    brute = np.array([np.argmin([np.sum((s.astype(np.float64) - r) ** 2) for r in real]) for s in syn])
    for block in (1, 4, 64):
        np.testing.assert_array_equal(nearest_real(syn, real, block=block), brute)
    np.testing.assert_array_equal(nearest_real(torch.from_numpy(syn), torch.from_numpy(real)), brute)
    assert list(brute[:4]) == [7, 2, 12, 2]
    with pytest.raises(ValueError, match="differ in shape"):
        nearest_real(syn, real[:, :5])
