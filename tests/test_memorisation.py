"""Memorisation audit: the near-copy rule on nearest-training-volume distances (the search itself is tested
in test_nearest.py)."""
from __future__ import annotations

import numpy as np

from ctdiff.metrics.memorisation import audit
from ctdiff.metrics.nearest import nearest_over_chunks


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
    assert copy["nearest_train"] == "train4" and copy["distance"] == 0.0
    assert copy["test_percentile"] == 0.0
    ref = result["test_to_train"]
    assert ref["n"] == 4 and result["threshold"] == ref["min"] > 0
    assert ref["min"] <= ref["p05"] <= ref["median"] <= ref["max"]
    assert [p["test"] for p in ref["per_sample"]] == ["t0", "t1", "t2", "t3"]
    assert result["closest_pairs"][0] == {"synthetic": "s3", "train": "train4", "distance": copy["distance"]}
    assert len(result["closest_pairs"]) == 2
    assert "minimum test-to-train" in result["rule"]
