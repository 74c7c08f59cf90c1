"""A real search on a local 2-CPU Ray: Parquet schema, conditional nulls, TensorBoard, ASHA -> PRUNED, retries."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import optuna
import pandas as pd
import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
from ray import tune
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from fundus_search.results import EPOCHS_SCHEMA, TRIALS_SCHEMA
from fundus_search.search.engine.trainable import train_trial
from fundus_search.search.engine.tuner import start_search
from tests.helpers import tiny_search_config

pytestmark = pytest.mark.slow

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import test modules


@pytest.fixture(scope="module")
def ray_2_cpus():
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, object_store_memory=300 * 1024**2, log_to_driver=False
    )
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_2_cpus, pretrained_flair, tmp_path_factory):
    """One 8-trial search shared by the checks below."""
    import yaml

    folder = tmp_path_factory.mktemp("search")
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_search_config(storage=folder / "runs", flair=pretrained_flair)))
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # the progress lines (the driver prints them)
        search, _ = start_search(config, name="s1")
    (folder / "printed.txt").write_text(printed.getvalue())
    return search.path


def test_parquet_files_have_the_documented_schema(search):
    for name, schema in (("trials.parquet", TRIALS_SCHEMA), ("epochs.parquet", EPOCHS_SCHEMA)):
        table = pq.read_table(search / name)
        assert table.schema.remove_metadata().equals(schema), f"{name} schema drifted"
        assert b"fundus_search.config" in table.schema.metadata and b"fundus_search.versions" in table.schema.metadata
    trials = pd.read_parquet(search / "trials.parquet")
    assert len(trials) == 8 and set(trials["status"]) <= {"completed", "stopped_early"}
    assert trials["trial_id"].is_unique and sorted(trials["optuna_number"]) == list(range(8))
    assert len(set(zip(trials["init"], trials["strategy"], strict=True))) == 6, "the first 6 trials cover every cell"
    epochs = pd.read_parquet(search / "epochs.parquet")
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    for trial_id, rows in epochs.groupby("trial_id"):
        run = trials.set_index("trial_id").loc[trial_id, "epochs_run"]
        assert sorted(rows["epoch"]) == list(range(1, run + 1)), "an epoch row is missing"


def test_conditional_parameters_are_null_exactly_where_they_do_not_apply(search):
    trials = pd.read_parquet(search / "trials.parquet")
    uses = {"lp_lr": {"lp", "lp_ft"}, "ft_lr": {"ft", "lp_ft"}, "lp_epochs": {"lp_ft"}}
    for column, strategies in uses.items():
        applies = trials["strategy"].isin(strategies)
        assert trials.loc[applies, column].notna().all(), f"{column} missing where it applies"
        assert trials.loc[~applies, column].isna().all(), f"{column} set where it does not apply"
    epochs = pd.read_parquet(search / "epochs.parquet").merge(trials[["trial_id", "strategy"]], on="trial_id")
    first_lp_ft = epochs[(epochs["strategy"] == "lp_ft") & (epochs["epoch"] == 1)]
    assert first_lp_ft["lp_val_average"].notna().all()
    assert epochs[epochs["strategy"] != "lp_ft"]["lp_val_average"].isna().all()


def test_tensorboard_has_every_metric_of_every_trial(search):
    runs = sorted((search / "tensorboard").iterdir())
    trials = pd.read_parquet(search / "trials.parquet")
    assert len(runs) == len(trials)
    assert any("init=" in r.name and "strategy=" in r.name for r in runs)
    for run in runs:
        events = EventAccumulator(str(run)).Reload()
        tags = set(events.Tags()["scalars"])
        assert {"train/loss", "val/average", "val/kappa", "val/f1", "val/specificity", "val/auc"} <= tags
        assert {"speed/epoch_seconds", "speed/images_per_second"} <= tags
        number = int(run.name.split()[0])
        expected = trials.set_index("optuna_number").loc[number, "epochs_run"]
        assert len(events.Scalars("val/average")) == expected
        assert events.summary_metadata  # HParams plugin data


def test_scheduler_stopped_trials_are_pruned_in_the_optuna_study(search):
    trials = pd.read_parquet(search / "trials.parquet")
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{search / 'optuna.db'}")
    states = {t.number: t.state for t in study.trials}
    stopped = trials[trials["status"] == "stopped_early"]["optuna_number"]
    assert len(stopped) >= 1, "the designed case (grace 1, reduction factor 2) stopped no trial"
    assert all(states[n] == optuna.trial.TrialState.PRUNED for n in stopped)
    completed = trials[trials["status"] == "completed"]["optuna_number"]
    assert all(states[n] == optuna.trial.TrialState.COMPLETE for n in completed)
    assert len(study.trials) == 8


def test_the_progress_line_best_and_optuna_hold_one_score_per_trial(search):
    """A trial's score is its best epoch's value: printed, in trials.parquet, and told to Optuna
    (whose objective is named after the metric, for optuna-dashboard)."""
    trials = pd.read_parquet(search / "trials.parquet").set_index("optuna_number")
    study = optuna.load_study(study_name="s1", storage=f"sqlite:///{search / 'optuna.db'}")
    assert study.metric_names == ["val_average"]
    printed = (search.parent.parent / "printed.txt").read_text()
    lines = {int(line.split("#")[1].split()[0]): line for line in printed.splitlines() if "] #" in line}
    assert len(lines) == 8, printed[-2000:]
    for t in study.trials:
        score = trials.loc[t.number, "best_val_average"]
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert t.value == pytest.approx(score)
        shown = f"val_average {score:.3f} (epoch {int(trials.loc[t.number, 'best_epoch'])})"
        assert shown in lines[t.number], (shown, lines[t.number])
        # printed to a file, each epoch has its line too (a log has no live table)
        epochs = [
            line for line in printed.splitlines() if line.lstrip().startswith(f"#{t.number} ") and " epoch " in line
        ]
        assert len(epochs) == trials.loc[t.number, "epochs_run"], printed[-2000:]
        # optuna-dashboard's link from an Optuna trial to its Ray trial and folder
        assert t.user_attrs["ray_trial_id"] == trials.loc[t.number, "trial_id"]
        assert (search / t.user_attrs["trial_dir"] / "result.json").is_file()


def _fail_once_after_epoch_3(params, **kwargs):
    """The real trainable, which crashes once right after reporting epoch 3. Every report of
    every attempt is logged beside the marker (`reports-N.jsonl`: attempt, epoch, metrics)."""
    marker = Path(kwargs["config"].storage.path) / f"failed-{params['optuna_number']}"
    log = marker.with_name(f"reports-{params['optuna_number']}.jsonl")
    attempt = 2 if marker.exists() else 1
    real_report = tune.report

    def report(metrics, *, checkpoint=None):
        real_report(metrics, checkpoint=checkpoint)
        kept = {k: metrics[k] for k in ("epoch", "train_loss", "val_average", "val_auc")}
        with log.open("a") as out:
            out.write(json.dumps({"attempt": attempt, **kept}) + "\n")
        if metrics["epoch"] == 3 and not marker.exists():
            marker.touch()
            raise RuntimeError("injected failure")

    tune.report = report
    try:
        train_trial(params, **kwargs)
    finally:
        tune.report = real_report


def test_a_failed_trial_is_retried_exactly_from_its_last_checkpoint(ray_2_cpus, tmp_path):
    import yaml

    config = tiny_search_config(
        storage=tmp_path / "runs", num_samples=2, max_epochs=4, strategies=("ft",), scheduler={"type": "fifo"}
    )
    config["storage"]["checkpoint_every"] = 2
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder, _ = start_search(tmp_path / "c.yaml", name="retry", train_fn=_fail_once_after_epoch_3)
    assert len(list((tmp_path / "runs").glob("failed-*"))) == 2, "each trial failed once"
    trials = pd.read_parquet(Path(folder.trials_file))
    epochs = pd.read_parquet(Path(folder.epochs_file))
    assert (trials["status"] == "completed").all() and (trials["epochs_run"] == 4).all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any()
    assert sorted(epochs.groupby("trial_id").size()) == [4, 4]
    # The retry resumed from the epoch-2 checkpoint (checkpoint_every 2): its first report is epoch
    # 3 again, equal to the first attempt's bit for bit (exact resume), and the Parquet row of
    # epoch 3 is the retry's. (Ray's own result.json may miss a report cut short by the crash.)
    for log in (tmp_path / "runs").glob("reports-*.jsonl"):
        reports = [json.loads(line) for line in log.read_text().splitlines()]
        assert [(r["attempt"], r["epoch"]) for r in reports] == [(1, 1), (1, 2), (1, 3), (2, 3), (2, 4)]
        first, redone = (next(r for r in reports if r["epoch"] == 3 and r["attempt"] == a) for a in (1, 2))
        assert {**first, "attempt": 2} == redone
        assert redone["train_loss"] in set(epochs.loc[epochs["epoch"] == 3, "train_loss"])
    # both trials completed: nothing resumes them, so their checkpoints are gone once the search ends
    assert not list(folder.path.glob("trial_*/checkpoint_*"))


# ---- failures say what happened ----


def _raise_in_flair_trials(params, **kwargs):
    """The real trainable, except that flair trials raise a Python exception."""
    if params["init"] == "flair":
        raise RuntimeError(f"injected failure in trial {params['optuna_number']}")
    train_trial(params, **kwargs)


def _kill_the_worker(params, **kwargs):
    """A trial whose worker process dies (as under the kernel's OOM killer)."""
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def test_failed_trials_carry_their_error_and_the_run_says_how_many(ray_2_cpus, pretrained_flair, tmp_path, capsys):
    import yaml

    from fundus_search.search.cli.run import summarise

    config = tiny_search_config(
        storage=tmp_path / "runs",
        flair=pretrained_flair,
        num_samples=2,
        max_epochs=1,
        strategies=("lp",),
        scheduler={"type": "fifo"},
    )
    config["storage"]["max_failures"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder, _ = start_search(tmp_path / "c.yaml", name="some-fail", train_fn=_raise_in_flair_trials)
    trials = pd.read_parquet(Path(folder.trials_file))
    failed = trials[trials["status"] == "error"]
    assert set(failed["init"]) == {"flair"} and len(failed) == 1
    assert all(e.startswith("RuntimeError: injected failure in trial") for e in failed["error"]), failed["error"]
    assert trials.loc[trials["status"] != "error", "error"].isna().all()
    capsys.readouterr()
    assert summarise(folder) == 1
    out = capsys.readouterr().out
    assert "1 of 2 trials failed" in out and "RuntimeError: injected failure" in out


def test_a_killed_worker_is_an_error_with_a_message_and_all_failing_is_one_line(ray_2_cpus, tmp_path):
    import yaml

    from fundus_search.search.cli.run import summarise
    from fundus_search.vocabulary import UserError

    config = tiny_search_config(
        storage=tmp_path / "runs", num_samples=2, max_epochs=1, strategies=("lp",), scheduler={"type": "fifo"}
    )
    config["storage"]["max_failures"] = 0
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder, _ = start_search(tmp_path / "c.yaml", name="killed-workers", train_fn=_kill_the_worker)
    trials = pd.read_parquet(Path(folder.trials_file))
    assert (trials["status"] == "error").all() and trials["error"].notna().all()
    assert trials["error"].str.contains("died|exit", case=False).all(), list(trials["error"])
    with pytest.raises(UserError, match=r"all 2 trials failed; the first: .*error column"):
        summarise(folder)


# ---- refused before anything is written ----


def test_every_reported_key_has_a_column_and_an_unknown_key_is_an_error(search):
    from types import SimpleNamespace

    from fundus_search.search.engine.callbacks import epoch_row, unknown_report_keys

    reports = [
        json.loads(line)
        for trial_dir in search.glob("trial_*")
        for line in (trial_dir / "result.json").read_text().splitlines()
    ]
    assert reports and all(unknown_report_keys(r) == [] for r in reports)
    with pytest.raises(ValueError, match=r"reported \['val_magic'\], which no column of results.store stores"):
        epoch_row(SimpleNamespace(trial_id="t"), {**reports[0], "val_magic": 0.5})


def test_trials_record_the_normalisation_their_weights_were_used_with(search):
    trials = pd.read_parquet(search / "trials.parquet")
    assert set(trials["normalize"]) == {"none"}  # the flair and random sources' own
    assert trials["weights_id"].notna().all()


def test_a_trial_no_node_can_hold_is_refused_before_the_folder_is_written(ray_2_cpus, tmp_path):
    import yaml

    from fundus_search.search.errors import SearchError

    config = tiny_search_config(storage=tmp_path / "runs", num_samples=1)
    config["resources"]["cpus_per_trial"] = 64
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(
        SearchError,
        match=r"resources.cpus_per_trial: 64 CPUs per trial, but the largest node of the "
        r"Ray cluster has 2; ask for at most 2",
    ):
        start_search(tmp_path / "c.yaml", name="too-big")
    assert not (tmp_path / "runs" / "too-big").exists()
