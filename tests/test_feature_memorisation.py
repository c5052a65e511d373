"""Memorisation in feature space: the near-copy rule on constructed feature vectors (so which volume is flagged
is known by construction), the vector search against brute force, and the training features taken from the
chunks the voxel audit reads. The end-to-end check through evaluate() is in test_evaluate.py."""

from __future__ import annotations

import numpy as np
import pytest

from ctdiff.metrics.feature_memorisation import FEATURE_DISTANCE, feature_audit, features_while_reading
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.memorisation import audit
from ctdiff.metrics.nearest import nearest_l2, nearest_over_chunks, nearest_rows

NETWORK = {"depth": 10, "pretrained": False, "normalise": "none"}


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{k}" for k in range(n)]


def test_shifted_copy_is_flagged_in_features_but_not_in_voxels():
    """A training volume rolled by 3 voxels: far from every training volume voxel by voxel, but (as the pooled
    features of a convolutional network make it) next to its source in feature space. The features are
    constructed so: the shifted copy's are its source's plus 1e-9, the held-out volumes' lie 0.5 or more
    from the training features, the other synthetic volumes' 0.9 or more."""
    rng = np.random.default_rng(0)
    train = rng.random((5, 8, 8, 8))
    test = np.clip(train[[0, 2, 4]] + rng.normal(0, 0.02, (3, 8, 8, 8)), 0, 1)  # near the training set in voxels
    syn = rng.random((4, 8, 8, 8))
    syn[1] = np.roll(train[3], 3, axis=0)  # the shifted copy
    syn[2] = train[1]  # an exact copy
    s_near, t_near = nearest_over_chunks([syn, test], [train[:2], train[2:]])
    voxels = audit(_names("s", 4), s_near, _names("r", 3), t_near, _names("T", 5))
    assert voxels["flagged"] == ["s2"]  # the exact copy only: the shift hides s1

    f_train = rng.normal(size=(5, 16))
    directions = rng.normal(size=(7, 16))
    unit = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    f_test = f_train[[0, 2, 4]] + unit[:3] * np.array([[0.5], [0.7], [0.6]])
    f_syn = np.stack([f_train[0] + 0.9 * unit[3], f_train[3] + 1e-9 * unit[4], f_train[1],
                      f_train[2] + 1.2 * unit[5]])
    # Each constructed point is nearest to the training vector it was built from, unless another one lies
    # within twice the offset: check that instead of assuming it.
    gaps = np.linalg.norm(f_train[:, None] - f_train[None], axis=2) + np.diag(np.full(5, np.inf))
    assert gaps.min() > 2 * 1.2
    features = feature_audit(_names("s", 4), f_syn, _names("r", 3), f_test, _names("T", 5), f_train,
                             network=NETWORK, n_closest=3)
    assert features["flagged"] == ["s1", "s2"] and features["n_flagged"] == 2
    assert features["threshold"] == pytest.approx(0.5, rel=1e-12)
    per = features["per_sample"]
    assert [p["nearest_train"] for p in per] == ["T0", "T3", "T1", "T2"]
    assert per[1]["distance"] == pytest.approx(1e-9, rel=1e-6) and per[2]["distance"] == 0.0
    assert [p["test_percentile"] for p in per] == [100.0, 0.0, 0.0, 100.0]
    assert [p["synthetic"] for p in features["closest_pairs"]] == ["s2", "s1", "s0"]
    assert features["distance"] == FEATURE_DISTANCE and features["feature_network"] == NETWORK
    assert set(features) == set(voxels) | {"feature_network"} and features["rule"] == voxels["rule"]


def test_feature_audit_refuses_mismatched_names():
    f = np.zeros((3, 4))
    with pytest.raises(ValueError, match="2 training names but 3 feature rows"):
        feature_audit(["s"], f[:1], ["r"], f[:1], ["a", "b"], f, network=NETWORK)


def test_nearest_rows_equals_brute_force_and_the_volume_search():
    rng = np.random.default_rng(1)
    q, r = rng.normal(size=(7, 33)), rng.normal(size=(11, 33))
    r[4] = q[2]  # an exact match: distance exactly 0
    index, dist = nearest_rows(q, r, block=3)
    brute = np.sqrt(((q[:, None] - r[None]) ** 2).sum(-1))
    assert (index == brute.argmin(1)).all() and dist[2] == 0.0
    # |D - t| <= gamma_{n+2} t (nearest.py, eq. (2)), n = 33: relative error of the squares < 1e-14
    np.testing.assert_allclose(dist, brute.min(1), rtol=1e-14)
    as_volumes = nearest_l2(q.reshape(7, 33, 1, 1), r.reshape(11, 33, 1, 1))
    assert (as_volumes[0] == index).all() and (as_volumes[1] == dist).all()
    with pytest.raises(ValueError, match="expected query"):
        nearest_rows(q, r[:, :5])
    with pytest.raises(ValueError, match="no reference"):
        nearest_rows(q, r[:0])


def test_training_features_come_from_the_chunks_the_voxel_search_reads():
    rng = np.random.default_rng(2)
    train = rng.random((5, 16, 16, 16), dtype=np.float32)
    chunks = [train[:2], train[2:4], train[4:]]
    model, _ = load_med3d(10, None, seed=0)
    into: list[np.ndarray] = []
    passed = list(features_while_reading(iter(chunks), model, into, normalise="zscore"))
    assert len(passed) == 3 and all(a is b for a, b in zip(passed, chunks))
    assert [len(f) for f in into] == [2, 2, 1]
    for f, c in zip(into, chunks):  # the same call on the same arrays: the same numbers
        assert (f == extract_features(model, iter(c), normalise="zscore")).all()
