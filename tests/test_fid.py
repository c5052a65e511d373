"""Fréchet distance against closed forms and an independent matrix square root."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from ctdiff.metrics.fid import fid_from_features, fid_sample_space, frechet_distance


def _random_spd(rng, n, rank=None):
    a = rng.standard_normal((n, rank or n))
    return a @ a.T / n + (0 if rank else 0.1 * np.eye(n))


def test_diagonal_covariances_closed_form():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    s1, s2 = rng.random(6) + 0.1, rng.random(6)
    s2[0] = 0.0  # a singular covariance is fine
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_one_dimensional_gaussians():
    # W2² between N(1, 4) and N(-2, 9) = 3² + (2 - 3)²
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(10.0, rel=1e-12)


def test_commuting_full_covariances():
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    a, b = rng.random(8) + 0.05, rng.random(8) + 0.05
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.standard_normal(8)
    expected = np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=1e-10)


def test_non_commuting_against_scipy_sqrtm():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 10), _random_spd(rng, 10)
    assert not np.allclose(s1 @ s2, s2 @ s1)
    mu1, mu2 = rng.standard_normal(10), rng.standard_normal(10)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-12)


def test_rank_deficient_commuting_case():
    """Covariances of rank 3 in 12 dimensions sharing eigenvectors: the exact answer is known."""
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    a, b = np.zeros(12), np.zeros(12)
    a[:3], b[1:4] = rng.random(3) + 0.5, rng.random(3) + 0.5
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum(a + b - 2 * np.sqrt(a * b))
    assert frechet_distance(np.zeros(12), s1, np.zeros(12), s2) == pytest.approx(expected, rel=1e-9)


def test_fid_from_features_identity_symmetry_and_flags():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((20, 64)) * 3 + 1
    b = rng.standard_normal((30, 64))
    same = fid_from_features(a, a)
    assert 0.0 <= same["fid"] < 1e-9 * np.trace(np.cov(a, rowvar=False))  # a squared distance: never below 0
    assert same["rank_deficient"] is True and same["dim"] == 64 and same["n_a"] == 20
    ab, ba = fid_from_features(a, b)["fid"], fid_from_features(b, a)["fid"]
    assert ab == pytest.approx(ba, rel=1e-10) and ab > 0
    # independent computation from the raw features
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s1) + np.trace(s2)
    ref -= 2 * np.sum(np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)))
    assert ab == pytest.approx(ref, rel=1e-6)
    full = fid_from_features(rng.standard_normal((40, 4)), rng.standard_normal((40, 4)))
    assert full["rank_deficient"] is False


@pytest.mark.parametrize("seed", range(4))
def test_identical_sets_never_go_negative(seed):
    """The cancellation μ·μ + tr Σ₁ + tr Σ₂ − 2 tr √(Σ₁Σ₂) leaves round-off of either sign for equal sets (which
    sign depends on the CPU's kernels); the estimate, like its bootstrap interval, is clipped at 0."""
    a = np.random.default_rng(seed).standard_normal((6, 512))
    assert 0.0 <= fid_sample_space(a, a) < 1e-9 * a.var(0).sum()
    assert 0.0 <= frechet_distance(a.mean(0), np.cov(a, rowvar=False), a.mean(0), np.cov(a, rowvar=False))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\[N_a, C\]"):
        fid_from_features(np.zeros((4, 3)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="not finite"):
        frechet_distance(np.zeros(2), np.full((2, 2), np.nan), np.zeros(2), np.eye(2))
