"""The evaluate stage: FID on Med3D features and both MS-SSIM protocols, written to one JSON file.

Memory: all volumes are held in memory as float32 (Nr + Ns) · D·H·W · 4 bytes, e.g. 500 + 500 volumes of
128³ take 8 GiB; each file is read once. Med3D features are computed ``batch_size`` volumes at a time, the
nearest-real search in float64 chunks of ~64 MiB, and MS-SSIM four pairs at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ctdiff.io import load_volume, write_json
from ctdiff.metrics.fid import fid_from_features
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.msssim import SIGMA, diversity_msssim, msssim_settings, paired_msssim

PAPER = {"fid": 9.70, "msssim": 0.266}
RANGE_TOLERANCE = 1e-4


def _load_all(paths: Sequence[Path], shape: tuple[int, ...] | None, kind: str) -> np.ndarray:
    """Read and check NIfTI volumes → [N, D, H, W] float32 in [0, 1].

    Every file must have ``shape`` (default: the first file's), finite values and values within
    [0, 1] ± ``RANGE_TOLERANCE`` (those within the tolerance are clipped to [0, 1]). All offending files are
    reported together in one ValueError, each with its reason.
    """
    if not paths:
        raise ValueError(f"no {kind} volumes given")
    out: np.ndarray | None = None
    problems: list[str] = []
    for k, path in enumerate(paths):
        vol, _ = load_volume(Path(path))
        if shape is None:
            shape = vol.shape
        if vol.ndim != 3:
            problems.append(f"{path}: expected a 3-D volume, got shape {vol.shape}")
            continue
        if vol.shape != shape:
            problems.append(f"{path}: shape {vol.shape} differs from the first real volume's {shape}")
            continue
        if not np.isfinite(vol).all():
            problems.append(f"{path}: contains NaN or infinite values")
            continue
        lo, hi = float(vol.min()), float(vol.max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            problems.append(f"{path}: values span [{lo:.6g}, {hi:.6g}], outside [0, 1]")
            continue
        if out is None:
            out = np.empty((len(paths), *shape), dtype=np.float32)
        out[k] = np.clip(vol, 0.0, 1.0)
    if problems:
        raise ValueError(f"refusing to evaluate {len(problems)} {kind} volume(s):\n" + "\n".join(problems))
    assert out is not None  # every path was loaded without a problem
    return out


def evaluate(
    real: Sequence[Path],
    synthetic: Sequence[Path],
    out: Path,
    *,
    med3d_weights: Path | None,
    med3d_depth: int,
    normalise: str,
    msssim_window: int,
    seed: int,
    provenance: dict | None = None,
    diversity_pairs: int = 1000,
    device: str | torch.device = "cpu",
) -> dict:
    """Compare ``synthetic`` with held-out ``real`` NIfTI volumes; write the metrics to ``out`` (JSON) and
    return them.

    - FID (Heusel et al. 2017) between Med3D ResNet-``med3d_depth`` features of both sets;
      ``fid_rank_deficient`` flags fewer samples than feature dimensions + 1. Without ``med3d_weights`` a
      network seeded by ``seed`` is used and ``feature_network.note`` says it is not comparable to the paper.
    - ``msssim_nearest_real``: the paper's MS-SSIM, each synthetic volume against its L2-nearest real one.
    - ``msssim_diversity``: mean MS-SSIM of min(``diversity_pairs``, all) random distinct synthetic pairs.
    ``provenance`` (e.g. checkpoint and config hashes from the caller) is stored as given.
    """
    if normalise not in ("none", "zscore"):
        raise ValueError(f"normalise must be 'none' or 'zscore', got {normalise!r}")
    real_vol = _load_all(real, None, "real")
    syn_vol = _load_all(synthetic, real_vol.shape[1:], "synthetic")
    if len(real_vol) < 2 or len(syn_vol) < 2:
        raise ValueError(
            f"need at least 2 real and 2 synthetic volumes, got {len(real_vol)} and {len(syn_vol)}"
        )
    window, weights = msssim_settings(min(real_vol.shape[1:]), msssim_window)

    model, network = load_med3d(med3d_depth, Path(med3d_weights) if med3d_weights else None, seed=seed)
    network["normalise"] = normalise
    network["features"] = "global average pool of layer4"
    feats_real = extract_features(model, iter(real_vol), normalise=normalise, device=device)
    feats_syn = extract_features(model, iter(syn_vol), normalise=normalise, device=device)
    fid = fid_from_features(feats_real, feats_syn)

    paired = paired_msssim(syn_vol, real_vol, window=msssim_window, device=device)
    n_div = min(diversity_pairs, len(syn_vol) * (len(syn_vol) - 1) // 2)
    diversity = diversity_msssim(syn_vol, n_pairs=n_div, seed=seed, window=msssim_window, device=device)

    metrics = {
        "fid": fid["fid"],
        "fid_rank_deficient": fid["rank_deficient"],
        "fid_feature_dim": fid["dim"],
        "msssim_nearest_real": {
            "mean": paired["mean"],
            "std": paired["std"],
            "n": paired["n"],
            "per_sample": [
                {"synthetic": Path(synthetic[k]).name, "nearest_real": Path(real[j]).name, "msssim": v}
                for k, (j, v) in enumerate(zip(paired["nearest"], paired["values"]))
            ],
        },
        "msssim_diversity": {
            "mean": diversity["mean"],
            "std": diversity["std"],
            "n_pairs": diversity["n_pairs"],
        },
        "feature_network": network,
        "n_real": len(real_vol),
        "n_synthetic": len(syn_vol),
        "volume_shape": list(real_vol.shape[1:]),
        "msssim": {"window": window, "scales": len(weights), "weights": weights, "sigma": SIGMA,
                   "data_range": 1.0},
        "seed": seed,
        "paper": dict(PAPER),
        "provenance": dict(provenance or {}),
    }
    write_json(Path(out), metrics)
    return metrics
