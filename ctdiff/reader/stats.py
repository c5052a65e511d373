"""The statistics of a reader study, each a small function checked against textbook values (tests/test_reader_stats.py).

"Positive" means synthetic: sensitivity is the share of synthetic cases a reader called synthetic, specificity
the share of real cases called real.

- Proportions carry exact Clopper–Pearson intervals (statsmodels ``proportion_confint(method="beta")``).
- Against chance: the two-sided exact binomial test of accuracy against 50 % (``scipy.stats.binomtest``),
  what visual Turing tests report, and Fisher's exact test of answer against truth (``scipy.stats.fisher_exact``),
  which stays valid when the mix is not 50/50 or a reader favours one answer (a reader who always says
  "real" scores 67 % on a study with one synthetic case in three, and the binomial test calls it skill).
- ROC AUC from the ratings mapped to 10 levels (:func:`score`), the Mann–Whitney estimate with DeLong's
  variance (DeLong, DeLong & Clarke-Pearson 1988, Biometrics 44:837) and a normal interval clipped to [0, 1].
- Fleiss' kappa (Fleiss 1971) for agreement among several readers (statsmodels ``fleiss_kappa``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.inter_rater import aggregate_raters
from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

ANSWERS = ("real", "synthetic")


def score(answer: str, confidence: int) -> int:
    """The 10-level rating of an answer: "real" with confidence 5 → 1 (surely real) … "real", 1 → 5,
    "synthetic", 1 → 6 … "synthetic", 5 → 10 (surely synthetic)."""
    if answer not in ANSWERS or confidence not in (1, 2, 3, 4, 5):
        raise ValueError(f"answer {answer!r} with confidence {confidence!r}: expected real/synthetic and 1-5")
    return 5 + confidence if answer == "synthetic" else 6 - confidence


def proportion(k: int, n: int, level: float) -> dict:
    """``k`` of ``n`` with its Clopper–Pearson interval at ``level``; estimate and interval None when n = 0."""
    if n == 0:
        return {"k": 0, "n": 0, "estimate": None, "low": None, "high": None}
    low, high = proportion_confint(k, n, alpha=1 - level, method="beta")
    return {"k": int(k), "n": int(n), "estimate": k / n, "low": float(low), "high": float(high)}


def binomial_p(k: int, n: int) -> float | None:
    """Two-sided exact binomial p of ``k`` successes in ``n`` against 50 %; None when n = 0."""
    return float(stats.binomtest(k, n, 0.5).pvalue) if n else None


def fisher_p(truth: Sequence[str], answers: Sequence[str]) -> float | None:
    """Two-sided Fisher exact p of the 2×2 table answer × truth (independence = no ability to tell them
    apart); None when one truth or one answer is missing from the data (the table has an empty margin)."""
    table = np.array([[sum(t == a and x == b for t, x in zip(truth, answers)) for b in ANSWERS] for a in ANSWERS])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        return None
    return float(stats.fisher_exact(table).pvalue)


def auc_delong(positive: Sequence[float], negative: Sequence[float], level: float) -> dict:
    """ROC AUC of ratings, higher = more surely positive: the Mann–Whitney estimate
    A = mean ψ(x_i, y_j), ψ = 1 if x > y, 1/2 if equal, 0 else, over positives x (m) and negatives y (n).

    DeLong's variance: V10_i = mean_j ψ(x_i, y_j), V01_j = mean_i ψ(x_i, y_j), var A = s²(V10)/m + s²(V01)/n
    (sample variances). The interval A ± z·se is clipped to [0, 1]; se and interval are None when a class has
    fewer than 2 ratings."""
    x, y = np.asarray(positive, float), np.asarray(negative, float)
    if not len(x) or not len(y):
        return {"auc": None, "se": None, "low": None, "high": None, "m": len(x), "n": len(y)}
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    auc = float(psi.mean())
    out = {"auc": auc, "se": None, "low": None, "high": None, "m": len(x), "n": len(y)}
    if len(x) >= 2 and len(y) >= 2:
        var = psi.mean(axis=1).var(ddof=1) / len(x) + psi.mean(axis=0).var(ddof=1) / len(y)
        se = float(np.sqrt(var))
        z = stats.norm.ppf(0.5 + level / 2)
        out.update(se=se, low=float(max(0.0, auc - z * se)), high=float(min(1.0, auc + z * se)))
    return out


def fleiss_kappa(ratings: np.ndarray) -> float:
    """Fleiss' kappa of a subjects × raters array of category labels (every subject rated by every rater)."""
    table, _ = aggregate_raters(np.asarray(ratings))
    return float(_fleiss_kappa(table, method="fleiss"))
