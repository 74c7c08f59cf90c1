"""A driver killed with SIGKILL mid-search is resumed by `fundus-search resume`: nothing lost, nothing twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from tests.search_helpers import tiny_search_config

CLI = str(Path(sys.executable).parent / "fundus-search")


def epoch_rows_logged(folder: Path) -> int:
    log = folder / ".rows.jsonl"
    if not log.exists():
        return 0
    return sum(1 for line in log.read_text().splitlines() if line.startswith('["epochs.parquet"'))


def test_killed_driver_resumes_without_lost_or_duplicated_rows(tmp_path):
    config = tiny_search_config(storage=tmp_path / "runs", num_samples=6, max_epochs=4, strategies=("lp", "ft"),
                                scheduler={"type": "fifo"})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    folder = tmp_path / "runs" / "killed"
    # Own session: Ray's processes started by this driver share its process group, so they can
    # be cleaned up exactly (and only them) after the driver is killed.
    driver = subprocess.Popen([CLI, "run", str(tmp_path / "c.yaml"), "--name", "killed"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while epoch_rows_logged(folder) < 6 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.5)
        assert driver.poll() is None, "the search finished before it could be killed; make it longer"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        _kill_group(driver.pid)
    before = pd.read_parquet(folder / "trials.parquet") if (folder / "trials.parquet").exists() else None
    assert before is None or (before["status"] == "running").any() or len(before) < 6

    resumed = subprocess.run([CLI, "resume", str(folder)], capture_output=True, text=True, timeout=400,
                             start_new_session=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "best val_average per init x strategy" in resumed.stdout

    trials = pd.read_parquet(folder / "trials.parquet")
    epochs = pd.read_parquet(folder / "epochs.parquet")
    assert len(trials) == 6 and (trials["status"] == "completed").all()
    assert not epochs.duplicated(["trial_id", "epoch"]).any(), "a resumed epoch was written twice"
    assert sorted(epochs.groupby("trial_id")["epoch"].apply(list).map(tuple)) == [(1, 2, 3, 4)] * 6, "an epoch is lost"
    assert json.loads((folder / "search.json").read_text())["num_samples"] == 6


def _kill_group(pgid: int) -> None:
    """Stop whatever the killed driver left running in its own process group (its Ray)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
