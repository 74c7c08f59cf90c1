"""Paired comparisons of two models, and what each interval assumes.

Two views of the same question (is model A better than model B on this task?):

- `corrected_resampled_ttest`: over the (fold, seed) runs both models share. Cross-validation
  folds share most of their training data, so the runs are correlated and the plain paired
  t-test is anti-conservative; Nadeau & Bengio (2003, "Inference for the generalization
  error") inflate the variance of the mean difference from 1/J to 1/J + n_test/n_train
  (Bouckaert & Frank, 2004, for repeated k-fold: J = folds x repeats). Assumes the J
  differences are roughly normal.
- `paired_bootstrap`: over the images both models scored (out of fold, or a test split):
  resample images with replacement, recompute the metric for both on the same resample.
  Assumes images are exchangeable; the models are held fixed, so training variability is not
  in this interval (the t-test's is).

The challenge metrics are recomputed from confusion counts for whole batches of resamples at
once (`average_from_counts`), the same definitions as `results.metrics.classification_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from .metrics import predict

TTEST_ASSUMES = ("the fold x seed differences are about normal; their variance is inflated by 1/J + n_test/n_train "
                 "for overlapping training sets (Nadeau & Bengio 2003)")
BOOTSTRAP_ASSUMES = "images are exchangeable; the trained models are held fixed (training variability not included)"


@dataclass(frozen=True)
class Comparison:
    """A mean paired difference with its 95% interval and two-sided p-value."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int  # differences (t-test) or images (bootstrap)


def corrected_resampled_ttest(differences: np.ndarray, *, n_train: float, n_test: float,
                              confidence: float = 0.95) -> Comparison:
    """The corrected resampled t-test of paired differences from J shared (fold, seed) runs.

    Args:
        differences: (J,) metric of A minus metric of B, one per run both share.
        n_train, n_test: rows a run trains on and scores (their mean over runs).

    Returns:
        the mean difference, its interval mean +- t_{J-1} x sqrt((1/J + n_test/n_train) s^2),
        and the two-sided p-value of t = mean / that standard error, on J - 1 degrees of freedom.
    """
    d = np.asarray(differences, dtype=float)
    j = len(d)
    if j < 2:
        raise ValueError(f"the corrected t-test needs at least 2 paired runs (got {j})")
    mean, variance = d.mean(), d.var(ddof=1)
    se = np.sqrt((1 / j + n_test / n_train) * variance)
    df = j - 1
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 1.0 if se == 0 and mean == 0 else 0.0 if se == 0 else 2 * stats.t.sf(abs(mean) / se, df)
    return Comparison(float(mean), float(mean - half), float(mean + half), float(p), j)


def average_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """The challenge average, mean(kappa, F1 of the positive class, specificity), from confusion
    counts (arrays of any shape; weighted counts allowed). Degenerate cases as in
    results.metrics: kappa 0 at total chance agreement, F1 and specificity 0 on empty denominators."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    return (kappa + f1 + specificity) / 3


def _weighted_average(weights: np.ndarray, y: np.ndarray, prob_positive: np.ndarray) -> np.ndarray:
    """The challenge average of (B, N) image weights (resample counts) over one prediction (N,)."""
    pred = predict(prob_positive)
    cells = [(y == 1) & (pred == 1), (y == 0) & (pred == 1), (y == 1) & (pred == 0), (y == 0) & (pred == 0)]
    return average_from_counts(*(weights @ c.astype(float) for c in cells))


def paired_bootstrap(y: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, *, resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> Comparison:
    """Paired bootstrap over images of the challenge average of A minus B.

    Args:
        y: (N,) labels of the images both models scored.
        probs_a, probs_b: (R, N) P(positive) of A and B, one row per seed (or (N,) for one);
            a resample's metric is the mean over seeds of each seed's metric on it.
        resamples: bootstrap resamples of the N images.
        seed: the resampling seed; the same seed gives the same interval.

    Returns:
        the difference on the images themselves, the percentile interval of the resampled
        differences, and a two-sided p-value: twice the share of resamples on the far side of 0.
    """
    y = np.asarray(y).astype(int)
    probs_a, probs_b = np.atleast_2d(probs_a), np.atleast_2d(probs_b)
    n = len(y)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n, np.full(n, 1 / n), size=resamples).astype(float)  # (B, N) times each image is drawn
    ones = np.ones((1, n))

    def average(probs: np.ndarray, w: np.ndarray) -> np.ndarray:
        return np.mean([_weighted_average(w, y, p) for p in probs], axis=0)

    observed = float((average(probs_a, ones) - average(probs_b, ones))[0])
    diffs = average(probs_a, weights) - average(probs_b, weights)
    tail = (1 - confidence) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    p = min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0)))
    return Comparison(observed, float(low), float(high), float(p), n)
