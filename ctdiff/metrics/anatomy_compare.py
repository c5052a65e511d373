"""Anatomy of a synthetic set against the real set, as distributions (:mod:`ctdiff.metrics.anatomy` per
volume): what ``metrics.json`` records under ``anatomy``.

- Tissue classes: per class the Wasserstein-1 distance (W1, in HU) between the real and the synthetic HU
  distributions of the class's voxels pooled over each set's bodies. It is computed with
  ``scipy.stats.wasserstein_distance`` on the pooled 1-HU histograms (bin value = the whole HU, weight = the
  count), which is exact for the pooled voxels, since ``to_hu`` rounds every voxel to a whole HU.
  W1 is the mean |shift| one distribution needs to become the other: 0 = equal, in HU.
- Per volume (``per_volume``): each volume's row of ``volume_anatomy`` under its file name, with the
  ``reason`` it has no body or fewer than two lungs; measured on ``workers`` processes (:func:`anatomy_rows`),
  the same numbers for any count.
- Per-volume quantities (body and lung volumes, lung count and balance, class fractions): mean ± sd per set
  and W1 between the two sets' values (in the quantity's unit). A quantity undefined for a volume (balance
  with fewer than two lungs, fractions without a body) leaves that volume out and ``n`` says how many remain;
  where a set has no value left, W1 is None and ``reason`` says why (never NaN).
- Intervals: W1 is a distance between empirical distributions and, like FID, biased upward at finite N;
  its interval is ``bootstrap_ci`` with ``shift_bias`` and lower end >= 0 (Eq. (1) of
  :mod:`ctdiff.metrics.bootstrap`), each replicate resampling the volumes of both sets independently (a
  replicate whose resampled sets leave one side without a value is drawn again, at most 1000 times).
- Floor: the same W1s between two halves of the real volumes, split like ``evaluate.real_floor``
  (``numpy.random.default_rng(seed).permutation``, the first ⌊N/2⌋ against the rest): what real data scores
  against real data with N/2 volumes per set (so with more small-sample bias than the full comparison).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.stats import wasserstein_distance

from ctdiff.metrics.anatomy import (AIR_LIKE_HU, BODY_HU, CLASSES, MAX_LUNG_SHARE, MIN_BODY_ML, MIN_BODY_SPHERICITY,
                                    MIN_LUNG_ML, MIN_LUNG_SHARE, MIN_LUNG_SPHERICITY, MIN_SIDE_SHARE, class_slices,
                                    hu_bins, volume_anatomy)
from ctdiff.metrics.bootstrap import bootstrap_ci

QUANTITIES = {  # per-volume quantity → unit
    "body_ml": "mL", "n_lungs": "count", "lung_ml": "mL", "lung_balance": "smaller/larger",
    **{f"fraction_{c}": "share of body voxels" for c in CLASSES},
}
MAX_REDRAWS = 1000
VOXELS_PER_WORKER = 2 ** 22  # ~0.3 s of anatomy (two 128³ volumes): less work than this is not worth a process


def quantity(row: dict, name: str) -> float | None:
    """One per-volume quantity of :data:`QUANTITIES` from a row of ``volume_anatomy`` (None: undefined)."""
    if name.startswith("fraction_"):
        return row["fractions"][name[len("fraction_"):]]
    value = row[name]
    return None if value is None else float(value)


def hist_w1(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two histograms on the same unit bins (counts [n]; both non-empty), in bins."""
    centres = np.arange(len(a), dtype=np.float64)
    return float(wasserstein_distance(centres, centres, a, b))


def _values(rows: Sequence[dict], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(the defined values, their volume indices) of quantity ``name``."""
    pairs = [(k, quantity(r, name)) for k, r in enumerate(rows)]
    kept = [(k, v) for k, v in pairs if v is not None]
    return (np.array([v for _, v in kept], np.float64), np.array([k for k, _ in kept], np.int64))


def _resampling(n_a: int, n_b: int, statistic: Callable[[np.ndarray, np.ndarray], float | None]):
    """A bootstrap replicate: volume counts drawn with replacement for both sets, ``statistic(counts_a,
    counts_b)`` redrawn while it is None."""
    def replicate(rng: np.random.Generator) -> float:
        for _ in range(MAX_REDRAWS):
            value = statistic(np.bincount(rng.integers(0, n_a, n_a), minlength=n_a),
                              np.bincount(rng.integers(0, n_b, n_b), minlength=n_b))
            if value is not None:
                return value
        raise ValueError(f"{MAX_REDRAWS} bootstrap draws in a row left one set without a value")
    return replicate


def _class_w1(hist_a: np.ndarray, hist_b: np.ndarray, s: slice, names: tuple[str, str]) -> dict:
    """W1 (HU) of one class between two sets' per-volume histograms [N, n_bins]."""
    a, b = hist_a[:, s].sum(0), hist_b[:, s].sum(0)
    for side, name in ((a, names[0]), (b, names[1])):
        if side.sum() == 0:
            return {"w1_hu": None, "reason": f"no {name} voxel in this class"}
    return {"w1_hu": hist_w1(a, b)}


def _quantity_w1(va: np.ndarray, vb: np.ndarray, names: tuple[str, str]) -> dict:
    for side, name in ((va, names[0]), (vb, names[1])):
        if len(side) == 0:
            return {"w1": None, "reason": f"no {name} volume where it is defined"}
    return {"w1": float(wasserstein_distance(va, vb))}


def _summary(values: np.ndarray) -> dict:
    if len(values) == 0:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def _counts(rows: Sequence[dict]) -> dict:
    return {"no_body": sum(r["status"] == "no body" for r in rows),
            **{f"{k}_lungs": sum(r["n_lungs"] == k and r["status"] != "no body" for r in rows) for k in (0, 1, 2)}}


def compare_anatomy(
    real_rows: Sequence[dict], real_hist: np.ndarray, syn_rows: Sequence[dict], syn_hist: np.ndarray, *,
    hu_window: tuple[float, float], seed: int, n_boot: int, level: float,
) -> dict:
    """Real against synthetic: per-class HU W1 and per-quantity distributions with intervals (``n_boot``
    replicates at ``level``, seeded by ``seed``; 0 computes none) and the real-vs-real floor (see the module
    docstring). ``*_rows`` / ``*_hist`` [N, n_bins] are ``volume_anatomy``'s outputs per volume."""
    real_hist, syn_hist = np.asarray(real_hist, np.int64), np.asarray(syn_hist, np.int64)
    first, n_bins = hu_bins(hu_window)
    slices = class_slices(hu_window)
    perm = np.random.default_rng(seed).permutation(len(real_rows))
    half_a, half_b = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
    boot = {"n_boot": n_boot, "level": level, "seed": seed}
    sets, halves = ("real", "synthetic"), ("first-half real", "second-half real")

    def interval(point: float | None, replicate) -> dict | None:
        if not n_boot or point is None:
            return None
        ci = bootstrap_ci(point, n_boot, replicate, seed, level, shift_bias=True, floor=0.0)
        return {k: ci[k] for k in ("low", "high", "bias", "method")}

    classes = {}
    for name, s in slices.items():
        low, high = CLASSES[name]
        entry = {"hu_range": [None if low == -np.inf else low, None if high == np.inf else high]}
        entry.update(_class_w1(real_hist, syn_hist, s, sets))

        def stat(ca, cb, s=s):
            a, b = ca @ real_hist[:, s], cb @ syn_hist[:, s]
            return hist_w1(a, b) if a.sum() and b.sum() else None

        entry["interval"] = interval(entry["w1_hu"], _resampling(len(real_rows), len(syn_rows), stat))
        entry["floor"] = _class_w1(real_hist[half_a], real_hist[half_b], s, halves)
        entry["voxels"] = {"real": int(real_hist[:, s].sum()), "synthetic": int(syn_hist[:, s].sum())}
        classes[name] = entry

    quantities = {}
    for name, unit in QUANTITIES.items():
        (va, ia), (vb, ib) = _values(real_rows, name), _values(syn_rows, name)
        entry = {"unit": unit, "real": _summary(va), "synthetic": _summary(vb), **_quantity_w1(va, vb, sets)}

        def stat(ca, cb, va=va, vb=vb, ia=ia, ib=ib):
            wa, wb = ca[ia], cb[ib]
            if not wa.sum() or not wb.sum():
                return None
            return float(wasserstein_distance(va, vb, wa, wb))

        entry["interval"] = interval(entry["w1"], _resampling(len(real_rows), len(syn_rows), stat))
        ra = np.array([quantity(real_rows[k], name) for k in half_a if quantity(real_rows[k], name) is not None])
        rb = np.array([quantity(real_rows[k], name) for k in half_b if quantity(real_rows[k], name) is not None])
        entry["floor"] = _quantity_w1(ra, rb, halves)
        quantities[name] = entry

    real_lung = quantities["lung_ml"]["real"]["mean"]
    syn_lung = quantities["lung_ml"]["synthetic"]["mean"]
    summary = {
        "two_lungs_share_real": _counts(real_rows)["2_lungs"] / len(real_rows),
        "two_lungs_share_synthetic": _counts(syn_rows)["2_lungs"] / len(syn_rows),
        "lung_volume_ratio": syn_lung / real_lung if real_lung else None,
        "lung_volume_ratio_note": "mean synthetic / mean real total lung volume (None: no real lungs)",
    }
    return {
        "hu_window": [float(v) for v in hu_window],
        "clipping": (f"HU through the window {list(hu_window)}: values above {hu_window[1]} read as "
                     f"{hu_window[1]} (bone is truncated), values below {hu_window[0]} as {hu_window[0]} "
                     "(the air class merges everything at or below it)"),
        "thresholds": {"body_hu": BODY_HU, "air_like_hu": AIR_LIKE_HU, "min_body_ml": MIN_BODY_ML,
                       "min_lung_ml": MIN_LUNG_ML, "min_body_sphericity": MIN_BODY_SPHERICITY,
                       "lung_share": [MIN_LUNG_SHARE, MAX_LUNG_SHARE], "min_lung_sphericity": MIN_LUNG_SPHERICITY,
                       "min_lung_side_share": MIN_SIDE_SHARE},
        "counts": {"real": _counts(real_rows), "synthetic": _counts(syn_rows)},
        "summary": summary,
        "classes": classes,
        "quantities": quantities,
        "bootstrap": dict(boot, resampled="the volumes of both sets, independently"),
        "floor_halves": {"n_a": len(half_a), "n_b": len(half_b), "seed": seed},
        "histograms": {"first_hu": first, "bin_hu": 1, "real": real_hist.sum(0).tolist(),
                       "synthetic": syn_hist.sum(0).tolist()},
    }


_SHARED: tuple = ()  # (volumes, affines, hu_window) in a worker of anatomy_rows


def _shared_volumes(volumes: np.ndarray, affines: Sequence[np.ndarray], hu_window: tuple[float, float]) -> None:
    """Worker initialiser: the volumes a forked worker measures, inherited from its parent without a copy."""
    global _SHARED
    _SHARED = (volumes, affines, hu_window)


def _measure(k: int) -> tuple[dict, np.ndarray]:
    volumes, affines, hu_window = _SHARED
    return volume_anatomy(volumes[k], affines[k], hu_window)


def anatomy_rows(volumes: Sequence[np.ndarray], affines: Sequence[np.ndarray], hu_window: tuple[float, float], *,
                 workers: int = 1) -> list[tuple[dict, np.ndarray]]:
    """``volume_anatomy`` of every volume ([X, Y, Z] each, one affine each), in order, on ``workers`` processes.

    Each volume is measured alone by the same function, so the results do not depend on ``workers``. Workers
    are forked (where the platform can fork; threads otherwise), so they read the volumes from the parent's
    memory: forked, not spawned, because spawning would rerun the calling script (a Snakemake script has no
    ``__main__`` guard). They only run numpy and scipy.ndimage, never torch or CUDA, which forking leaves safe.
    At most one worker per ``VOXELS_PER_WORKER`` voxels is started: starting one costs more than small
    volumes take (32 volumes of 32³ ran 2.4 times slower on two processes than on one).
    """
    voxels = sum(int(np.prod(v.shape)) for v in volumes)
    workers = max(1, min(int(workers), len(volumes), voxels // VOXELS_PER_WORKER))
    if workers == 1:
        return [volume_anatomy(v, a, hu_window) for v, a in zip(volumes, affines)]
    chunk = max(1, len(volumes) // (4 * workers))
    if "fork" in multiprocessing.get_all_start_methods():
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                 initializer=_shared_volumes, initargs=(volumes, list(affines), hu_window)) as pool:
            return list(pool.map(_measure, range(len(volumes)), chunksize=chunk))
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda k: volume_anatomy(volumes[k], affines[k], hu_window), range(len(volumes))))


def evaluate_anatomy(
    real: np.ndarray, real_affines: Sequence[np.ndarray], real_names: Sequence[str],
    synthetic: np.ndarray, syn_affines: Sequence[np.ndarray], syn_names: Sequence[str], *,
    hu_window: tuple[float, float], seed: int, n_boot: int, level: float, workers: int = 1,
) -> dict:
    """``volume_anatomy`` of every volume ([N, X, Y, Z] in [0, 1], one affine each; on ``workers``
    processes, :func:`anatomy_rows`) and :func:`compare_anatomy`; the per-volume rows go under ``per_volume``
    with the volume's name."""
    results = anatomy_rows([*real, *synthetic], [*real_affines, *syn_affines], hu_window, workers=workers)
    per_volume, hists = {}, {}
    for kind, names, part in (("real", real_names, results[:len(real)]), ("synthetic", syn_names, results[len(real):])):
        per_volume[kind] = [{"volume": name, **row} for name, (row, _) in zip(names, part)]
        hists[kind] = np.stack([h for _, h in part]) if part else np.zeros((0, hu_bins(hu_window)[1]), np.int64)
    out = compare_anatomy(per_volume["real"], hists["real"], per_volume["synthetic"], hists["synthetic"],
                          hu_window=hu_window, seed=seed, n_boot=n_boot, level=level)
    out["per_volume"] = per_volume
    return out


def read_affines(paths: Sequence[Path]) -> list[np.ndarray]:
    """The 4×4 affine of every NIfTI file (its header only)."""
    return [nib.load(str(p)).affine for p in paths]
