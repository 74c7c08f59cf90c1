"""Paired comparisons of two models, what each assumes, and multiplicity corrections.

The one test `evaluate` prints is over repeated cross-validation: for each of the J = k x R
(repeat, fold) pairs, the metric of A minus the metric of B, seeds averaged within the fold
first (seeds on one partition are not new cross-validation repeats). Folds share most of their
training data, so the J differences are correlated; two readings of the same corrected variance
(1/J + n_test/n_train) x s^2:

- `corrected_cv_ttest`: the corrected repeated k-fold t-test (Nadeau & Bengio 2003;
  Bouckaert & Frank 2004), a two-sided p-value on J - 1 degrees of freedom.
- `bayesian_correlated_ttest` (Benavoli et al. 2017, "Time for a change"): the posterior of the
  mean difference is Student t with the same location, scale and degrees of freedom; with a
  region of practical equivalence (rope) it gives P(A better), P(practically equal), P(B better).

Both assume the J differences are about normal. Their false-positive rates on null studies are
measured by benchmark B9 (benchmarks/b9_calibration.py), not assumed.

`bootstrap_spread` resamples images for fixed, trained models: it describes how much a difference
moves over images, not whether it would hold with retrained models, so it has no p-value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from fundus_search.metrics import predict

# (folds, repeats, seeds) whose corrected t-test benchmark B9 measured at or below 5% false positives
# in every simulated null scenario (benchmarks/results/b9_calibration.json, `by_protocol`; a test
# checks the two agree). Elsewhere a p-value is shown as descriptive, never as a finding: at 5
# folds B9 measured up to 16% when run-to-run training noise is small.
CALIBRATED_PROTOCOLS = frozenset({(3, 1, 1), (3, 2, 1)})


def scored_protocol(protocol: dict) -> tuple[int, int, int] | None:
    """(k, repeats, seeds) of an evaluation.json protocol that scored every fold; None otherwise
    (a fold subset, or an evaluation written before protocols were recorded)."""
    if not protocol.get("k") or protocol.get("folds") != protocol["k"]:
        return None
    return protocol["k"], protocol["repeats"], protocol["seeds"]


TTEST_ASSUMES = (
    "the (repeat, fold) differences, seeds averaged within each fold, are about normal; their "
    "variance is inflated by 1/J + n_test/n_train for overlapping training sets (Nadeau & Bengio 2003)"
)
BOOTSTRAP_ASSUMES = (
    "descriptive: resamples the test images for these trained models; retraining would move the "
    "difference more, so this is no test"
)


@dataclass(frozen=True)
class TTest:
    """A mean paired difference, its interval and two-sided p-value; NaN with a `reason` when undefined."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int  # J differences
    df: int
    scale: float  # corrected standard error of the mean difference
    reason: str | None = None  # why the p-value is undefined, if it is


def corrected_cv_ttest(differences: np.ndarray, *, n_train: float, n_test: float, confidence: float = 0.95) -> TTest:
    """The corrected repeated k-fold t-test of J paired (repeat, fold) differences.

    Args:
        differences: (J,) metric of A minus metric of B, one per (repeat, fold), seeds averaged.
        n_train, n_test: rows a run trains on and scores (their mean over runs).
        confidence: of the interval mean +- t_{J-1} x se, se = sqrt((1/J + n_test/n_train) s^2).

    Returns:
        the test; p-value and interval NaN, with the reason, when J < 2 or the differences do not
        vary (a zero variance is no evidence of anything, and never p = 0).
    """
    d = np.asarray(differences, dtype=float)
    j = len(d)
    mean = float(d.mean()) if j else float("nan")
    if j < 2:
        return TTest(
            mean,
            float("nan"),
            float("nan"),
            float("nan"),
            j,
            0,
            float("nan"),
            reason=f"needs at least 2 (repeat, fold) differences (got {j})",
        )
    variance = d.var(ddof=1)
    if not variance > 1e-12:
        return TTest(
            mean,
            float("nan"),
            float("nan"),
            float("nan"),
            j,
            j - 1,
            0.0,
            reason=f"the {j} differences are all {mean:+.3f}: no variance to test against",
        )
    se = float(np.sqrt((1 / j + n_test / n_train) * variance))
    df = j - 1
    half = stats.t.ppf(0.5 + confidence / 2, df) * se
    p = 2 * stats.t.sf(abs(mean) / se, df)
    return TTest(mean, float(mean - half), float(mean + half), float(p), j, df, se)


def bayesian_correlated_ttest(test: TTest, rope: float) -> tuple[float, float, float]:
    """(P(A better by more than rope), P(|difference| <= rope), P(B better by more than rope)) under
    the posterior Student t(df, location = mean difference, scale = corrected se) of Benavoli et
    al. (2017); NaNs where the t-test is undefined."""
    if test.reason is not None:
        return float("nan"), float("nan"), float("nan")
    posterior = stats.t(test.df, loc=test.difference, scale=test.scale)
    worse, within = posterior.cdf(-rope), posterior.cdf(rope)
    return float(1 - within), float(within - worse), float(worse)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), NaNs kept out of the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    defined = np.flatnonzero(~np.isnan(p))
    m = len(defined)
    order = defined[np.argsort(p[defined], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def benjamini_hochberg(p_values) -> np.ndarray:
    """Benjamini-Hochberg q-values (false discovery rate, scipy's), NaNs kept out of the family."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    defined = ~np.isnan(p)
    if defined.any():
        out[defined] = stats.false_discovery_control(p[defined], method="bh")
    return out


def average_from_counts(tp, fp, fn, tn) -> np.ndarray:
    """The challenge average, mean(kappa, F1 of the positive class, specificity), from confusion
    counts (arrays of any shape). Degenerate cases as in fundus_search.metrics: kappa 0 at total chance
    agreement, F1 and specificity 0 on empty denominators."""
    tp, fp, fn, tn = (np.asarray(x, dtype=float) for x in (tp, fp, fn, tn))
    n = tp + fp + fn + tn
    observed = (tp + tn) / n
    chance = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / n**2
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(chance < 1, (observed - chance) / (1 - chance), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        specificity = np.where(tn + fp > 0, tn / (tn + fp), 0.0)
    return (kappa + f1 + specificity) / 3


def average_of_predictions(y: np.ndarray, pred: np.ndarray, axis: int = -1) -> np.ndarray:
    """The challenge average of 0/1 predictions `pred` against labels `y`, along `axis`."""
    y, pred = np.asarray(y).astype(bool), np.asarray(pred).astype(bool)
    counts = [np.sum(y & pred, axis), np.sum(~y & pred, axis), np.sum(y & ~pred, axis), np.sum(~y & ~pred, axis)]
    return average_from_counts(*counts)


@dataclass(frozen=True)
class Spread:
    """A difference on the images themselves and its percentile interval over image resamples."""

    difference: float
    ci_low: float
    ci_high: float
    n: int  # images


def bootstrap_spread(
    y: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Spread:
    """Paired percentile bootstrap over images (`scipy.stats.bootstrap`) of the challenge average of
    A minus B, each the mean over its seeds: descriptive (the models are held fixed).

    Args:
        y: (N,) labels of the images both arms scored.
        probs_a, probs_b: (S, N) P(positive) of A and B, one row per seed (or (N,) for one).
    """
    y = np.asarray(y).astype(int)
    pred_a, pred_b = (predict(np.atleast_2d(p)) for p in (probs_a, probs_b))
    seeds_a = len(pred_a)

    def difference(y, *preds, axis=-1):
        means = [
            np.mean([average_of_predictions(y, p, axis) for p in group], axis=0)
            for group in (preds[:seeds_a], preds[seeds_a:])
        ]
        return means[0] - means[1]

    observed = float(difference(y, *pred_a, *pred_b))
    result = stats.bootstrap(
        (y, *pred_a, *pred_b),
        difference,
        paired=True,
        vectorized=True,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=seed,
    )
    low, high = result.confidence_interval
    return Spread(observed, float(low), float(high), len(y))
