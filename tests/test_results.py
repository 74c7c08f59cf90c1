"""The Parquet store (idempotent, replayable, typed, safe on a full disk) and its queries."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fundus_search.results import ResultsStore, init_strategy_table, load_trials
from fundus_search.vocabulary import EPOCHS_FILE, TRIALS_FILE
from tests.helpers import run_on_a_small_filesystem, write_results_dir


@pytest.fixture
def results_dir(tmp_path):
    return write_results_dir(tmp_path / "s1")


@pytest.mark.parametrize(
    "row,message",
    [
        ({"trial_id": "t", "statuss": "completed"}, r"no column \['statuss'\]"),
        ({"status": "completed"}, r"without its key column\(s\) \['trial_id'\]"),
        ({"trial_id": None, "status": "completed"}, "without its key column"),
    ],
    ids=["misspelt-column", "no-key", "null-key"],
)
def test_the_store_refuses_a_row_it_would_not_store_faithfully(tmp_path, row, message):
    store = ResultsStore(str(tmp_path / "s"), search="s", flush_seconds=0)
    with pytest.raises(ValueError, match=message):
        store.put(TRIALS_FILE, row)
    with pytest.raises(ValueError, match="not a table"):
        store.put("trails.parquet", {"trial_id": "t"})
    store.put(TRIALS_FILE, {"trial_id": "t", "status": "completed"})
    store.close()
    assert pd.read_parquet(tmp_path / "s" / TRIALS_FILE)["status"].tolist() == ["completed"]


def test_cell_winners_is_the_one_ranking_rule():
    """Best first by the direction; ties to the earlier trial; errored or unscored trials never win."""
    from fundus_search.results.query import cell_winners

    trials = pd.DataFrame(
        {
            "init": ["a"] * 5 + ["b"] * 2,
            "strategy": ["lp"] * 7,
            "status": ["error", "completed", "completed", "stopped_early", "completed", "completed", "error"],
            "optuna_number": [0, 1, 2, 3, 4, 5, 6],
            "score": [0.99, 0.5, 0.7, 0.7, None, 0.2, 0.9],
        }
    )
    top = cell_winners(trials, "score", "max", top=2)
    assert top.groupby("init")["optuna_number"].apply(list).to_dict() == {"a": [2, 3], "b": [5]}
    low = cell_winners(trials, "score", "min")
    assert low.groupby("init")["optuna_number"].apply(list).to_dict() == {"a": [1], "b": [5]}


def test_rows_are_idempotent_on_trial_and_epoch(tmp_path):
    store = ResultsStore(str(tmp_path / "s"), search="s", flush_seconds=0)
    store.put(EPOCHS_FILE, {"trial_id": "t", "epoch": 1, "val_average": 0.1})
    store.put(EPOCHS_FILE, {"trial_id": "t", "epoch": 1, "val_average": 0.2})  # a retried epoch re-reported
    store.put(EPOCHS_FILE, {"trial_id": "t", "epoch": 2, "val_average": 0.3})
    store.close()
    rows = pq.read_table(tmp_path / "s" / "epochs.parquet").to_pylist()
    assert [(r["epoch"], r["val_average"]) for r in rows] == [(1, 0.2), (2, 0.3)]


def test_a_reopened_store_replays_the_log_without_duplicates(tmp_path):
    first = ResultsStore(str(tmp_path / "s"), search="s", flush_seconds=3600)  # no Parquet write before "crash"
    first.put(EPOCHS_FILE, {"trial_id": "t", "epoch": 1, "val_average": 0.1})
    first._log.write('["epochs.parquet", {"trial_id": "t", "ep')  # a line cut short by SIGKILL
    first._log.flush()
    second = ResultsStore(str(tmp_path / "s"), search="s")
    second.put(EPOCHS_FILE, {"trial_id": "t", "epoch": 2, "val_average": 0.2})
    second.close()
    rows = pq.read_table(tmp_path / "s" / "epochs.parquet").to_pylist()
    assert [r["epoch"] for r in rows] == [1, 2]


def test_parquet_is_typed_and_readable_by_pandas_and_pyarrow_datasets(results_dir):
    table = pq.read_table(results_dir / "trials.parquet")
    assert table.schema.field("lp_epochs").type == "int64" and table.schema.field("ft_lr").type == "double"
    assert table.schema.metadata[b"fundus_search.config"] == b"name: s1"
    frame = pd.read_parquet(results_dir / "trials.parquet")
    assert frame.loc[frame.strategy == "lp", "ft_lr"].isna().all()
    assert ds.dataset(str(results_dir.parent), format="parquet").to_table().num_rows >= 6


def test_table_picks_each_cells_best_trial(results_dir):
    table = init_strategy_table(load_trials([results_dir]))
    cells = {(r.init, r.strategy): r for r in table.itertuples()}
    assert cells[("flair", "lp")].best_val_average == 0.65 and cells[("flair", "lp")].trials == 2
    assert cells[("imagenet", "ft")].best_val_average == 0.55, "an errored trial must not win its cell"
    assert cells[("random", "ft")].best_val_average == 0.40


_FILL_THE_STORE = """
import json, os, sys
import pandas as pd
from fundus_search.results import ResultsStore, ResultsWriteError
from fundus_search.vocabulary import EPOCHS_FILE
root = sys.argv[1]
store = ResultsStore(root + "/s", search="s", flush_seconds=0)
written = 0
try:
    for i in range(100000):
        store.put(EPOCHS_FILE, {"trial_id": f"t{i}", "epoch": 1, "val_average": 0.5, "node": "x" * 200})
        written = i + 1
    outcome = "never full"
except ResultsWriteError as exc:
    outcome = str(exc)
on_disk = pd.read_parquet(root + "/s/epochs.parquet")
print(json.dumps({"outcome": outcome, "written": written, "rows_on_disk": len(on_disk),
                  "files": sorted(os.listdir(root + "/s"))}))
"""


def test_a_full_disk_leaves_readable_parquet_and_no_temporary_file(tmp_path):
    import sys

    done = run_on_a_small_filesystem([sys.executable, "-c", _FILL_THE_STORE, str(tmp_path / "fs")], tmp_path / "fs")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert "cannot write ([Errno 28] No space left on device)" in report["outcome"], report["outcome"]
    assert report["rows_on_disk"] >= 1 and report["rows_on_disk"] <= report["written"]
    assert not [f for f in report["files"] if f.endswith(".tmp")], report["files"]
