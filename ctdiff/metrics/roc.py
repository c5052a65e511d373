"""How well a score tells two groups apart: the ROC AUC, the true-positive rate at a fixed false-positive rate,
and their bootstrap intervals (used by the membership-inference audit, :mod:`ctdiff.metrics.membership`).

Notation: ``pos`` [n₁] are the scores of the positives (training volumes, members), ``neg`` [n₀] those of the
negatives (held-out volumes); a higher score means "more likely a positive".

- AUC, the Mann–Whitney statistic (Hanley & McNeil 1982), ties counted half:

      AUC = (1 / (n₁ n₀)) Σᵢ Σⱼ [pos_i > neg_j] + ½ [pos_i = neg_j]                                   (1)

  computed from average ranks r of the pooled scores: AUC = (Σᵢ r(pos_i) − n₁(n₁ + 1)/2) / (n₁ n₀).
  0.5 = the score carries no information; 1 = every positive scores above every negative.
- TPR at FPR α (Carlini et al. 2022/2023: an attack that finds a few members with certainty matters even when
  its AUC is near 0.5): the largest share of positives an operating point of the empirical ROC catches while
  flagging at most a share α of the negatives. With k = ⌊α n₀⌋ negatives allowed, the threshold sits just
  above the (k+1)-th highest negative score s₍ₖ₊₁₎, and

      TPR@α = (1 / n₁) Σᵢ [pos_i > s₍ₖ₊₁₎]                                                           (2)

  (1 when k ≥ n₀). Where α < 1/n₀, k = 0: TPR@α is the TPR at zero false positives, the lowest FPR the
  negatives can show, which is conservative (it never exceeds the TPR at FPR α proper).
- Intervals: percentile bootstrap (:func:`ctdiff.metrics.bootstrap.bootstrap_ci`) resampling positives and
  negatives independently with replacement, each group keeping its size (the groups are sampled
  separately, as the FID interval's two feature sets are).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata

from ctdiff.metrics.bootstrap import bootstrap_ci

#: The false-positive rates the audit reports a TPR at (Carlini et al.: low FPR, not only the AUC), and the key
#: each is stored under.
FPRS: dict[str, float] = {"tpr_at_fpr_1pct": 0.01, "tpr_at_fpr_10pct": 0.10}


def _groups(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    p, n = np.asarray(pos, np.float64), np.asarray(neg, np.float64)
    if p.ndim != 1 or n.ndim != 1 or not len(p) or not len(n):
        raise ValueError(f"expected two non-empty 1-D score arrays, got shapes {p.shape} and {n.shape}")
    if not (np.isfinite(p).all() and np.isfinite(n).all()):
        raise ValueError("scores must be finite")
    return p, n


def auc(pos, neg) -> float:
    """Eq. (1): the probability that a random positive scores above a random negative, ties counted half."""
    p, n = _groups(pos, neg)
    ranks = rankdata(np.concatenate([p, n]))  # average ranks: a tie adds ½ to each side
    return float((ranks[: len(p)].sum() - len(p) * (len(p) + 1) / 2) / (len(p) * len(n)))


def tpr_at_fpr(pos, neg, fpr: float) -> float:
    """Eq. (2): the share of positives caught at a threshold that flags at most ``fpr`` of the negatives."""
    p, n = _groups(pos, neg)
    if not 0.0 <= fpr < 1.0:
        raise ValueError(f"fpr={fpr} must lie in [0, 1)")
    k = math.floor(fpr * len(n) + 1e-9)  # negatives allowed above the threshold (1e-9: 0.1 · 10 is 1, not 0.999…)
    if k >= len(n):
        return 1.0
    cut = np.sort(n)[::-1][k]
    return float((p > cut).mean())


def separation(pos, neg, *, n_boot: int = 200, level: float = 0.95, seed: int = 0) -> dict:
    """The AUC and the TPR at each of :data:`FPRS`, with bootstrap intervals from ``n_boot`` replicates
    (0 = none; then ``intervals`` is absent).

    Returns ``{"auc", "tpr_at_fpr_1pct", "tpr_at_fpr_10pct", "n_positive", "n_negative", "fpr_resolution"
    (1/n₀: the smallest non-zero FPR the negatives can show), "intervals": {key: {"low", "high", "bias",
    "method"}}}``. Every interval draws the same resampled groups (one seed, the same draws in the same order).
    """
    p, n = _groups(pos, neg)
    statistics: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {"auc": auc}
    for key, alpha in FPRS.items():
        statistics[key] = lambda a, b, alpha=alpha: tpr_at_fpr(a, b, alpha)
    out: dict = {key: f(p, n) for key, f in statistics.items()}
    out.update(n_positive=len(p), n_negative=len(n), fpr_resolution=1.0 / len(n))
    if n_boot:
        out["intervals"] = {}
        for key, f in statistics.items():
            def replicate(rng: np.random.Generator, f=f) -> float:
                return f(p[rng.integers(0, len(p), len(p))], n[rng.integers(0, len(n), len(n))])

            ci = bootstrap_ci(out[key], n_boot, replicate, seed, level)
            out["intervals"][key] = {k: ci[k] for k in ("low", "high", "bias", "method")}
    return out
