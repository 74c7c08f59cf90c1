"""Paired comparisons: the corrected resampled t-test against a hand computation, the paired
bootstrap reproducible by seed, the vectorised challenge average against scikit-learn's."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from results.metrics import classification_metrics
from results.statistics import average_from_counts, corrected_resampled_ttest, paired_bootstrap


def test_corrected_t_test_matches_a_hand_computation():
    # 5 folds x 2 seeds of differences; a run trains on 400 images and scores 100
    d = np.array([0.04, 0.01, 0.06, -0.02, 0.03, 0.05, 0.00, 0.02, 0.04, 0.01])
    j, mean = 10, 0.024
    variance = sum((x - mean) ** 2 for x in d) / (j - 1)  # 0.000604
    se = math.sqrt((1 / j + 100 / 400) * variance)  # corrected: 1/J + n_test/n_train, not 1/J
    t = mean / se
    half = stats.t.ppf(0.975, j - 1) * se
    result = corrected_resampled_ttest(d, n_train=400, n_test=100)
    assert result.difference == pytest.approx(mean)
    assert result.p_value == pytest.approx(2 * stats.t.sf(t, j - 1))
    assert (result.ci_low, result.ci_high) == pytest.approx((mean - half, mean + half))
    assert result.n == j
    plain = stats.ttest_1samp(d, 0.0).pvalue
    assert result.p_value > plain, "the correction must widen the test, not narrow it"


def test_corrected_t_test_needs_two_runs():
    with pytest.raises(ValueError, match="at least 2"):
        corrected_resampled_ttest(np.array([0.1]), n_train=10, n_test=5)


def test_average_from_counts_equals_the_challenge_metrics():
    rng = np.random.default_rng(0)
    for _ in range(50):
        y = rng.integers(0, 2, 40)
        p = rng.random(40)
        pred = (p >= 0.5).astype(int)
        counts = [np.sum((y == a) & (pred == b)) for a, b in ((1, 1), (0, 1), (1, 0), (0, 0))]
        assert average_from_counts(*counts) == pytest.approx(classification_metrics(y, p)["average"], abs=1e-12)
    assert average_from_counts(0, 0, 0, 10) == pytest.approx((0 + 0 + 1) / 3)  # all negative, all right


def test_paired_bootstrap_is_reproducible_and_centred_on_the_observed_difference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    better = np.clip(y * 0.6 + rng.random(200) * 0.5, 0, 1)
    worse = rng.random(200)
    first = paired_bootstrap(y, better, worse, resamples=500, seed=3)
    again = paired_bootstrap(y, better, worse, resamples=500, seed=3)
    other = paired_bootstrap(y, better, worse, resamples=500, seed=4)
    assert first == again and (other.ci_low, other.ci_high) != (first.ci_low, first.ci_high)
    observed = classification_metrics(y, better)["average"] - classification_metrics(y, worse)["average"]
    assert first.difference == pytest.approx(observed)
    assert first.ci_low < observed < first.ci_high and first.ci_low > 0 and first.p_value < 0.01
    same = paired_bootstrap(y, better, better, resamples=200, seed=3)
    assert same.difference == 0 and same.ci_low == same.ci_high == 0 and same.p_value == 1


def test_paired_bootstrap_averages_seeds_within_each_resample():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 60)
    a, b = rng.random((3, 60)), rng.random((3, 60))
    result = paired_bootstrap(y, a, b, resamples=100, seed=0)
    expected = np.mean([classification_metrics(y, s)["average"] for s in a]) - np.mean(
        [classification_metrics(y, s)["average"] for s in b])
    assert result.difference == pytest.approx(expected)
