"""Bootstrap confidence intervals for FID and for the nearest-real MS-SSIM mean.

B replicates θ*_b are computed on sets resampled with replacement (Efron & Tibshirani 1993, ch. 13): for FID
both feature sets are resampled independently, for the MS-SSIM mean the per-sample values.

- The MS-SSIM mean is unbiased, and its interval is the plain percentile interval [q_{α/2}(θ*), q_{1−α/2}(θ*)].
- FID is not: resampling adds sampling noise to both sets' means and covariances, and FID, a squared
  distance, grows with that noise, so the replicates lie above the point estimate on average (with few volumes
  per feature dimension often by more than their spread) and the plain percentile interval can miss the point
  estimate altogether. Its interval is the percentile interval shifted by the bootstrap estimate of the bias,
  b = mean(θ*) − θ̂, with the lower end kept ≥ 0 (FID cannot be negative):

      [max(0, q_{α/2}(θ*) − b),  q_{1−α/2}(θ*) − b]                                               (1)

- The diversity MS-SSIM is a mean over pairs {i, j} of distinct synthetic volumes, and pairs that share a
  volume are not independent, so the volumes are resampled, not the pairs: a replicate draws N volumes with
  replacement, volume k drawn c_k times, and takes the mean over the evaluated pairs P of every pair of drawn
  copies of distinct volumes,

      θ* = Σ_{{i,j}∈P} c_i c_j v_ij / Σ_{{i,j}∈P} c_i c_j                                             (2)

  (the resampled set's own pair mean restricted to pairs whose value is known). A draw in which no
  evaluated pair has both volumes drawn (possible only for very few volumes) is drawn again. Percentile
  interval.

The interval describes sampling variation of the volumes, not the upward bias FID has at finite N (compare
runs with equal N, and see the real-vs-real floor).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ctdiff.config import check_bootstrap
from ctdiff.metrics.fid import fid_sample_space

PERCENTILE = "percentile interval"
SHIFTED = "percentile interval shifted by the bootstrap bias estimate (mean of replicates - point estimate)"


def bootstrap_ci(
    point: float,
    n_boot: int,
    statistic: Callable[[np.random.Generator], float],
    seed: int,
    level: float = 0.95,
    *,
    shift_bias: bool = False,
    floor: float | None = None,
) -> dict:
    """Interval from ``n_boot`` replicates ``statistic(rng)``, one rng = ``numpy.random.default_rng(seed)``
    drawn from in replicate order: the percentile interval, or with ``shift_bias`` Eq. (1), its lower end
    raised to ``floor`` where given.
    Returns {'low', 'high', 'bias' (mean of replicates − point), 'level', 'n_boot', 'seed', 'method'}."""
    check_bootstrap(n_boot, level, least=1, names=("n_boot", "level"))
    rng = np.random.default_rng(seed)
    replicates = np.array([statistic(rng) for _ in range(n_boot)], dtype=np.float64)
    alpha = 1.0 - level
    lo, hi = (float(q) for q in np.quantile(replicates, [alpha / 2, 1 - alpha / 2]))
    bias = float(replicates.mean() - point)
    if shift_bias:
        lo, hi = lo - bias, hi - bias
    if floor is not None:
        lo = max(lo, floor)
    return {"low": lo, "high": hi, "bias": bias, "level": level, "n_boot": n_boot, "seed": seed,
            "method": SHIFTED if shift_bias else PERCENTILE}


def fid_ci(feats_a: np.ndarray, feats_b: np.ndarray, point: float, *, n_boot: int = 200, seed: int = 0,
           level: float = 0.95) -> dict:
    """Bootstrap interval (1) of FID: each replicate resamples the rows of ``feats_a`` [N_a, C] and ``feats_b``
    [N_b, C] with replacement and evaluates ``fid_sample_space``."""
    a, b = np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)

    def replicate(rng: np.random.Generator) -> float:
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        return fid_sample_space(a[ia], b[ib])

    return bootstrap_ci(point, n_boot, replicate, seed, level, shift_bias=True, floor=0.0)


def mean_ci(values: np.ndarray, *, n_boot: int = 200, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap interval of the mean of ``values`` [N] (resampled with replacement)."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError(f"expected a non-empty 1-D array of values, got shape {v.shape}")
    return bootstrap_ci(float(v.mean()), n_boot, lambda rng: float(v[rng.integers(0, len(v), len(v))].mean()),
                        seed, level)


def pair_mean_ci(values: np.ndarray, pairs: np.ndarray, n_items: int, *, n_boot: int = 200, seed: int = 0,
                 level: float = 0.95, max_redraws: int = 1000) -> dict:
    """Percentile bootstrap interval of a mean over pairs of distinct items, Eq. (2): ``values`` [K] belong to
    ``pairs`` [K, 2] (indices into ``n_items`` items, i ≠ j); each replicate resamples the items with
    replacement. A replicate whose weights Σ c_i c_j vanish is redrawn, at most ``max_redraws`` times."""
    v = np.asarray(values, np.float64)
    p = np.asarray(pairs, np.int64).reshape(-1, 2)
    if v.ndim != 1 or len(v) == 0 or len(p) != len(v):
        raise ValueError(f"expected K >= 1 values and K pairs, got shapes {v.shape} and {np.shape(pairs)}")
    if (p[:, 0] == p[:, 1]).any() or p.min() < 0 or p.max() >= n_items:
        raise ValueError(f"pairs must join two distinct items among {n_items}")

    def replicate(rng: np.random.Generator) -> float:
        for _ in range(max_redraws):
            counts = np.bincount(rng.integers(0, n_items, n_items), minlength=n_items).astype(np.float64)
            weights = counts[p[:, 0]] * counts[p[:, 1]]
            if weights.sum() > 0:
                return float(weights @ v / weights.sum())
        raise ValueError(f"{max_redraws} draws of {n_items} items in a row drew no evaluated pair")

    return bootstrap_ci(float(v.mean()), n_boot, replicate, seed, level)
