"""The study's comparisons on hand-made run and prediction tables (no Ray): seeds averaged within a
fold before the test, the primary family Holm-adjusted and the rest Benjamini-Hochberg, single-
class runs flagged and never "ahead", undefined tests with reasons, missing runs left out."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from fundus_search.results.answer import Planned, default_primary, evaluation_table, paired_comparisons
from fundus_search.results.tables import verdict_sentences
from fundus_search.statistics import benjamini_hochberg, holm

SOURCES = {"flair": "flair", "imagenet": "torchvision", "random": "random"}
N, K, REPEATS, SEEDS = 60, 3, 2, 2


def tables(quality: dict[str, float], *, constant: tuple[str, ...] = (), seed: int = 0):
    """Runs and predictions of each init's `lp` cell on K folds x REPEATS x SEEDS: P(positive) =
    label x quality + noise (`constant` inits predict negative for every image)."""
    rng = np.random.default_rng(seed)
    y = np.arange(N) % 2
    runs, predictions = [], []
    for init, q in quality.items():
        for repeat in range(REPEATS):
            fold_of = rng.permutation(N) % K
            for fold in range(K):
                rows = np.flatnonzero(fold_of == fold)
                for s in range(SEEDS):
                    run_id = f"{init}-lp-1-repeat{repeat}-fold{fold}-seed{s}"
                    prob = (
                        np.zeros(len(rows))
                        if init in constant
                        else np.clip(0.5 + q * (y[rows] - 0.5) + rng.normal(0, 0.3, len(rows)), 0, 1)
                    )
                    runs.append(
                        {
                            "run_id": run_id,
                            "config_id": f"{init}-lp-1",
                            "init": init,
                            "strategy": "lp",
                            "rank": 1,
                            "split": "cv",
                            "repeat": repeat,
                            "fold": fold,
                            "seed": s,
                            "epochs": 1,
                            "search_score": 0.5,
                            "n_train": N - len(rows),
                            "n_scored": len(rows),
                            "lp_lr": 1e-3,
                            "ft_lr": None,
                            "weight_decay": 1e-4,
                            "lp_epochs": None,
                        }
                    )
                    predictions += [
                        {
                            "run_id": run_id,
                            "row": int(r),
                            "label": int(y[r]),
                            "seed": s,
                            "repeat": repeat,
                            "prob_positive": float(p),
                        }
                        for r, p in zip(rows, prob, strict=True)
                    ]
    return pd.DataFrame(runs), pd.DataFrame(predictions)


def compare(runs, predictions, primary=None, protocol=None):
    primary = primary if primary is not None else default_primary(sorted(set(runs["init"])), ["lp"], SOURCES)
    return paired_comparisons(runs, predictions, SOURCES, primary=primary, rope=0.01, protocol=protocol)


def test_seeds_are_averaged_within_each_fold_before_the_test():
    runs, predictions = tables({"flair": 0.6, "imagenet": 0.3})
    row = compare(runs, predictions).iloc[0]
    assert row["comparison"] == "lp: flair - imagenet" and row["family"] == "primary"
    assert row["n"] == K * REPEATS and row["seeds"] == SEEDS, "J is folds x repeats, not x seeds"
    from fundus_search.results.answer import run_metrics

    scored = runs.merge(run_metrics(predictions), on="run_id")
    per_fold = scored.groupby(["init", "repeat", "fold"])["average"].mean()
    assert row["difference"] == pytest.approx((per_fold["flair"] - per_fold["imagenet"]).mean())
    assert row["p_value"] < 0.05 and row["ci_low"] > 0


def test_the_primary_family_is_holm_adjusted_and_the_rest_benjamini_hochberg():
    runs, predictions = tables({"flair": 0.6, "imagenet": 0.5, "random": 0.0})
    out = compare(runs, predictions)
    assert list(out["comparison"]) == ["lp: flair - imagenet", "lp: flair - random", "lp: imagenet - random"]
    assert list(out["family"]) == ["primary", "secondary", "secondary"]  # random is not a pretrained init
    assert out["confidence"].iloc[0] == pytest.approx(0.95), "one primary comparison: an ordinary 95% interval"
    secondary = out[out["family"] == "secondary"]
    assert secondary["p_adjusted"].to_numpy() == pytest.approx(benjamini_hochberg(secondary["p_value"]))
    chosen = [Planned("lp", "flair", "random"), Planned("lp", "imagenet", "random")]  # evaluation.primary
    declared = compare(runs, predictions, primary=chosen)
    primary = declared[declared["family"] == "primary"]
    assert list(primary["comparison"]) == ["lp: flair - random", "lp: imagenet - random"]
    assert primary["p_adjusted"].to_numpy() == pytest.approx(holm(primary["p_value"]))
    assert list(primary["confidence"]) == pytest.approx([1 - 0.05 / 2] * 2), "simultaneous intervals (Bonferroni)"


def test_constant_predictors_are_flagged_and_their_zero_variance_is_undefined_never_p_zero():
    runs, predictions = tables({"flair": 0.0, "imagenet": 0.0}, constant=("flair", "imagenet"))
    row = compare(runs, predictions).iloc[0]
    assert math.isnan(row["p_value"]) and "no variance" in row["reason"]
    assert "flair-lp-1 predicts one class in 12 of 12 runs" in row["flags"]
    assert "not testable" in verdict_sentences(compare(runs, predictions))[0]
    table = evaluation_table(runs, predictions)
    assert (table["single_class_runs"] == K * REPEATS * SEEDS).all()
    runs, predictions = tables({"flair": 0.0, "imagenet": 0.6}, constant=("flair",))
    sentence = verdict_sentences(compare(runs, predictions))[0]
    assert "not interpretable, flair-lp-1 predicts one class" in sentence and "ahead" not in sentence


def test_a_missing_run_is_left_out_not_counted_as_a_negative():
    runs, predictions = tables({"flair": 0.6, "imagenet": 0.6})
    missing = "imagenet-lp-1-repeat1-fold2-seed0"
    kept_runs, kept_predictions = runs[runs["run_id"] != missing], predictions[predictions["run_id"] != missing]
    row = compare(kept_runs, kept_predictions).iloc[0]
    assert row["n"] == K * REPEATS, "the fold still has imagenet's other seed"
    table = evaluation_table(kept_runs, kept_predictions).set_index("init")
    assert table.loc["imagenet", "runs"] == K * REPEATS * SEEDS - 1
    assert table.loc["imagenet", "single_class_runs"] == 0
    full = evaluation_table(runs, predictions).set_index("init")
    assert table.loc["imagenet", "average_mean"] == pytest.approx(full.loc["imagenet", "average_mean"], abs=0.05)


def test_only_a_calibrated_protocol_reads_a_difference_as_a_finding():
    runs, predictions = tables({"flair": 0.6, "imagenet": 0.3})
    calibrated = verdict_sentences(compare(runs, predictions, protocol=(3, 2, 1)))[0]
    assert calibrated.startswith("lp: flair - imagenet = +") and calibrated.endswith(": flair ahead"), calibrated
    other = verdict_sentences(compare(runs, predictions, protocol=(5, 2, 1)))[0]
    assert other.endswith("descriptive only (this protocol is not one benchmark B9 found calibrated)"), other


def test_the_calibrated_protocols_are_the_ones_benchmark_b9_measured():
    import json
    from pathlib import Path

    from fundus_search.statistics import CALIBRATED_PROTOCOLS

    record = json.loads((Path(__file__).parents[1] / "benchmarks" / "results" / "b9_calibration.json").read_text())
    measured = {
        tuple(int(x) for x in name.split("x"))
        for name, figures in record["by_protocol"].items()
        if figures["calibrated"]
    }
    assert measured == CALIBRATED_PROTOCOLS


def test_comparisons_are_written_as_strategy_a_minus_b_and_parsed_back():
    assert Planned.parse("lp: flair - imagenet") == Planned("lp", "flair", "imagenet")
    assert Planned.parse("flair: lp_ft - ft").cells({"lp", "ft", "lp_ft"}) == (("flair", "lp_ft"), ("flair", "ft"))
    with pytest.raises(ValueError, match="STRATEGY: INIT_A - INIT_B"):
        Planned.parse("flair vs imagenet")
    assert [p.key for p in default_primary(["random", "imagenet", "flair"], ["lp", "ft"], SOURCES)] == [
        "lp: flair - imagenet",
        "ft: flair - imagenet",
    ]


def test_every_strategy_is_compared_with_fine_tuning_within_its_init():
    from fundus_search.results.answer import Planned, planned_comparisons

    strategies = ("lp", "ft", "lp_ft", "partial_ft", "norm_ft")
    cells = [(i, s) for i in ("flair", "imagenet") for s in strategies]
    primary = [Planned("ft", "flair", "imagenet")]
    plans = planned_comparisons(cells, {"flair": "flair", "imagenet": "torchvision"}, primary)
    keys = [p.key for _, p in plans]
    assert keys[0] == "ft: flair - imagenet" and plans[0][0] == "primary"
    for init in ("flair", "imagenet"):
        assert {f"{init}: {s} - ft" for s in ("lp_ft", "lp", "partial_ft", "norm_ft")} <= set(keys)
    assert {f"{s}: flair - imagenet" for s in ("lp", "lp_ft", "partial_ft", "norm_ft")} <= set(keys)
    assert len(keys) == len(set(keys)) == 1 + 4 + 2 * 4
