"""Kernel Inception Distance (KID, Bińkowski et al. 2018, "Demystifying MMD GANs", Sec. 4) on Med3D features.

With feature sets X = {x_i} [m, d] and Y = {y_j} [n, d] and the cubic polynomial kernel

    k(x, y) = (xᵀy / d + 1)³                                                                     (1)

the unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, Lemma 6) is

    MMD²_u(X, Y) = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mn) Σ_{i,j} k(x_i, y_j)   (2)

whose expectation is the population MMD² = E k(x, x') + E k(y, y') − 2 E k(x, y) exactly, at every m and n: it
is centred on 0 when both sets come from one distribution (and can then be negative), where FID, a plug-in
estimate, is biased upward by an amount that falls with N. KID is the mean of (2) over S subsets,

    KID = (1/S) Σ_s MMD²_u(X_s, Y_s),   X_s ⊂ X, Y_s ⊂ Y of size b each                              (3)

each subset drawn without replacement, independently of the others, from ``numpy.random.default_rng(seed)``
(X's indices, then Y's, subset after subset). Averaging subsets only lowers the variance of (2); the mean
does not depend on b. ``std`` is the sample standard deviation (ddof = 1) of the S subset values, as Bińkowski
et al. report it: subsets overlap, so it describes the spread of one subset's estimate, not the standard
error of the mean (for that use the bootstrap interval, :func:`kid_ci`). Everything is float64; the three
kernel matrices are computed once, and every subset and bootstrap replicate reads them through count vectors
(``_subset_values``).

Identical sets. For X = Y (b = N, any order) the u-statistic (2) is not 0 but

    MMD²_u(X, X) = −2/(N−1) · [ (1/N) Σ_i K_ii − (1/N²) Σ_{i,j} K_ij ] ≤ 0,   K_ij = k(x_i, x_j)       (4)

(the bracket is the mean squared distance of the points from their mean in the kernel's feature space, ≥ 0
since K is positive semi-definite): the estimator's zero is its expectation, not its value on one set.
"""

from __future__ import annotations

import numpy as np

from ctdiff.metrics.bootstrap import bootstrap_ci


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kernel (1) between the rows of ``x`` [m, d] and ``y`` [n, d] → [m, n] float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    """Eq. (2) from the kernel matrices k(X, X) [m, m], k(Y, Y) [n, n] and k(X, Y) [m, n] (m, n ≥ 2)."""
    m, n = kxy.shape
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def _check(a: np.ndarray, b: np.ndarray, subset_size: int, subsets: int) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature arrays [N_a, C] and [N_b, C], got {a.shape} and {b.shape}")
    if subsets < 1:
        raise ValueError(f"KID needs at least 1 subset, got subsets={subsets}")
    if subset_size < 2:
        raise ValueError(f"KID needs subsets of at least 2 samples (Eq. 2 divides by m(m-1)), got {subset_size}")
    if subset_size > min(len(a), len(b)):
        raise ValueError(f"KID subset size {subset_size} exceeds the smaller set ({len(a)} and {len(b)} samples): "
                         "subsets are drawn without replacement")


def _counts(rows: np.ndarray, n: int) -> np.ndarray:
    """[S, m] row indices → [S, n] float64 counts of each row per subset."""
    flat = (np.arange(len(rows))[:, None] * n + rows).ravel()
    return np.bincount(flat, minlength=len(rows) * n).reshape(len(rows), n).astype(np.float64)


def _subset_values(kxx, kyy, kxy, ia: np.ndarray, ib: np.ndarray, subset_size: int, subsets: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Eq. (2) on ``subsets`` subsets of ``subset_size`` positions of the index arrays ``ia``, ``ib`` (rows of the
    kernel matrices; a bootstrap replicate passes resampled ones, repeats included), drawn in order: X's
    positions, then Y's, subset after subset.

    With c [N_a] counting how often each row of X is in a subset, the sum of k over ordered pairs of distinct
    positions is cᵀ K c − Σ_i c_i K_ii (a row drawn twice pairs with itself, as distinct positions should), and
    the cross sum is c_aᵀ K_xy c_b: three [S, N] × [N, N] products instead of S gathers of [m, m] blocks."""
    m = subset_size
    draws = [(ia[rng.choice(len(ia), m, replace=False)], ib[rng.choice(len(ib), m, replace=False)])
             for _ in range(subsets)]
    ca = _counts(np.array([d[0] for d in draws]), kxx.shape[0])
    cb = _counts(np.array([d[1] for d in draws]), kyy.shape[0])
    xx = (((ca @ kxx) * ca).sum(1) - ca @ np.diagonal(kxx)) / (m * (m - 1))
    yy = (((cb @ kyy) * cb).sum(1) - cb @ np.diagonal(kyy)) / (m * (m - 1))
    xy = ((ca @ kxy) * cb).sum(1) / (m * m)
    return xx + yy - 2.0 * xy


def _kernels(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)


def kid_from_features(a: np.ndarray, b: np.ndarray, *, subset_size: int, subsets: int, seed: int) -> dict:
    """KID (3) between feature sets ``a`` [N_a, C] and ``b`` [N_b, C] over ``subsets`` subsets of ``subset_size``
    (2 ≤ subset_size ≤ min(N_a, N_b), else ValueError).

    Returns {'mean', 'std' (over subsets, ddof = 1; 0 for one subset), 'subset_size', 'subsets'}."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check(a, b, subset_size, subsets)
    values = _subset_values(*_kernels(a, b), np.arange(len(a)), np.arange(len(b)), subset_size, subsets,
                            np.random.default_rng(seed))
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if subsets > 1 else 0.0,
            "subset_size": int(subset_size), "subsets": int(subsets)}


def kid_ci(a: np.ndarray, b: np.ndarray, point: float, *, subset_size: int, subsets: int, n_boot: int = 200,
           seed: int = 0, level: float = 0.95) -> dict:
    """Bootstrap interval of KID (3), like FID's (``ctdiff.metrics.bootstrap.fid_ci``): each replicate resamples
    the rows of ``a`` and ``b`` with replacement and recomputes (3) with its own subsets.

    A resampled set repeats rows, and a repeated row turns off-diagonal terms of (2) into diagonal ones, which
    are larger on average (Cauchy–Schwarz), so the replicates lie above the estimate by about
    Σ_sets (1/N) [mean_i K_ii − mean_{i≠j} K_ij]: the interval is the percentile interval shifted by the
    bootstrap bias estimate, Eq. (1) of ``ctdiff.metrics.bootstrap``, without a lower bound (KID can be
    negative)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    _check(a, b, subset_size, subsets)
    kxx, kyy, kxy = _kernels(a, b)

    def replicate(rng: np.random.Generator) -> float:
        ia = rng.integers(0, len(a), len(a))
        ib = rng.integers(0, len(b), len(b))
        return float(_subset_values(kxx, kyy, kxy, ia, ib, subset_size, subsets, rng).mean())

    return bootstrap_ci(point, n_boot, replicate, seed, level, shift_bias=True)


def kid_real_floor(feats_real: np.ndarray, half_a: np.ndarray, half_b: np.ndarray, *, subset_size: int,
                   subsets: int, seed: int) -> dict:
    """KID (3) between two halves of the real features (index arrays ``half_a``, ``half_b``), the real-vs-real
    floor: its expectation is 0, so it shows how far from 0 a set of this size lands by chance. The subset size
    is min(``subset_size``, smaller half), which leaves the expectation unchanged (3)."""
    size = min(subset_size, len(half_a), len(half_b))
    out = kid_from_features(feats_real[half_a], feats_real[half_b], subset_size=size, subsets=subsets, seed=seed)
    if size < subset_size:
        out["note"] = f"subset size {size}, not {subset_size}: a half has {min(len(half_a), len(half_b))} volumes"
    return out


def cubic_kernel_mean_gaussian(mu_x: np.ndarray, mu_y: np.ndarray, sigma_x: float, sigma_y: float) -> float:
    """E k(x, y) under (1) for independent x ~ N(mu_x, sigma_x² I), y ~ N(mu_y, sigma_y² I) in d dimensions.

    With x = μ_x + σ_x z, y = μ_y + σ_y z' (z, z' standard normal), W = xᵀy = s + A + B where s = μ_xᵀμ_y,
    A = σ_y μ_xᵀz' + σ_x μ_yᵀz ~ N(0, σ_y²|μ_x|² + σ_x²|μ_y|²) and B = σ_xσ_y zᵀz'. Odd moments in (z, z')
    vanish, E B² = σ_x²σ_y² d and E A²B = 2σ_x²σ_y² s, so E W = s, E W² = s² + v with v = Var A + E B², and
    E W³ = s³ + 3 s v + 6 σ_x²σ_y² s; then E (W/d + 1)³ = 1 + 3 E W/d + 3 E W²/d² + E W³/d³. The population
    MMD² of two such Gaussians is mean(X, X') + mean(Y, Y') − 2 mean(X, Y) of this function.
    """
    mu_x, mu_y = np.asarray(mu_x, np.float64), np.asarray(mu_y, np.float64)
    d = len(mu_x)
    s = float(mu_x @ mu_y)
    v = sigma_y**2 * float(mu_x @ mu_x) + sigma_x**2 * float(mu_y @ mu_y) + sigma_x**2 * sigma_y**2 * d
    w1, w2, w3 = s, s**2 + v, s**3 + 3 * s * v + 6 * sigma_x**2 * sigma_y**2 * s
    return 1 + 3 * w1 / d + 3 * w2 / d**2 + w3 / d**3
