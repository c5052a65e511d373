"""The reader study's statistics against textbook values and closed forms."""
import math

import numpy as np
import pytest

from ctdiff.reader.stats import auc_delong, binomial_p, fisher_p, fleiss_kappa, proportion, score

# Newcombe (1998), Stat Med 17:857, Table I, method 5 (Clopper-Pearson exact), 95 %, to 4 decimals.
NEWCOMBE = [(81, 263, 0.2527, 0.3676), (15, 148, 0.0578, 0.1617), (0, 20, 0.0, 0.1684), (1, 29, 0.0009, 0.1776)]


@pytest.mark.parametrize("k, n, low, high", NEWCOMBE)
def test_clopper_pearson_matches_newcombe(k, n, low, high):
    p = proportion(k, n, 0.95)
    assert p["estimate"] == k / n
    assert p["low"] == pytest.approx(low, abs=5e-5) and p["high"] == pytest.approx(high, abs=5e-5)


@pytest.mark.parametrize("n", [1, 5, 30])
def test_clopper_pearson_closed_forms_at_the_ends(n):
    """0 of n: upper = 1 - (α/2)^(1/n); n of n: lower = (α/2)^(1/n)."""
    assert proportion(0, n, 0.95)["high"] == pytest.approx(1 - 0.025 ** (1 / n), rel=1e-9)
    assert proportion(n, n, 0.95)["low"] == pytest.approx(0.025 ** (1 / n), rel=1e-9)
    assert proportion(0, 0, 0.95)["estimate"] is None


def test_binomial_test_against_half():
    """9 of 10: two-sided p = 2 P(X >= 9) = 2 * 11 / 1024; 5 of 10: p = 1."""
    assert binomial_p(9, 10) == pytest.approx(22 / 1024, rel=1e-12)
    assert binomial_p(5, 10) == pytest.approx(1.0)
    assert binomial_p(0, 0) is None


def test_fisher_exact_is_the_lady_tasting_tea():
    """Fisher's tea tasting: 8 cups, 4 each way, all told apart: two-sided p = 2 / C(8, 4) = 2 / 70."""
    truth = ["real"] * 4 + ["synthetic"] * 4
    assert fisher_p(truth, truth) == pytest.approx(2 / math.comb(8, 4), rel=1e-12)
    assert fisher_p(truth, ["real"] * 8) is None  # one answer only: no test


def test_score_orders_the_ten_levels():
    levels = [score("real", c) for c in (5, 4, 3, 2, 1)] + [score("synthetic", c) for c in (1, 2, 3, 4, 5)]
    assert levels == list(range(1, 11))
    with pytest.raises(ValueError, match="real/synthetic and 1-5"):
        score("maybe", 3)


def test_auc_of_hanley_and_mcneil_1982():
    """Hanley & McNeil (1982), Radiology 143:29, Table 1: CT ratings 1-5 of 58 normal and 51 abnormal
    patients; the area is 0.893. DeLong's variance computed from the rating table: for an abnormal case
    rated r, V10 = P(normal < r) + P(normal = r) / 2, for a normal one rated r, V01 = P(abnormal > r) +
    P(abnormal = r) / 2, var = s²(V10)/m + s²(V01)/n."""
    normal, abnormal = np.array([33, 6, 6, 11, 2]), np.array([3, 2, 2, 11, 33])
    ratings = np.arange(1, 6)
    result = auc_delong(np.repeat(ratings, abnormal), np.repeat(ratings, normal), 0.95)
    assert result["auc"] == pytest.approx(0.893, abs=5e-4)
    below = np.concatenate([[0], np.cumsum(normal)[:-1]]) / normal.sum()
    v10 = below + normal / normal.sum() / 2
    above = (abnormal.sum() - np.cumsum(abnormal)) / abnormal.sum()
    v01 = above + abnormal / abnormal.sum() / 2
    m, n = abnormal.sum(), normal.sum()

    def s2(values, counts):
        mean = np.sum(values * counts) / counts.sum()
        return np.sum(counts * (values - mean) ** 2) / (counts.sum() - 1)

    se = math.sqrt(s2(v10, abnormal) / m + s2(v01, normal) / n)
    assert result["auc"] == pytest.approx(np.sum(v10 * abnormal) / m, rel=1e-12)
    assert result["se"] == pytest.approx(se, rel=1e-12)
    assert result["low"] == pytest.approx(result["auc"] - 1.959963985 * se, rel=1e-9)


def test_auc_delong_by_hand():
    """x = [2, 3], y = [1, 2]: ψ = [[1, 1/2], [1, 1]], A = 7/8; V10 = [3/4, 1], V01 = [1, 3/4], both with
    sample variance 1/32, so var = 1/64 + 1/64 = 1/32."""
    r = auc_delong([2, 3], [1, 2], 0.95)
    assert r["auc"] == 0.875 and r["se"] == pytest.approx(math.sqrt(1 / 32), rel=1e-12)
    assert r["high"] == 1.0  # clipped
    assert auc_delong([2], [1, 2], 0.95)["se"] is None


# Fleiss (1971), Psychol Bull 76:378: 30 patients, 6 psychiatrists, 5 diagnoses; kappa 0.430 (the data as
# the R package irr ships them, `diagnoses`).
DIAGNOSES = """444444 222555 233335 555555 222444 113333 333355 113334 114444 555555 144444 124444 222333 144444
224445 333335 111455 111112 224444 133555 555555 244444 224555 114444 144445 222224 111155 224444 133333
555555"""


def test_fleiss_kappa_of_fleiss_1971():
    ratings = np.array([[int(c) for c in row] for row in DIAGNOSES.split()])
    assert ratings.shape == (30, 6)
    assert fleiss_kappa(ratings) == pytest.approx(0.430, abs=5e-4)


def test_fleiss_kappa_of_the_wikipedia_example():
    """10 subjects, 14 raters, 5 categories (counts per category): kappa 0.210."""
    counts = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
              [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    ratings = np.array([np.repeat(np.arange(5), row) for row in counts])
    assert fleiss_kappa(ratings) == pytest.approx(0.210, abs=5e-4)
