"""KID: Eq. (2) against a plain double loop and clean-fid's kernel distance, the closed forms for identical sets
(Eq. 4) and for shifted Gaussians, its bootstrap interval, and the refusal of a set smaller than the subset."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from ctdiff.metrics.kid import (
    cubic_kernel_mean_gaussian,
    kid_ci,
    kid_from_features,
    mmd2_unbiased,
    polynomial_kernel,
)

EPS = np.finfo(np.float64).eps


def _mmd2_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Eq. (2) term by term, written out with Python loops."""
    d = x.shape[1]

    def k(u, v):
        return (sum(float(p) * float(q) for p, q in zip(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def _tolerance(*sets: np.ndarray) -> float:
    """Round-off bound for Eq. (2): each kernel value carries a relative error of at most ~(d + 3)·ε (a d-term
    dot product, then a cube), and (2) is a signed sum of three means of such values, so its error is below
    4·(d + 3)·ε·max|k|, doubled for the summation order."""
    z = np.concatenate(sets)
    return 8 * (z.shape[1] + 3) * EPS * float(np.abs(polynomial_kernel(z, z)).max())


def _clean_fid_kernel_distance():
    """clean-fid's KID, ``cleanfid.fid.kernel_distance`` (numpy only). ``cleanfid.fid`` imports torchvision at
    module level for its image pipeline; where torchvision is not installed (no CPU wheel matches this torch)
    the function's definition is taken from the installed ``cleanfid/fid.py`` as it stands and run alone."""
    if importlib.util.find_spec("torchvision") is not None:
        from cleanfid.fid import kernel_distance
        return kernel_distance
    spec = importlib.util.find_spec("cleanfid")
    if spec is None:
        pytest.fail("clean-fid is not installed: pip install --no-deps clean-fid==0.1.35 (README, Run the tests)")
    source = Path(spec.submodule_search_locations[0], "fid.py").read_text()
    (node,) = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == "kernel_distance"]
    namespace = {"np": np}
    exec(compile(ast.Module([node], type_ignores=[]), "cleanfid/fid.py", "exec"), namespace)
    return namespace["kernel_distance"]


def test_unbiased_mmd2_equals_a_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((9, 5)), 0.4 + 1.3 * rng.standard_normal((7, 5))
    value = mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y))
    assert value == pytest.approx(_mmd2_double_loop(x, y), abs=_tolerance(x, y))
    # the whole set as one subset: KID is Eq. (2) itself, whatever order the subset is drawn in
    z = kid_from_features(x[:7], y, subset_size=7, subsets=3, seed=1)
    assert z["mean"] == pytest.approx(_mmd2_double_loop(x[:7], y), abs=_tolerance(x, y))
    assert z["std"] < _tolerance(x, y) and z["subset_size"] == 7 and z["subsets"] == 3


def test_matches_clean_fid_kernel_distance():
    kernel_distance = _clean_fid_kernel_distance()
    rng = np.random.default_rng(1)
    real, fake = rng.standard_normal((40, 16)), 0.2 + rng.standard_normal((30, 16))
    tol = _tolerance(real, fake)
    # One subset of every row: no randomness left, the two implementations of Eq. (2) must agree.
    whole = kernel_distance(real[:30], fake, num_subsets=1, max_subset_size=30)
    assert kid_from_features(real[:30], fake, subset_size=30, subsets=1, seed=0)["mean"] == pytest.approx(
        whole, abs=tol)
    # Its subsets: clean-fid draws from numpy's global generator, in each subset fake's rows then real's.
    np.random.seed(5)
    ours = []
    for _ in range(20):
        ib = np.random.choice(len(fake), 12, replace=False)
        ia = np.random.choice(len(real), 12, replace=False)
        a, b = real[ia], fake[ib]
        ours.append(mmd2_unbiased(polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)))
    np.random.seed(5)
    theirs = kernel_distance(real, fake, num_subsets=20, max_subset_size=12)
    assert np.mean(ours) == pytest.approx(theirs, abs=tol)


def test_identical_sets_give_the_closed_form():
    """Eq. (4): for X = Y the u-statistic is −2/(N−1) times the mean squared distance from the mean in the
    kernel's feature space, whatever order each subset of all N rows comes in."""
    x = np.random.default_rng(2).standard_normal((12, 6))
    K = polynomial_kernel(x, x)
    n = len(x)
    expected = -2.0 / (n - 1) * (np.trace(K) / n - K.sum() / n**2)
    assert expected < 0
    got = kid_from_features(x, x, subset_size=n, subsets=4, seed=3)
    assert got["mean"] == pytest.approx(expected, abs=_tolerance(x))
    assert got["mean"] == pytest.approx(_mmd2_double_loop(x, x), abs=_tolerance(x))


def test_same_distribution_is_centred_on_zero():
    """Two independent samples of one Gaussian: the mean of KID over R seeds lies within 4 standard errors of
    0 (a false failure has probability ~6e-5 for a normal mean; the seeds are fixed, so it is deterministic)."""
    rng = np.random.default_rng(4)
    values = np.array([kid_from_features(rng.standard_normal((20, 8)), rng.standard_normal((20, 8)),
                                         subset_size=10, subsets=5, seed=s)["mean"] for s in range(200)])
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 4 * se


def test_shifted_gaussians_match_the_population_mmd2():
    """x ~ N(0, I), y ~ N(δ·1, 1.2² I) in d = 6: the mean of KID over seeds agrees with the closed-form
    population MMD² within 4 standard errors, and is well away from 0."""
    d, delta, sy = 6, 0.5, 1.2
    mu_x, mu_y = np.zeros(d), np.full(d, delta)
    population = (cubic_kernel_mean_gaussian(mu_x, mu_x, 1.0, 1.0) + cubic_kernel_mean_gaussian(mu_y, mu_y, sy, sy)
                  - 2 * cubic_kernel_mean_gaussian(mu_x, mu_y, 1.0, sy))
    rng = np.random.default_rng(5)
    values = np.array([kid_from_features(rng.standard_normal((30, d)), mu_y + sy * rng.standard_normal((25, d)),
                                         subset_size=25, subsets=1, seed=s)["mean"] for s in range(300)])
    se = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean() - population) < 4 * se and population > 10 * se


def test_closed_form_kernel_mean_matches_monte_carlo():
    """The closed form E k(x, y) against a large sample (within 5 standard errors)."""
    rng = np.random.default_rng(6)
    d, n = 4, 200_000
    mu_x, mu_y = np.array([0.3, -0.2, 0.5, 0.0]), np.array([1.0, 0.4, -0.3, 0.2])
    x = mu_x + 0.7 * rng.standard_normal((n, d))
    y = mu_y + 1.3 * rng.standard_normal((n, d))
    k = ((x * y).sum(1) / d + 1) ** 3
    assert abs(k.mean() - cubic_kernel_mean_gaussian(mu_x, mu_y, 0.7, 1.3)) < 5 * k.std() / np.sqrt(n)


def test_seeded_and_subset_count_respected():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((30, 5)), 0.3 + rng.standard_normal((20, 5))
    one = kid_from_features(a, b, subset_size=10, subsets=8, seed=0)
    assert one == kid_from_features(a, b, subset_size=10, subsets=8, seed=0)
    assert one != kid_from_features(a, b, subset_size=10, subsets=8, seed=1)
    assert one["std"] > 0 and one["subsets"] == 8 and one["subset_size"] == 10


def test_bootstrap_interval():
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((30, 4)), 0.5 + rng.standard_normal((25, 4))
    point = kid_from_features(a, b, subset_size=20, subsets=10, seed=0)["mean"]
    ci = kid_ci(a, b, point, subset_size=20, subsets=10, n_boot=100, seed=1)
    assert ci == kid_ci(a, b, point, subset_size=20, subsets=10, n_boot=100, seed=1)
    assert ci["low"] < point < ci["high"] and ci["bias"] > 0  # repeated rows inflate the within-set terms
    assert "shifted" in ci["method"] and ci["n_boot"] == 100
    same = kid_ci(a, a, 0.0, subset_size=20, subsets=10, n_boot=100, seed=1)
    assert same["low"] < 0 < same["high"]  # no floor at 0: KID can be negative


def test_refuses_subsets_larger_than_a_set():
    a, b = np.zeros((5, 3)), np.zeros((8, 3))
    with pytest.raises(ValueError, match="subset size 6 exceeds the smaller set"):
        kid_from_features(a, b, subset_size=6, subsets=2, seed=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        kid_from_features(a, b, subset_size=1, subsets=2, seed=0)
    with pytest.raises(ValueError, match="at least 1 subset"):
        kid_from_features(a, b, subset_size=2, subsets=0, seed=0)
