"""The trial protocol: what a trial's config carries, parsed strictly (`TrialConfig`)."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_search.search.engine.trial import TrialConfig


def test_a_search_point_and_an_evaluation_run_parse():
    point = TrialConfig.of(
        {"init": "flair", "strategy": "lp", "lp_lr": 0.01, "weight_decay": 1e-4, "batch_size": np.int64(16),
         "seed": 7, "fold": 0, "optuna_number": 3, "max_epochs": 2}
    )  # fmt: skip
    assert (point.split, point.fold, point.batch_size, point.ft_lr) == ("cv", 0, 16, None)
    assert type(point.batch_size) is int and point.training_seed == 7
    run = TrialConfig.of(
        {"init": "flair", "strategy": "ft", "ft_lr": 1e-4, "seed": 0, "split": "test", "fold": None, "repeat": None,
         "run_id": "flair-ft-1-test-seed0", "config_id": "flair-ft-1", "rank": 1, "source_trial_id": "x",
         "source_optuna_number": 4, "search_score": 0.5, "keep_predictions": True, "max_epochs": 3}
    )  # fmt: skip
    assert (run.split, run.fold, run.repeat, run.keep_predictions) == ("test", None, 0, True)
    assert run.run["config_id"] == "flair-ft-1"


@pytest.mark.parametrize(
    "params,message",
    [
        ({"init": "a", "strategy": "lp", "seed": 0, "fold": 0, "lp_lrr": 0.1}, r"unknown key\(s\) \['lp_lrr'\]"),
        ({"init": "a", "strategy": "lp", "seed": 0}, "a cv run needs its fold"),
        ({"init": "a", "strategy": "lp", "seed": 0, "fold": 0, "split": "val"}, "split must be 'cv' or 'test'"),
    ],
    ids=["misspelt-key", "cv-without-fold", "unknown-split"],
)
def test_a_config_no_part_of_the_product_writes_is_refused(params, message):
    with pytest.raises(ValueError, match=message):
        TrialConfig.of(params)
