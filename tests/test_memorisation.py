"""Memorisation audit: nearest-training-volume distances against brute force, and the near-copy rule."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ctdiff.metrics.memorisation import audit, nearest_over_chunks
from ctdiff.metrics.msssim import nearest_l2


def _brute(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.array([[np.sqrt(np.sum((q.astype(np.float64) - r.astype(np.float64)) ** 2)) for r in reference]
                  for q in query])
    return d.argmin(1), d.min(1)


def test_nearest_l2_distances_against_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.random((9, 5, 6, 4)).astype(np.float32)
    query = rng.random((7, 5, 6, 4)).astype(np.float32)
    query[0] = ref[3]  # an exact copy: distance 0, not a tiny negative or NaN
    query[1] = ref[5] + 0.01
    idx, dist = _brute(query, ref)
    for block in (1, 3, 64):
        i, d = nearest_l2(query, ref, block=block)
        np.testing.assert_array_equal(i, idx)
        np.testing.assert_allclose(d, dist, rtol=1e-10, atol=1e-6)
    i, d = nearest_l2(torch.from_numpy(query), torch.from_numpy(ref))
    assert i[0] == 3 and d[0] == pytest.approx(0.0, abs=1e-6) and np.isfinite(d).all()
    assert d[1] == pytest.approx(0.01 * np.sqrt(5 * 6 * 4), rel=1e-4)
    with pytest.raises(ValueError, match="block"):
        nearest_l2(query, ref, block=0)


def test_chunked_reference_equals_one_search():
    rng = np.random.default_rng(1)
    ref = rng.random((10, 4, 4, 4))
    ref[7] = ref[2]  # a tie across chunks goes to the lowest index, as in one search
    q1, q2 = rng.random((5, 4, 4, 4)), rng.random((3, 4, 4, 4))
    q1[4] = ref[2]
    for size in (1, 3, 10):
        chunks = (ref[i : i + size] for i in range(0, len(ref), size))
        got = nearest_over_chunks([q1, q2], chunks, block=2)
        for (i, d), q in zip(got, (q1, q2)):
            idx, dist = _brute(q, ref)
            np.testing.assert_array_equal(i, idx)
            np.testing.assert_allclose(d, dist, rtol=1e-10, atol=1e-7)
        assert got[0][0][4] == 2
    with pytest.raises(ValueError, match="no reference"):
        nearest_over_chunks([q1], iter([]))


def test_exact_copy_is_flagged_and_others_are_not():
    rng = np.random.default_rng(2)
    train = rng.random((6, 6, 6, 6))
    test = rng.random((4, 6, 6, 6))
    syn = rng.random((5, 6, 6, 6))
    syn[3] = train[4]
    (s_near, t_near) = nearest_over_chunks([syn, test], [train[:4], train[4:]])
    result = audit([f"s{k}" for k in range(5)], s_near, [f"t{k}" for k in range(4)], t_near,
                   [f"train{k}" for k in range(6)], n_closest=2)
    assert result["flagged"] == ["s3"] and result["n_flagged"] == 1
    flags = [p["flagged"] for p in result["per_sample"]]
    assert flags == [False, False, False, True, False]
    copy = result["per_sample"][3]
    assert copy["nearest_train"] == "train4" and copy["distance"] == pytest.approx(0.0, abs=1e-6)
    assert copy["test_percentile"] == 0.0
    ref = result["test_to_train"]
    assert ref["n"] == 4 and result["threshold"] == ref["min"] > 0
    assert ref["min"] <= ref["p05"] <= ref["median"] <= ref["max"]
    assert [p["test"] for p in ref["per_sample"]] == ["t0", "t1", "t2", "t3"]
    assert result["closest_pairs"][0] == {"synthetic": "s3", "train": "train4", "distance": copy["distance"]}
    assert len(result["closest_pairs"]) == 2
    assert "minimum test-to-train" in result["rule"]
