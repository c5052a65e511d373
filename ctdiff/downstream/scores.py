"""How well a segmentation finds the nodules of a reference mask: per volume, then over a test set with
bootstrap intervals.

Per volume (:func:`volume_scores`), with P the predicted voxels (probability above the threshold) and G the
reference's nodule voxels (every nonzero label):

- **Dice** ``2|P ∩ G| / (|P| + |G|)``; for a volume without nodules (G empty) it is 1 when nothing is predicted
  and 0 otherwise: a clean scan called clean is right, any nodule called in it is wrong. The test set's mean
  Dice therefore rewards silence on clean scans; ``dice_nodules``, the mean over the volumes with nodules only,
  is shown beside it.
- **lesions**: each nonzero label of the reference is one nodule, as the consensus masks number them (a label
  that resampling split into pieces is still one nodule; two touching nodules stay two). A nodule is **found**
  when any predicted voxel lies in it.
- **false positives**: the connected components of P (26-connectivity: voxels that share a face, an edge or a
  corner) that overlap no reference nodule voxel.

Over the test set (:func:`summarise`): mean Dice; lesion-level sensitivity, the found nodules over all nodules
(pooled over volumes, so that a volume with four nodules weighs four times one with one; None when the test
set has none); false positives per volume (the mean count). Intervals: percentile bootstrap over *volumes*
(:func:`ctdiff.metrics.bootstrap.bootstrap_ci`: the volumes are the independent units; a volume's nodules and
false positives are resampled with it), the sensitivity's replicate being the ratio of the resampled sums; a
replicate that draws no nodule at all is drawn again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ctdiff.metrics.bootstrap import bootstrap_ci

#: Connected components of the prediction: 26-connectivity.
STRUCTURE = np.ones((3, 3, 3), bool)


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """``2|P ∩ G| / (|P| + |G|)`` of two boolean arrays; 1 when both are empty (see the module)."""
    p, g = np.asarray(pred, bool), np.asarray(ref, bool)
    total = int(p.sum()) + int(g.sum())
    return 1.0 if total == 0 else 2.0 * int((p & g).sum()) / total


def lesion_counts(pred: np.ndarray, labels: np.ndarray) -> tuple[int, int, int]:
    """(nodules, found, false positives) of a boolean prediction against uint labels (module docstring)."""
    p, labels = np.asarray(pred, bool), np.asarray(labels)
    nodules = [v for v in np.unique(labels) if v != 0]
    found = sum(bool(p[labels == v].any()) for v in nodules)
    components, n = ndimage.label(p, structure=STRUCTURE)
    hit = np.unique(components[(labels != 0) & p])
    return len(nodules), int(found), int(n - np.count_nonzero(hit))


def volume_scores(prob: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """The scores of one volume: ``prob`` [D, H, W] the predicted probability, ``labels`` the reference mask."""
    pred = np.asarray(prob) > threshold
    nodules, found, fp = lesion_counts(pred, labels)
    return {"dice": dice(pred, labels != 0), "nodules": nodules, "found": found, "false_positives": fp,
            "predicted_voxels": int(pred.sum()), "reference_voxels": int(np.count_nonzero(labels))}


def _sensitivity(nodules: np.ndarray, found: np.ndarray) -> float | None:
    total = nodules.sum()
    return None if total == 0 else float(found.sum() / total)


def summarise(per_volume: Sequence[dict[str, Any]], *, n_boot: int, level: float, seed: int,
              max_redraws: int = 1000) -> dict[str, Any]:
    """The test set's Dice (all volumes, and those with nodules), sensitivity and false positives per volume,
    with ``intervals`` of each (bootstrap over volumes, ``n_boot`` replicates from ``seed``; none for
    ``n_boot = 0`` or a value that is None)."""
    if not per_volume:
        raise ValueError("no test volume to score")
    d = np.array([v["dice"] for v in per_volume], float)
    nodules = np.array([v["nodules"] for v in per_volume], float)
    found = np.array([v["found"] for v in per_volume], float)
    fp = np.array([v["false_positives"] for v in per_volume], float)
    with_nodules = nodules > 0
    out: dict[str, Any] = {
        "n_volumes": len(d), "n_volumes_with_nodules": int(with_nodules.sum()), "n_nodules": int(nodules.sum()),
        "n_found": int(found.sum()), "dice": float(d.mean()),
        "dice_nodules": float(d[with_nodules].mean()) if with_nodules.any() else None,
        "sensitivity": _sensitivity(nodules, found), "fp_per_volume": float(fp.mean()), "intervals": {},
    }
    if not n_boot:
        return out
    n = len(d)

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, n, n)

    def sensitivity(rng: np.random.Generator) -> float:
        for _ in range(max_redraws):
            i = draw(rng)
            if nodules[i].sum() > 0:
                return float(found[i].sum() / nodules[i].sum())
        raise ValueError(f"{max_redraws} resamples in a row drew no nodule")

    def dice_nodules(rng: np.random.Generator) -> float:
        sub = d[with_nodules]
        return float(sub[rng.integers(0, len(sub), len(sub))].mean())

    statistics = {"dice": lambda rng: float(d[draw(rng)].mean()),
                  "fp_per_volume": lambda rng: float(fp[draw(rng)].mean())}
    if out["sensitivity"] is not None:
        statistics["sensitivity"] = sensitivity
        statistics["dice_nodules"] = dice_nodules
    for k, (key, statistic) in enumerate(statistics.items()):
        ci = bootstrap_ci(out[key], n_boot, statistic, seed + k, level)
        out["intervals"][key] = {"low": ci["low"], "high": ci["high"]}
    out["bootstrap"] = {"n_boot": n_boot, "level": level, "seed": seed, "method": "percentile interval over "
                        "volumes resampled with replacement (sensitivity: ratio of the resampled sums)"}
    return out
