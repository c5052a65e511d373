"""The evaluate stage: FID and KID on Med3D features and both MS-SSIM protocols with bootstrap intervals, the
real-vs-real floor, the memorisation audits (voxels and Med3D features) and the anatomy in HU, written to one
JSON file.

Memory: the test and synthetic volumes are held in memory as float32, (Nr + Ns) · D·H·W · 4 bytes, e.g.
500 + 500 volumes of 128³ take 8 GiB; the training volumes are read ``train_chunk`` at a time for the
memorisation audits (64 at 128³: 0.5 GiB more) and never held together; their Med3D features are kept
(N_train · C · 8 bytes) for the feature-space audit. Each file is read once. Med3D
features are computed ``batch_size`` volumes at a time, nearest-volume searches in float64 chunks of
~64 MiB, and MS-SSIM four pairs at a time. The anatomy's worker processes (``workers``) are forked and read
the volumes from this memory; each needs ~40 MiB more at 128³ (numpy's peak for one volume).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ctdiff.config import EvaluateConfig, PreprocessConfig
from ctdiff.files import load_volume, write_json
from ctdiff.metrics import keys
from ctdiff.metrics.anatomy_compare import evaluate_anatomy, read_affines
from ctdiff.metrics.bootstrap import fid_ci, mean_ci, pair_mean_ci
from ctdiff.metrics.feature_memorisation import feature_audit, features_while_reading
from ctdiff.metrics.fid import fid_from_features
from ctdiff.metrics.kid import kid_ci, kid_from_features, kid_real_floor
from ctdiff.metrics.med3d import extract_features, load_med3d
from ctdiff.metrics.memorisation import audit
from ctdiff.metrics.msssim import SIGMA, diversity_msssim, msssim_settings, paired_msssim
from ctdiff.metrics.nearest import nearest_over_chunks
from ctdiff.metrics.nodule_control import nodule_control

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
            problems.append(f"{path}: shape {vol.shape} differs from the first real volume's {tuple(shape)}")
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


def real_floor(
    real_vol: np.ndarray, feats_real: np.ndarray, names: Sequence[str], *, seed: int, window: int, device="cpu"
) -> dict:
    """FID and nearest-real MS-SSIM between two halves of the real (test) volumes: what two samples of real
    data score against each other, a floor for the synthetic-vs-real numbers.

    The halves come from ``numpy.random.default_rng(seed).permutation``: the first ⌊N/2⌋ volumes are paired
    with their nearest volume among the other ⌈N/2⌉. Both numbers use N/2 volumes per set, so the FID floor
    carries more small-sample bias than a full-size comparison. Where a half has fewer than 2 volumes both
    values are None and ``reason`` says why.
    """
    a, b = real_halves(len(real_vol), seed)
    if len(a) < 2:
        return {keys.FID: None, keys.MSSSIM_NEAREST_REAL: None, "seed": seed,
                "reason": f"{len(real_vol)} real volumes: each half needs at least 2 (FID needs 2 per set)"}
    paired = paired_msssim(real_vol[a], real_vol[b], window=window, device=device)
    return {
        keys.FID: fid_from_features(feats_real[a], feats_real[b])["fid"],
        keys.MSSSIM_NEAREST_REAL: paired["mean"],
        "half_a": [names[i] for i in a],
        "half_b": [names[i] for i in b],
        "seed": seed,
        "note": "two halves of the test set; N/2 volumes per set, so FID is biased upward against full N",
    }


def real_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The two halves of ``n`` real volumes behind every real-vs-real floor (sorted indices, ⌊n/2⌋ and ⌈n/2⌉)."""
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def check_kid_sizes(n_real: int, n_synthetic: int, settings: EvaluateConfig) -> None:
    """Refuse, naming the ``evaluate`` keys, sets too small for KID subsets of ``kid_subset_size``."""
    for kind, n, other in (("real (test)", n_real, "split.test"), ("synthetic", n_synthetic, "sample.n")):
        if settings.kid_subset_size > n:
            raise ValueError(
                f"evaluate.kid_subset_size={settings.kid_subset_size} exceeds the {n} {kind} volumes: KID draws "
                f"subsets without replacement; lower evaluate.kid_subset_size to at most {n} (or raise {other})")


def _chunks(paths: Sequence[Path], size: int, shape: tuple[int, ...], kind: str):
    for i in range(0, len(paths), size):
        yield _load_all(paths[i : i + size], shape, kind)


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 in cuDNN convolutions and CUDA matmuls (no TF32) inside the block, as before it after.

    cuDNN allows TF32 by default: its 10-bit mantissa changes the Med3D features, and the MS-SSIM blur's
    variance, ``blur(x²) − μ²``, magnifies the difference. Without it a GPU's numbers match the CPU's to float32
    rounding. On a CPU the flags change nothing."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@no_tf32()
def evaluate(
    real: Sequence[Path],
    synthetic: Sequence[Path],
    out: Path,
    settings: EvaluateConfig,
    *,
    train: Sequence[Path],
    provenance: dict | None = None,
    diversity_pairs: int = 1000,
    train_chunk: int = 64,
    device: str | torch.device = "cpu",
    hu_window: tuple[float, float] = PreprocessConfig.hu_window,
    nodules: tuple[Sequence[Path], Sequence[Path | None]] | None = None,
    workers: int = 1,
    membership: Path | None = None,
) -> dict:
    """Compare ``synthetic`` with held-out ``real`` NIfTI volumes as the ``evaluate`` section ``settings``
    says; write the metrics to ``out`` (JSON) and return them (``settings.compare_samplers`` plays no part).

    - FID (Heusel et al. 2017) between Med3D ResNet-``med3d_depth`` features of both sets, fed as
      ``normalise`` says; ``fid_rank_deficient`` flags fewer samples than feature dimensions + 1. Without
      ``med3d_weights`` a network seeded by ``seed`` is used and ``feature_network.note`` says it is not
      comparable to the paper.
    - ``kid``: KID (``ctdiff.metrics.kid``, Bińkowski et al. 2018) on the same features, mean and sd over
      ``kid_subsets`` subsets of ``kid_subset_size`` volumes per set; a set smaller than ``kid_subset_size``
      is refused (ValueError naming the key).
    - ``msssim_nearest_real``: the paper's MS-SSIM (window ``msssim_window``), each synthetic volume against
      its L2-nearest real one.
    - ``msssim_diversity``: mean MS-SSIM of min(``diversity_pairs``, all) random distinct synthetic pairs.
    - ``bootstrap``: ``ci_level`` intervals from ``bootstrap`` replicates (``ctdiff.metrics.bootstrap``,
      seeded by ``seed``) for FID, KID, the nearest-real MS-SSIM mean and the diversity MS-SSIM mean;
      0 replicates compute none and record only ``n_boot``, ``level`` and ``seed``.
    - ``floor``: the same numbers (FID, KID, nearest-real MS-SSIM) between two halves of the real volumes
      (``real_floor``).
    - ``memorisation``: each synthetic and each real volume's L2 distance to its nearest ``train`` volume
      and the near-copies (``ctdiff.metrics.memorisation``).
    - ``memorisation.features``: the same audit on the Med3D features above, the training volumes' features
      computed from the chunks the voxel audit reads (``ctdiff.metrics.feature_memorisation``).
    - ``real_volumes``: the names of the real volumes, so that sets scored separately can be shown to share them.
    - ``anatomy``: body, lungs and tissue classes in HU (through ``hu_window``, the preprocessing window) per
      volume, and real against synthetic as distributions with the real-vs-real floor and intervals
      (``ctdiff.metrics.anatomy_compare.evaluate_anatomy``), measured on ``workers`` processes (the same
      numbers for any count).
    - ``nodules`` (only when ``nodules`` = (the mask each synthetic volume was drawn with, the real volume
      that mask came from) is given, for a ``model.condition: nodules`` model): contrast, detection, size and
      spurious blobs, synthetic against real (``ctdiff.metrics.nodule_control``).
    - ``membership`` (only when ``membership``, the model's membership-inference audit written by
      ``ctdiff.metrics.membership.membership_audit``, is given): copied as it is; it depends on the model, not
      on the sample set, so every set of a model carries the same record.
    ``provenance`` (e.g. ``ctdiff.metrics.variant_table.sampling_provenance``) is stored as given.
    """
    if train_chunk < 1:
        raise ValueError(f"train_chunk must be >= 1, got {train_chunk}")
    if not train:
        raise ValueError("no training volumes given: the memorisation audit needs the training split")
    real_vol = _load_all(real, None, "real")
    syn_vol = _load_all(synthetic, real_vol.shape[1:], "synthetic")
    if len(real_vol) < 2 or len(syn_vol) < 2:
        raise ValueError(
            f"need at least 2 real and 2 synthetic volumes, got {len(real_vol)} and {len(syn_vol)}"
        )
    check_kid_sizes(len(real_vol), len(syn_vol), settings)
    window, weights = msssim_settings(min(real_vol.shape[1:]), settings.msssim_window)
    real_names = [Path(p).name for p in real]
    syn_names = [Path(p).name for p in synthetic]

    weights_file = Path(settings.med3d_weights) if settings.med3d_weights else None
    model, network = load_med3d(settings.med3d_depth, weights_file, seed=settings.seed)
    network["normalise"] = settings.normalise
    network["features"] = "global average pool of layer4"
    feats_real = extract_features(model, iter(real_vol), normalise=settings.normalise, device=device)
    feats_syn = extract_features(model, iter(syn_vol), normalise=settings.normalise, device=device)
    fid = fid_from_features(feats_real, feats_syn)
    kid_settings = {"subset_size": settings.kid_subset_size, "subsets": settings.kid_subsets}
    kid = kid_from_features(feats_real, feats_syn, **kid_settings, seed=settings.seed)

    paired = paired_msssim(syn_vol, real_vol, window=settings.msssim_window, device=device)
    n_div = min(diversity_pairs, len(syn_vol) * (len(syn_vol) - 1) // 2)
    diversity = diversity_msssim(syn_vol, n_pairs=n_div, seed=settings.seed, window=settings.msssim_window,
                                 device=device)

    boot = {"n_boot": settings.bootstrap, "level": settings.ci_level, "seed": settings.seed}
    bootstrap: dict = dict(boot)
    if settings.bootstrap:
        intervals = {
            keys.FID: fid_ci(feats_real, feats_syn, fid["fid"], **boot),
            keys.KID: kid_ci(feats_real, feats_syn, kid["mean"], **kid_settings, **boot),
            keys.MSSSIM_NEAREST_REAL: mean_ci(np.asarray(paired["values"]), **boot),
            keys.MSSSIM_DIVERSITY: pair_mean_ci(np.asarray(diversity["values"]), np.asarray(diversity["pairs"]),
                                             len(syn_vol), **boot),
        }
        for key, ci in intervals.items():
            bootstrap[key] = {k: ci[k] for k in ("low", "high", "bias", "method")}
        bootstrap["resampled"] = ("FID and KID: both feature sets, independently; MS-SSIM nearest real: the per-sample "
                                  "values; MS-SSIM diversity: the synthetic volumes of the evaluated pairs")
    floor = real_floor(real_vol, feats_real, real_names, seed=settings.seed, window=settings.msssim_window,
                       device=device)
    # KID's floor on the same halves (None where a half has fewer than 2 volumes; floor["reason"] says so)
    half_a, half_b = real_halves(len(real_vol), settings.seed)
    floor[keys.KID] = (kid_real_floor(feats_real, half_a, half_b, **kid_settings, seed=settings.seed)
                    if len(half_a) >= 2 else None)

    train_feats: list[np.ndarray] = []  # filled chunk by chunk as the voxel search reads the training volumes
    train_chunks = features_while_reading(_chunks(list(train), train_chunk, real_vol.shape[1:], "training"),
                                          model, train_feats, normalise=settings.normalise, device=device)
    syn_near, real_near = nearest_over_chunks([syn_vol, real_vol], train_chunks)
    memorisation = audit(syn_names, syn_near, real_names, real_near, [Path(p).name for p in train])
    memorisation["features"] = feature_audit(syn_names, feats_syn, real_names, feats_real,
                                             [Path(p).name for p in train], np.concatenate(train_feats),
                                             network=network)

    metrics = {
        keys.FID: fid["fid"],
        keys.FID_RANK_DEFICIENT: fid["rank_deficient"],
        keys.FID_FEATURE_DIM: fid["dim"],
        keys.KID: kid,
        keys.MSSSIM_NEAREST_REAL: {
            "mean": paired["mean"],
            "std": paired["std"],
            "n": paired["n"],
            "per_sample": [
                {"synthetic": syn_names[k], "nearest_real": real_names[j], "msssim": v}
                for k, (j, v) in enumerate(zip(paired["nearest"], paired["values"]))
            ],
        },
        keys.MSSSIM_DIVERSITY: {
            "mean": diversity["mean"],
            "std": diversity["std"],
            "n_pairs": diversity["n_pairs"],
        },
        keys.BOOTSTRAP: bootstrap,
        keys.FLOOR: floor,
        keys.MEMORISATION: memorisation,
        keys.FEATURE_NETWORK: network,
        keys.N_REAL: len(real_vol),
        keys.N_SYNTHETIC: len(syn_vol),
        keys.N_TRAIN: len(train),
        keys.REAL_VOLUMES: real_names,
        keys.VOLUME_SHAPE: list(real_vol.shape[1:]),
        keys.MSSSIM: {"window": window, "scales": len(weights), "weights": weights, "sigma": SIGMA,
                   "data_range": 1.0},
        keys.SEED: settings.seed,
        keys.PAPER: dict(PAPER),
        keys.PROVENANCE: dict(provenance or {}),
    }
    metrics[keys.ANATOMY] = evaluate_anatomy(
        real_vol, read_affines(real), real_names, syn_vol, read_affines(synthetic), syn_names, hu_window=hu_window,
        seed=settings.seed, n_boot=settings.bootstrap, level=settings.ci_level, workers=workers)
    if nodules is not None:
        metrics[keys.NODULES] = nodule_control(synthetic, nodules[0], nodules[1], hu_window)
    if membership is not None:
        metrics[keys.MEMBERSHIP] = json.loads(Path(membership).read_text(encoding="utf-8"))
    keys.check_metrics(metrics, where=f"{out} (not written)")
    write_json(Path(out), metrics)
    return metrics
