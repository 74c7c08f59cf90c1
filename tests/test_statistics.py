"""The statistics `evaluate` prints, against hand computations: the corrected repeated-CV t-test,
the Bayesian correlated t-test, Holm and Benjamini-Hochberg on fixed p-values, the undefined
cases (never p = 0), the descriptive bootstrap, the vectorised challenge average."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fundus_search.metrics import classification_metrics
from fundus_search.statistics import (
    average_from_counts,
    bayesian_correlated_ttest,
    benjamini_hochberg,
    bootstrap_spread,
    corrected_cv_ttest,
    holm,
)

# 5 folds x 2 repeats of (seed-averaged) differences; a run trains on 400 images and scores 100
D = np.array([0.04, 0.01, 0.06, -0.02, 0.03, 0.05, 0.00, 0.02, 0.04, 0.01])


def test_corrected_t_test_matches_a_hand_computation():
    j, mean = 10, 0.024
    variance = sum((x - mean) ** 2 for x in D) / (j - 1)  # 0.000604
    se = math.sqrt((1 / j + 100 / 400) * variance)  # corrected: 1/J + n_test/n_train, not 1/J
    half = stats.t.ppf(0.975, j - 1) * se
    result = corrected_cv_ttest(D, n_train=400, n_test=100)
    assert result.difference == pytest.approx(mean) and result.scale == pytest.approx(se)
    assert result.p_value == pytest.approx(2 * stats.t.sf(mean / se, j - 1))
    assert (result.ci_low, result.ci_high) == pytest.approx((mean - half, mean + half))
    assert result.n == j and result.df == 9 and result.reason is None
    assert result.p_value > stats.ttest_1samp(D, 0.0).pvalue, "the correction must widen the test, not narrow it"


def test_bayesian_correlated_t_test_matches_a_hand_computation():
    # Benavoli et al. 2017: posterior of the mean difference ~ t(J-1, mean, sqrt((1/J + rho/(1-rho)) s^2))
    j, mean = 10, 0.024
    scale = math.sqrt((1 / j + 100 / 400) * np.var(D, ddof=1))
    rope = 0.01
    better, equal, worse = bayesian_correlated_ttest(corrected_cv_ttest(D, n_train=400, n_test=100), rope)
    assert better == pytest.approx(stats.t.sf((rope - mean) / scale, j - 1))
    assert worse == pytest.approx(stats.t.cdf((-rope - mean) / scale, j - 1))
    assert better + equal + worse == pytest.approx(1.0)
    assert better > worse


def test_holm_and_benjamini_hochberg_match_hand_computations():
    p = [0.01, 0.04, 0.03, 0.005]
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted p x m / rank = 0.02, 0.02, 0.04, 0.04, then running min from the top
    assert benjamini_hochberg(p) == pytest.approx([0.02, 0.04, 0.04, 0.02])
    with_undefined = holm([0.01, np.nan, 0.04])  # an undefined test is not in the family
    assert with_undefined[0] == pytest.approx(0.02) and np.isnan(with_undefined[1]) and with_undefined[2] == 0.04
    assert np.isnan(benjamini_hochberg([np.nan])).all()


def test_zero_variance_and_a_single_difference_are_undefined_never_zero():
    flat = corrected_cv_ttest(np.full(6, 0.05), n_train=100, n_test=50)
    assert math.isnan(flat.p_value) and "no variance" in flat.reason and flat.difference == pytest.approx(0.05)
    assert all(math.isnan(x) for x in bayesian_correlated_ttest(flat, 0.01))
    one = corrected_cv_ttest(np.array([0.1]), n_train=10, n_test=5)
    assert math.isnan(one.p_value) and "at least 2" in one.reason


def test_average_from_counts_equals_the_challenge_metrics():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 40)
        p = rng.random(40)
        pred = (p >= 0.5).astype(int)
        counts = [np.sum((y == a) & (pred == b)) for a, b in ((1, 1), (0, 1), (1, 0), (0, 0))]
        assert average_from_counts(*counts) == pytest.approx(classification_metrics(y, p)["average"], abs=1e-12)
    assert average_from_counts(0, 0, 0, 10) == pytest.approx((0 + 0 + 1) / 3)  # all negative, all right


def test_bootstrap_spread_is_reproducible_averages_seeds_and_has_no_p_value():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 120)
    a = np.clip(y * 0.6 + rng.random((3, 120)) * 0.5, 0, 1)
    b = rng.random((3, 120))
    first = bootstrap_spread(y, a, b, resamples=300, seed=3)
    assert first == bootstrap_spread(y, a, b, resamples=300, seed=3)
    expected = np.mean([classification_metrics(y, s)["average"] for s in a]) - np.mean(
        [classification_metrics(y, s)["average"] for s in b]
    )
    assert first.difference == pytest.approx(expected)
    assert first.ci_low < expected < first.ci_high and first.n == 120
    assert not hasattr(first, "p_value")
