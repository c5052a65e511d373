"""Fréchet distance between Gaussian fits of two feature sets (FID, Heusel et al. 2017, Eq. 6).

    d² = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)                                           (1)

The trace of the matrix square root is computed without forming (Σ₁ Σ₂)^½. Σ₁Σ₂ = Σ₁^½ (Σ₁^½ Σ₂) has the
same eigenvalues as Σ₁^½ Σ₂ Σ₁^½ = M Mᵀ with M = Σ₁^½ Σ₂^½, and those eigenvalues are the squared singular
values σᵢ² of M, so

    Tr (Σ₁ Σ₂)^½ = Σᵢ σᵢ(Σ₁^½ Σ₂^½) = ‖Σ₁^½ Σ₂^½‖_*   (nuclear norm)                            (2)

Σ^½ comes from a symmetric eigendecomposition in which eigenvalues below the numerical-rank tolerance
C·ε·λ_max are set to 0. Unlike ``scipy.linalg.sqrtm(Σ₁ Σ₂)`` this is real by construction and needs no
ε-offset retry. It matters for the rank-deficient covariances of 500 samples of 2048-d features: there the
square roots of round-off eigenvalues (~ε·λ_max, either sign) would each add ~√ε·λ_max to the trace, whereas
here the error stays of order C·ε·Tr Σ (FID(a, a) ≈ 0 to ~1e-12 relative). Everything is float64.

Sample-space form (``fid_sample_space``, used for the many bootstrap replicates). With centred, scaled
features A = (X_a − μ_a)/√(N_a − 1) [N_a, C], Σ₁ = AᵀA and likewise Σ₂ = BᵀB. The nonzero eigenvalues of
Σ₁Σ₂ = AᵀA BᵀB equal those of A BᵀB Aᵀ = (ABᵀ)(ABᵀ)ᵀ, so

    Tr (Σ₁ Σ₂)^½ = ‖A Bᵀ‖_*,   Tr Σ₁ = ‖A‖_F²,   Tr Σ₂ = ‖B‖_F²                                    (3)

which needs one [N_a, N_b] SVD instead of two [C, C] eigendecompositions: for 500 samples of 2048-d
features a few hundredths of a second instead of seconds. ``fid_from_features`` takes whichever form has the
smaller matrices (the sample-space one whenever N_a·N_b < C²).
"""

from __future__ import annotations

import numpy as np


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix [C, C].

    Eigenvalues below C·ε·λ_max (numpy's numerical-rank tolerance) are round-off of zero and set to 0.
    """
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    tol = sigma.shape[0] * np.finfo(np.float64).eps * np.abs(w).max(initial=0.0)
    return (v * np.sqrt(np.where(w > tol, w, 0.0))) @ v.T


def _check(mu: np.ndarray, sigma: np.ndarray, name: str) -> None:
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu [C] and sigma [C, C], got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance is not finite")


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet distance (1) between N(mu1 [C], sigma1 [C, C]) and N(mu2, sigma2), via Eq. (2).

    Symmetric in its two Gaussians; ≥ 0 up to round-off (tiny negatives are returned as they are).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    _check(mu1, sigma1, "first Gaussian")
    _check(mu2, sigma2, "second Gaussian")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]}")
    tr_sqrt = np.linalg.svd(_psd_sqrt(sigma1) @ _psd_sqrt(sigma2), compute_uv=False).sum()
    diff = mu1 - mu2
    # A squared distance: round-off in the cancellation can leave a tiny negative value for (nearly) equal
    # Gaussians, which depends on the CPU's kernels; the estimate is clipped at 0, as its intervals are.
    return max(0.0, float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_sqrt))


def fid_from_features(a: np.ndarray, b: np.ndarray) -> dict:
    """FID between feature sets ``a`` [N_a, C] and ``b`` [N_b, C] (unbiased covariances, ddof = 1).

    Computed in sample space, Eq. (3), when N_a·N_b < C², else from the covariances, Eq. (2); both give the
    same number up to round-off.
    Returns {'fid', 'n_a', 'n_b', 'dim', 'rank_deficient'}; ``rank_deficient`` is True when either set has
    fewer than C + 1 samples, so its covariance is singular (the estimate is then biased upward more than usual
    and only comparable between runs with the same N).
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature arrays [N_a, C] and [N_b, C], got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    dim = a.shape[1]
    if a.shape[0] * b.shape[0] < dim * dim:
        fid = fid_sample_space(a, b)
    else:
        fid = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    return {
        "fid": fid,
        "n_a": int(a.shape[0]),
        "n_b": int(b.shape[0]),
        "dim": int(dim),
        "rank_deficient": bool(min(a.shape[0], b.shape[0]) < dim + 1),
    }


def fid_sample_space(a: np.ndarray, b: np.ndarray) -> float:
    """FID between feature sets ``a`` [N_a, C] and ``b`` [N_b, C] via Eq. (3); equals
    ``fid_from_features(a, b)['fid']`` up to round-off (unbiased covariances, ddof = 1)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected feature arrays [N_a, C] and [N_b, C], got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 samples per set, got {a.shape[0]} and {b.shape[0]}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca = (a - mu_a) / np.sqrt(a.shape[0] - 1)
    cb = (b - mu_b) / np.sqrt(b.shape[0] - 1)
    tr_sqrt = np.linalg.svd(ca @ cb.T, compute_uv=False).sum()
    diff = mu_a - mu_b
    return max(0.0, float(diff @ diff + (ca * ca).sum() + (cb * cb).sum() - 2.0 * tr_sqrt))  # clipped as above
