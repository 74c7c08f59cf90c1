"""B9 calibration, layer (a): do the tests `evaluate` prints hold their 5% when nothing differs?

Simulated null studies go through the product's own statistics (fundus_search.statistics: the
challenge average of each run, seeds averaged within each (repeat, fold), the corrected
repeated-CV t-test, the Bayesian correlated t-test, Holm over the primary family). A few studies
of each scenario also go through `results.answer.paired_comparisons` on run and prediction
tables, to check that the fast path is the product's path.

A study: N images (41% positive), each with a difficulty shared by every model; R stratified
k-fold partitions; per comparison two arms of equal quality under each of 3 strategies (the
default primary family: FLAIR vs ImageNet under LP, FT and LP-FT). A run's logit for image i is
  mu (2 y_i - 1) + 0.8 z_i + 0.6 e_run,i + b_run,
  b_run = beta x (mean over the run's training images of the arm's per-image pull u_arm,i) x sqrt(n_train)
          + sigma_train x g_run,
so runs of one arm trained on overlapping folds are correlated (what the Nadeau-Bengio
correction is for) and `sigma_train` is run-to-run training variance (a shift of the decision
threshold: at large values, models that predict one class). mu = 0.9 gives AUC about 0.9; mu = 0
models that learn nothing. Power: arm A's mu raised so that its expected average is 0.03 or 0.05
above B's.

Recorded per scenario: `false_positive_rate` of the t-test (p < 0.05) and of the Bayesian
reading (P(better by > rope) > 0.95), the same for the old test that counted seeds as
repeats, `family_wise_error_rate` of Holm over the 3 primary comparisons, and power.
Targets: every printed test <= 5% (with its binomial 95% interval), family-wise <= 5%.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.common import main, write
from fundus_search.results.answer import Planned, paired_comparisons
from fundus_search.statistics import average_of_predictions, bayesian_correlated_ttest, corrected_cv_ttest, holm

POSITIVE = 0.41
NOISE_IMAGE, NOISE_RUN, BETA = 0.8, 0.6, 0.5
STRATEGIES = ("lp", "ft", "lp_ft")
ROPE = 0.01


def partitions(y: np.ndarray, k: int, repeats: int, rng) -> list[np.ndarray]:
    """(N,) fold of each image, per repeat: stratified (each class dealt round-robin after a shuffle)."""
    out = []
    for _ in range(repeats):
        fold = np.empty(len(y), dtype=int)
        for c in (0, 1):
            rows = rng.permutation(np.flatnonzero(y == c))
            fold[rows] = (np.arange(len(rows)) + rng.integers(k)) % k
        out.append(fold)
    return out


def arm_runs(y, z, folds, mu, sigma_train, seeds, rng) -> np.ndarray:
    """(R, k, S) challenge average of one arm's runs on their validation folds."""
    n, k = len(y), int(folds[0].max()) + 1
    pull = rng.standard_normal(n)  # this arm's idiosyncratic pull from each training image
    out = np.empty((len(folds), k, seeds))
    for r, fold in enumerate(folds):
        for f in range(k):
            val, train = fold == f, fold != f
            shift = BETA * pull[train].mean() * np.sqrt(train.sum())
            logits = (
                mu * (2 * y[val] - 1)
                + NOISE_IMAGE * z[val]
                + NOISE_RUN * rng.standard_normal((seeds, val.sum()))
                + shift
                + sigma_train * rng.standard_normal((seeds, 1))
            )
            out[r, f] = average_of_predictions(y[val], logits >= 0, axis=-1)
    return out


def expected_average(mu: float, sigma_train: float, rng, n: int = 200_000) -> float:
    """The average of an arm with signal mu, over images and training draws (for the power runs)."""
    y = (rng.random(n) < POSITIVE).astype(int)
    shift = np.repeat(sigma_train * rng.standard_normal(n // 1000) + BETA * rng.standard_normal(n // 1000), 1000)
    logits = mu * (2 * y - 1) + np.hypot(NOISE_IMAGE, NOISE_RUN) * rng.standard_normal(n) + shift
    return float(np.mean(average_of_predictions(y.reshape(-1, 1000), (logits >= 0).reshape(-1, 1000), axis=-1)))


def mu_for_gain(mu: float, gain: float, sigma_train: float) -> float:
    """The mu whose expected average is `gain` above that of `mu` (bisection, fixed draws)."""
    base = expected_average(mu, sigma_train, np.random.default_rng(0))
    low, high = mu, mu + 3.0
    for _ in range(30):
        mid = (low + high) / 2
        low, high = (
            (mid, high) if expected_average(mid, sigma_train, np.random.default_rng(0)) - base < gain else (low, mid)
        )
    return (low + high) / 2


def one_comparison(a: np.ndarray, b: np.ndarray, n_train: float, n_test: float) -> dict:
    """The printed test of one comparison, from (R, k, S) averages of A and B."""
    per_fold = (a.mean(axis=2) - b.mean(axis=2)).ravel()  # seeds averaged within (repeat, fold)
    test = corrected_cv_ttest(per_fold, n_train=n_train, n_test=n_test)
    better, _, worse = bayesian_correlated_ttest(test, ROPE)
    old = corrected_cv_ttest((a - b).ravel(), n_train=n_train, n_test=n_test)  # seeds counted as repeats
    return {"p": test.p_value, "bayes": max(better, worse) if test.reason is None else np.nan, "p_old": old.p_value}


def scenario(
    *,
    n: int,
    k: int,
    repeats: int,
    seeds: int,
    mu: float,
    sigma_train: float,
    studies: int,
    gain: float = 0.0,
    seed: int = 0,
) -> dict:
    rng = np.random.default_rng([seed, n, k, repeats, seeds, int(mu * 100), int(sigma_train * 100), int(gain * 1000)])
    mu_a = mu_for_gain(mu, gain, sigma_train) if gain else mu
    n_test = n / k
    results = []
    for _ in range(studies):
        y = (rng.random(n) < POSITIVE).astype(int)
        z = rng.standard_normal(n)
        folds = partitions(y, k, repeats, rng)
        family = [
            one_comparison(
                arm_runs(y, z, folds, mu_a, sigma_train, seeds, rng),
                arm_runs(y, z, folds, mu, sigma_train, seeds, rng),
                n - n_test,
                n_test,
            )
            for _ in STRATEGIES
        ]
        results.append(family)
    p = np.array([[c["p"] for c in f] for f in results])
    bayes = np.array([[c["bayes"] for c in f] for f in results])
    p_old = np.array([[c["p_old"] for c in f] for f in results])
    holm_p = np.array([holm(row) for row in p])
    rate = "false_positive_rate" if not gain else "power"
    return {
        "n": n,
        "k": k,
        "repeats": repeats,
        "seeds": seeds,
        "mu": mu,
        "sigma_train": sigma_train,
        "gain": gain,
        "studies": studies,
        "comparisons": int(np.isfinite(p).sum()),
        "undefined_share": float(np.mean(~np.isfinite(p))),
        rate: _rate(p < 0.05, p),
        f"bayesian_{rate}": _rate(bayes > 0.95, bayes),
        f"seeds_as_repeats_{rate}": _rate(p_old < 0.05, p_old) if seeds > 1 else None,
        "family_wise_error_rate" if not gain else "holm_power": _rate(
            np.nan_to_num(holm_p, nan=1.0).min(axis=1) < 0.05 if not gain else holm_p < 0.05,
            np.ones(len(p)) if not gain else holm_p,
        ),
    }


def _rate(hits: np.ndarray, values: np.ndarray) -> dict:
    """Rate of `hits` among defined `values`, with its Clopper-Pearson 95% interval."""
    defined = np.isfinite(values)
    count, total = int(np.sum(hits & defined)), int(defined.sum())
    interval = stats.binomtest(count, total).proportion_ci() if total else None
    return {
        "rate": count / total if total else None,
        "count": count,
        "of": total,
        "ci95": [interval.low, interval.high] if interval else None,
    }


def check_against_paired_comparisons(studies: int = 5) -> float:
    """Largest |p| difference between the fast path and `paired_comparisons` on tables."""
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(studies):
        n, k, repeats, seeds = 120, 3, 2, 2
        y = (rng.random(n) < POSITIVE).astype(int)
        z = rng.standard_normal(n)
        folds = partitions(y, k, repeats, rng)
        runs, predictions, averages = [], [], {}
        for arm in ("flair", "imagenet"):
            pull = rng.standard_normal(n)
            averages[arm] = np.empty((repeats, k, seeds))
            for r, fold in enumerate(folds):
                for f in range(k):
                    val = np.flatnonzero(fold == f)
                    train = fold != f
                    for s in range(seeds):
                        logits = (
                            0.9 * (2 * y[val] - 1)
                            + NOISE_IMAGE * z[val]
                            + NOISE_RUN * rng.standard_normal(len(val))
                            + BETA * pull[train].mean() * np.sqrt(train.sum())
                            + 0.3 * rng.standard_normal()
                        )
                        prob = 1 / (1 + np.exp(-logits))
                        averages[arm][r, f, s] = average_of_predictions(y[val], prob >= 0.5)
                        run_id = f"{arm}-lp-1-r{r}-f{f}-s{s}"
                        runs.append(
                            {
                                "run_id": run_id,
                                "config_id": f"{arm}-lp-1",
                                "init": arm,
                                "strategy": "lp",
                                "rank": 1,
                                "split": "cv",
                                "repeat": r,
                                "fold": f,
                                "seed": s,
                                "n_train": int(train.sum()),
                                "n_scored": len(val),
                            }
                        )
                        predictions += [
                            {"run_id": run_id, "row": int(i), "label": int(y[i]), "seed": s, "prob_positive": float(p)}
                            for i, p in zip(val, prob, strict=True)
                        ]
        table = paired_comparisons(
            pd.DataFrame(runs),
            pd.DataFrame(predictions),
            {"flair": "flair", "imagenet": "torchvision"},
            primary=[Planned("lp", "flair", "imagenet")],
            rope=ROPE,
        )
        fast = one_comparison(averages["flair"], averages["imagenet"], n - n / k, n / k)["p"]
        worst = max(worst, abs(float(table.loc[table["split"] == "cv", "p_value"].iloc[0]) - fast))
    return worst


def summarise(null: list[dict]) -> dict:
    """The worst rates over all scenarios, and per protocol (k, repeats, seeds): which are calibrated."""

    def worst(rows, key):
        rates = [r[key]["rate"] for r in rows if r.get(key) and r[key]["rate"] is not None]
        return max(rates, default=None)

    protocols = {}
    for row in null:
        protocols.setdefault(f"{row['k']}x{row['repeats']}x{row['seeds']}", []).append(row)
    by_protocol = {
        name: {
            "max_false_positive_rate": worst(rows, "false_positive_rate"),
            "max_bayesian_false_positive_rate": worst(rows, "bayesian_false_positive_rate"),
            "max_family_wise_error_rate": worst(rows, "family_wise_error_rate"),
        }
        for name, rows in protocols.items()
    }
    for figures in by_protocol.values():
        figures["calibrated"] = (
            figures["max_false_positive_rate"] <= 0.05 and figures["max_family_wise_error_rate"] <= 0.05
        )
    return {
        "max_false_positive_rate": worst(null, "false_positive_rate"),
        "max_bayesian_false_positive_rate": worst(null, "bayesian_false_positive_rate"),
        "max_family_wise_error_rate": worst(null, "family_wise_error_rate"),
        "max_seeds_as_repeats_false_positive_rate": worst(null, "seeds_as_repeats_false_positive_rate"),
        "by_protocol": by_protocol,
    }


def run(tiny: bool = False) -> dict:
    start = time.perf_counter()
    studies = 40 if tiny else 1000
    protocols = [(3, 1, 1), (3, 2, 1), (5, 1, 1), (5, 2, 1), (5, 1, 3)] if not tiny else [(3, 2, 1), (3, 1, 2)]
    null = [
        scenario(n=n, k=k, repeats=r, seeds=s, mu=mu, sigma_train=sigma, studies=studies)
        for n in ((240, 712) if not tiny else (120,))
        for k, r, s in protocols
        for mu in (0.9, 0.0)
        for sigma in ((0.1, 1.0) if not tiny else (0.5,))
    ]
    power = (
        [
            scenario(n=n, k=k, repeats=r, seeds=1, mu=0.9, sigma_train=sigma, studies=studies // 2, gain=gain)
            for n in ((240, 712) if not tiny else (120,))
            for k, r in ((3, 2), (5, 2))
            for sigma in (0.1, 0.5)
            for gain in (0.03, 0.05)
        ]
        if not tiny
        else []
    )
    figures = {
        "null_studies_per_scenario": studies,
        "scenarios": null,
        "power": power,
        **summarise(null),
        "fast_path_vs_paired_comparisons_max_p_difference": check_against_paired_comparisons(2 if tiny else 5),
        "seconds": time.perf_counter() - start,
    }
    return write(
        "b9_calibration",
        figures,
        tiny=tiny,
        target="every printed test's false_positive_rate <= 0.05 and family_wise_error_rate <= 0.05 on "
        "simulated null studies; power reported at gains of 0.03 and 0.05 average",
    )


if __name__ == "__main__":
    main(
        run,
        __doc__,
        (
            "max_false_positive_rate",
            "max_family_wise_error_rate",
            "max_seeds_as_repeats_false_positive_rate",
            "fast_path_vs_paired_comparisons_max_p_difference",
            "seconds",
        ),
    )
