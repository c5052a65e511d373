"""Memorisation audit: is any synthetic volume a near-copy of a training volume?

For each synthetic volume s, d(s) = min over training volumes t of ‖s − t‖₂ (L2 over all voxels). The same
distance for each held-out real (test) volume r, d(r), is the reference: how close a genuinely new scan of
this population comes to the training set. Rule: a synthetic volume is flagged as a near-copy when

    d(s) < min over test volumes r of d(r)                                                        (1)

i.e. it lies closer to a training volume than any held-out scan does. With few test volumes the minimum is
itself noisy, so the 5th percentile of d(r) and each synthetic volume's percentile rank within d(r) are
recorded beside it; an exact copy has d(s) = 0 and is flagged whenever no test volume equals a training one.

The distances come from ``ctdiff.metrics.nearest.nearest_over_chunks``: the training volumes arrive in chunks,
so only the queries and one chunk are held at once, and an exact copy has distance exactly 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RULE = "flagged when the synthetic-to-train distance is below the minimum test-to-train distance"
VOXEL_DISTANCE = "Euclidean norm of the voxel difference over the whole volume (intensities in [0, 1])"


def _reference_summary(d: np.ndarray) -> dict:
    return {
        "n": int(len(d)),
        "min": float(d.min()),
        "p05": float(np.percentile(d, 5)),
        "median": float(np.median(d)),
        "mean": float(d.mean()),
        "max": float(d.max()),
    }


def audit(
    synthetic_names: Sequence[str],
    synthetic_nearest: tuple[np.ndarray, np.ndarray],
    test_names: Sequence[str],
    test_nearest: tuple[np.ndarray, np.ndarray],
    train_names: Sequence[str],
    *,
    n_closest: int = 5,
    distance: str = VOXEL_DISTANCE,
) -> dict:
    """The audit record from (index, distance) of synthetic and test volumes to their nearest training volume.

    Returns {'rule', 'threshold', 'distance', 'per_sample', 'test_to_train', 'flagged', 'n_flagged',
    'closest_pairs'}: per_sample gives each synthetic volume's nearest training volume, distance, percentile
    rank among the test-to-train distances (% of test volumes closer) and flag; closest_pairs the
    ``n_closest`` synthetic volumes nearest to the training set, closest first. ``distance`` says what the
    distances measure (voxels by default; ``ctdiff.metrics.feature_memorisation`` passes feature space).
    """
    s_idx, s_dist = (np.asarray(x) for x in synthetic_nearest)
    t_idx, t_dist = (np.asarray(x) for x in test_nearest)
    if len(s_dist) != len(synthetic_names) or len(t_dist) != len(test_names):
        raise ValueError("names and distances differ in length")
    if len(t_dist) == 0:
        raise ValueError("the memorisation audit needs at least one held-out (test) volume")
    threshold = float(t_dist.min())
    rank = (t_dist[None, :] < s_dist[:, None]).mean(1) * 100.0
    per_sample = [
        {"synthetic": synthetic_names[k], "nearest_train": train_names[int(s_idx[k])],
         "distance": float(s_dist[k]), "test_percentile": float(rank[k]), "flagged": bool(s_dist[k] < threshold)}
        for k in range(len(s_dist))
    ]
    order = np.argsort(s_dist, kind="stable")[:n_closest]
    return {
        "rule": RULE,
        "threshold": threshold,
        "distance": distance,
        "per_sample": per_sample,
        "test_to_train": {
            **_reference_summary(t_dist),
            "per_sample": [{"test": test_names[k], "nearest_train": train_names[int(t_idx[k])],
                            "distance": float(t_dist[k])} for k in range(len(t_dist))],
        },
        "flagged": [p["synthetic"] for p in per_sample if p["flagged"]],
        "n_flagged": int(sum(p["flagged"] for p in per_sample)),
        "closest_pairs": [
            {"synthetic": per_sample[k]["synthetic"], "train": per_sample[k]["nearest_train"],
             "distance": per_sample[k]["distance"]} for k in order
        ],
    }
