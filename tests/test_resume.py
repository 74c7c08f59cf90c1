"""A driver killed with SIGKILL mid-search is resumed by `fundus-search resume`: nothing lost, nothing twice;
and resume trusts only folders no one else could have written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import needs, tiny_search_config

CLI = str(Path(sys.executable).parent / "fundus-search")


def _kill_group(pgid: int) -> None:
    """Stop whatever the killed driver left running in its own process group (its Ray)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


_KILL_AFTER_SUGGESTION = """
import os, signal, sys
from fundus_search.search.engine import searcher
real_suggest, count = searcher.PruningOptunaSearch.suggest, []

def suggest(self, trial_id):
    params = real_suggest(self, trial_id)
    count.append(trial_id)
    if len(count) == int(sys.argv[1]):  # Optuna has stored the trial; Tune has not heard of it yet
        os.kill(os.getpid(), signal.SIGKILL)
    return params

searcher.PruningOptunaSearch.suggest = suggest
from fundus_search.search.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_killed_driver_resumes_with_nothing_lost_or_twice_and_every_cell_run(tmp_path, capsys):
    """SIGKILL at the third suggestion: one trial done, one mid-training with checkpoints, and one
    that Optuna stored but Tune never heard of (the window a kill can fall in). The folder is
    then copied, the original deleted, and the copy resumed."""
    import optuna

    inits = {"random": {"source": "random"}, "scratch": {"source": "random"}}
    config = tiny_search_config(
        storage=tmp_path / "runs",
        num_samples=4,
        max_epochs=2,
        strategies=("lp", "ft"),
        scheduler={"type": "fifo"},
        inits=inits,
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder = tmp_path / "runs" / "window"
    # Own session: Ray's processes started by this driver share its process group, so they can
    # be cleaned up exactly (and only them) after the driver is killed.
    driver = subprocess.Popen(
        [sys.executable, "-c", _KILL_AFTER_SUGGESTION, "3", "run", str(tmp_path / "c.yaml"), "--name", "window"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert driver.wait(timeout=400) == -signal.SIGKILL, "the driver was not killed at its third suggestion"
    finally:
        _kill_group(driver.pid)
    before = pd.read_parquet(folder / "trials.parquet") if (folder / "trials.parquet").exists() else None
    assert before is None or len(before) < 4 or (before["status"] == "running").any()
    study = optuna.load_study(study_name="window", storage=f"sqlite:///{folder / 'optuna.db'}")
    orphan = study.trials[2]
    assert orphan.state == optuna.trial.TrialState.RUNNING, "the case under test: a trial Tune never started"

    # A copy is first-class: the original deleted, the copy resumed by the command `run` prints
    # for an existing folder, and every write lands in the copy.
    copy = tmp_path / "runs" / "window-copy"
    shutil.copytree(folder, copy, symlinks=True)
    shutil.rmtree(folder)
    from fundus_search.search.cli.main import main  # refused before Ray starts: in this process

    assert main(["run", str(tmp_path / "c.yaml"), "--name", "window-copy"]) == 2
    err = capsys.readouterr().err
    assert f"`fundus-search resume {copy}`" in err, err
    hint = err.split("`")[-2].split()
    resumed = subprocess.run([CLI, *hint[1:]], capture_output=True, text=True, timeout=400, start_new_session=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "best val_average per init x strategy" in resumed.stdout
    assert not folder.exists(), "resume of the copy wrote into the original's place"
    folder = copy
    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any(), "a resumed epoch was written twice"
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(list).map(tuple)) == [(1, 2)] * 4, "an epoch is lost"
    assert json.loads((folder / "search.json").read_text())["num_samples"] == 4
    assert len(set(zip(trials["init"], trials["strategy"], strict=True))) == 4, "a cell of the table was never run"
    assert len(list((folder / "tensorboard").iterdir())) == 4, "TensorBoard runs of the resumed trials missing"
    study = optuna.load_study(study_name="window", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert study.trials[2].state == optuna.trial.TrialState.FAIL
    requeued = [
        t
        for t in study.trials[3:]
        if t.params.get("init") == orphan.params["init"] and t.params.get("strategy") == orphan.params["strategy"]
    ]
    assert requeued and requeued[0].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.parametrize("problem", ["group-writable", "world-writable", "someone-elses"])
def test_resume_refuses_a_folder_others_could_have_written(problem, tmp_path, capsys):
    import os

    from fundus_search.search.cli.main import main

    folder = tmp_path / "search"
    folder.mkdir()
    (folder / "search.json").write_text("{}")
    (folder / "tuner.pkl").write_bytes(b"a pickle that resume would load")
    if problem == "someone-elses":
        if os.geteuid() != 0:
            needs("changing a file's owner needs root")
        os.chown(folder / "tuner.pkl", 12345, 12345)
    else:
        (folder / "tuner.pkl").chmod(0o664 if problem == "group-writable" else 0o646)
    assert main(["resume", str(folder)]) == 2
    err = capsys.readouterr().err
    expected = "owned by user id 12345" if problem == "someone-elses" else "writable by other users"
    assert f"{folder / 'tuner.pkl'}: {expected}" in err and len(err.strip().splitlines()) == 1, err
