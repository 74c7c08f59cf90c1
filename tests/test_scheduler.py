"""Stratified ASHA compares a trial only with trials of its own cell (unit test on synthetic results)."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from fundus_search.search.engine.scheduler import StratifiedASHA


def make_trial(trial_id: str, init: str, strategy: str = "ft") -> Trial:
    return Trial("fake", config={"init": init, "strategy": strategy}, trial_id=trial_id, stub=True)


def decisions(scheduler, reports) -> dict[str, str]:
    """Feed (trial, epoch, value) reports in order; return each trial's last decision."""
    out = {}
    for trial, epoch, value in reports:
        if trial.trial_id not in out:
            scheduler.on_trial_add(None, trial)
        out[trial.trial_id] = scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_average": value})
    return out


def scheduler(stratify_by) -> StratifiedASHA:
    return StratifiedASHA(
        stratify_by=stratify_by, metric="val_average", mode="max", max_t=9, grace_period=1, reduction_factor=2
    )


def reports():
    """Pretrained trials score 0.8-0.9 at epoch 1; then random-init trials score 0.40 and 0.30.

    ASHA is asynchronous: the first trial at a rung always continues, so order matters.
    """
    flair = [make_trial(f"f{i}", "flair") for i in range(3)]
    rand = [make_trial("r0", "random"), make_trial("r1", "random")]
    return [(t, 1, 0.8 + 0.05 * i) for i, t in enumerate(flair)] + [(rand[1], 1, 0.40), (rand[0], 1, 0.30)]


def test_stratified_asha_never_compares_across_cells():
    out = decisions(scheduler(("init", "strategy")), reports())
    assert out["r1"] == TrialScheduler.CONTINUE, "the better random-init trial was pruned against flair trials"
    assert out["r0"] == TrialScheduler.STOP, "within its cell, the worse random-init trial is pruned"
    assert out["f1"] == TrialScheduler.CONTINUE and out["f2"] == TrialScheduler.CONTINUE


def test_plain_asha_prunes_slow_inits_against_fast_ones():
    out = decisions(scheduler(()), reports())
    assert out["r1"] == TrialScheduler.STOP and out["r0"] == TrialScheduler.STOP


def test_cells_are_created_per_init_and_strategy():
    s = scheduler(("init", "strategy"))
    decisions(
        s,
        [
            (make_trial("a", "flair", "lp"), 1, 0.5),
            (make_trial("b", "flair", "ft"), 1, 0.5),
            (make_trial("c", "random", "lp"), 1, 0.5),
        ],
    )
    assert set(s.cells) == {("flair", "lp"), ("flair", "ft"), ("random", "lp")}


def test_a_report_without_the_metric_is_an_error():
    s = scheduler(("init",))
    trial = make_trial("x", "flair")
    s.on_trial_add(None, trial)
    with pytest.raises(ValueError, match=r"reported without \['val_average'\]"):
        s.on_trial_result(None, trial, {"epoch": 1})


def test_min_mode_prunes_the_higher_loss():
    s = StratifiedASHA(stratify_by=(), metric="val_average", mode="min", max_t=9, grace_period=1, reduction_factor=2)
    out = decisions(s, [(make_trial("a", "x"), 1, 0.2), (make_trial("b", "x"), 1, 0.9)])
    assert out["b"] == TrialScheduler.STOP and out["a"] == TrialScheduler.CONTINUE
