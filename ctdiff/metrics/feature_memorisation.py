"""Memorisation audit in Med3D feature space, beside the voxel audit of ``ctdiff.metrics.memorisation``.

Why a second audit: Dar et al. (2023, "Investigating data memorization in 3D latent diffusion models for medical
image synthesis") found that L2 over voxels misses near-copies a small shift hides: a training volume moved by
a few voxels is far from its source voxel by voxel, yet it is the same scan. Med3D's layers are convolutions
and its features a global average pool of layer4, so moving a body inside a uniform background moves the
feature maps with it and changes the pooled features only through the borders and the stride-8 grid; in
feature space the shifted copy stays close to its source.

The rule is the voxel audit's eq. (1) with the distance taken between feature vectors: for a synthetic volume s
with features f(s) [C], d(s) = min over training volumes t of ‖f(s) − f(t)‖₂, the same d(r) for each held-out
real (test) volume r, and s is flagged when

    d(s) < min over test volumes r of d(r)                                                        (1)

The features are those FID uses (same network, same ``normalise``), so nothing new is loaded. An exact copy
gets d(s) ≈ 0, not exactly 0: its features are computed in another batch than its source's, and float32
convolutions may round differently per batch; with any distinct test set that is far below the threshold.
What the distances mean depends on the network: with MedicalNet weights, closeness of learned anatomical
features; with the seeded random network of the demo and the tests, only what any random convolutional
network sees (intensity statistics, invariance to translation). A flag is a volume to look at, not a verdict.

Memory: the training volumes are read in chunks (``ctdiff.metrics.evaluate``) and their features kept,
N_train · C · 8 bytes (500 × 2048 float64: 8 MiB); each training file is read once for both audits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch

from ctdiff.metrics import keys
from ctdiff.metrics.med3d import Med3DResNet, extract_features
from ctdiff.metrics.memorisation import audit
from ctdiff.metrics.nearest import nearest_rows
from ctdiff.options import Normalise

FEATURE_DISTANCE = "Euclidean norm of the difference of the Med3D features FID uses (global average pool of layer4)"


def features_while_reading(
    chunks: Iterable[np.ndarray],
    model: Med3DResNet,
    into: list[np.ndarray],
    *,
    normalise: Normalise = "none",
    device: str | torch.device = "cpu",
) -> Iterator[np.ndarray]:
    """Pass the chunks [n_k, D, H, W] through unchanged, appending each chunk's Med3D features [n_k, C] to
    ``into`` first: a consumer of the chunks (the voxel search) and the feature audit share one reading."""
    for chunk in chunks:
        into.append(extract_features(model, iter(chunk), normalise=normalise, device=device))
        yield chunk


def feature_audit(
    synthetic_names: Sequence[str],
    synthetic_features: np.ndarray,
    test_names: Sequence[str],
    test_features: np.ndarray,
    train_names: Sequence[str],
    train_features: np.ndarray,
    *,
    network: dict,
    n_closest: int = 5,
) -> dict:
    """The near-copy audit (eq. (1)) on feature vectors [N, C] of synthetic, test and training volumes.

    Returns the record of ``ctdiff.metrics.memorisation.audit`` (rule, threshold, per_sample, test_to_train,
    flagged, n_flagged, closest_pairs; distances in feature space) plus ``feature_network``, the network's
    provenance as given (``network``, e.g. ``ctdiff.metrics.med3d.load_med3d``'s). ValueError when the
    counts of names and feature rows differ or the feature widths disagree.
    """
    for kind, names, feats in (("synthetic", synthetic_names, synthetic_features), ("test", test_names, test_features),
                               ("training", train_names, train_features)):
        if len(names) != len(feats):
            raise ValueError(f"{len(names)} {kind} names but {len(feats)} feature rows")
    syn_near = nearest_rows(synthetic_features, train_features)
    test_near = nearest_rows(test_features, train_features)
    record = audit(synthetic_names, syn_near, test_names, test_near, train_names, n_closest=n_closest,
                   distance=FEATURE_DISTANCE)
    record[keys.FEATURE_NETWORK] = dict(network)
    return record
