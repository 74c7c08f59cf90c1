"""The Parquet store (idempotent, replayable, typed) and the best/table queries and commands."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from models import VAL_METRICS
from results import EPOCHS_SCHEMA, TRIALS_SCHEMA, ResultsStore, init_strategy_table, load_trials
from results.store import VAL_COLUMNS
from search.cli import main
from search.trial import PARAMS
from tests.helpers import run_on_a_small_filesystem


def trial(trial_id, number, init, strategy, average, **extra):
    return {"trial_id": trial_id, "optuna_number": number, "status": extra.pop("status", "completed"), "init": init,
            "strategy": strategy, "lp_lr": 1e-3 if strategy != "ft" else None,
            "ft_lr": 1e-4 if strategy != "lp" else None, "lp_epochs": 3 if strategy == "lp_ft" else None,
            "weight_decay": 1e-3, "batch_size": 16, "seed": number, "fold": 0, "best_epoch": 2,
            "best_val_average": average, "best_val_kappa": average - 0.1, "best_val_f1": average,
            "best_val_specificity": average + 0.1, "best_val_auc": 0.8, "epochs_run": 3, **extra}


@pytest.fixture
def results_dir(tmp_path):
    store = ResultsStore(str(tmp_path / "s1"), search="s1", metadata={"config": "name: s1"})
    for row in [trial("a", 0, "flair", "lp", 0.60), trial("b", 1, "flair", "lp", 0.65), trial("c", 2, "flair", "lp_ft", 0.70),
                trial("d", 3, "imagenet", "ft", 0.55), trial("e", 4, "imagenet", "ft", 0.90, status="error"),
                trial("f", 5, "random", "ft", 0.40, status="stopped_early")]:
        store.put_trial(row)
    store.add_epoch({"trial_id": "a", "epoch": 1, "phase": "lp", "val_average": 0.5})
    store.close()
    return tmp_path / "s1"


def test_every_metric_and_parameter_has_a_column():
    epoch_columns, trial_columns = set(EPOCHS_SCHEMA.names), set(TRIALS_SCHEMA.names)
    assert set(VAL_METRICS) <= epoch_columns and set(PARAMS) <= trial_columns
    assert {f"best_{m}" for m in VAL_METRICS} <= trial_columns


def test_rows_are_idempotent_on_trial_and_epoch(tmp_path):
    store = ResultsStore(str(tmp_path / "s"), search="s", flush_seconds=0)
    store.add_epoch({"trial_id": "t", "epoch": 1, "val_average": 0.1})
    store.add_epoch({"trial_id": "t", "epoch": 1, "val_average": 0.2})  # a retried epoch re-reported
    store.add_epoch({"trial_id": "t", "epoch": 2, "val_average": 0.3})
    store.close()
    rows = pq.read_table(tmp_path / "s" / "epochs.parquet").to_pylist()
    assert [(r["epoch"], r["val_average"]) for r in rows] == [(1, 0.2), (2, 0.3)]


def test_a_reopened_store_replays_the_log_without_duplicates(tmp_path):
    first = ResultsStore(str(tmp_path / "s"), search="s", flush_seconds=3600)  # no Parquet write before "crash"
    first.add_epoch({"trial_id": "t", "epoch": 1, "val_average": 0.1})
    first._log.write('["epochs.parquet", {"trial_id": "t", "ep')  # a line cut short by SIGKILL
    first._log.flush()
    second = ResultsStore(str(tmp_path / "s"), search="s")
    second.add_epoch({"trial_id": "t", "epoch": 2, "val_average": 0.2})
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


def test_best_command_orders_filters_and_formats(results_dir, capsys):
    assert main(["best", str(results_dir), "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in rows] == ["c", "b"]
    assert main(["best", str(results_dir), "--where", "strategy == 'ft'", "--csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("search,trial_id,status,init") and len(out) == 3  # header, d, f (e errored)
    assert main(["best", str(results_dir.parent), "--metric", "val_kappa", "--top", "1"]) == 0
    assert "lp_ft" in capsys.readouterr().out


def test_table_command_prints_the_paper_shape(results_dir, capsys):
    assert main(["table", str(results_dir)]) == 0
    out = capsys.readouterr().out
    assert "best val_average per init x strategy" in out
    flair_line = next(line for line in out.splitlines() if line.startswith("flair"))
    assert "0.650 (k 0.55 F1 0.65 Sp 0.75) n=2" in flair_line and "0.700" in flair_line


@pytest.mark.parametrize("argv,message", [
    (["best", "{tmp}/nothing"], "no trials.parquet in"),
    (["best", "{results}", "--metric", "val_magic"], "--metric: unknown 'val_magic'"),
    (["best", "{results}", "--where", "strategy ==="], "--where: not a valid expression"),
    (["best", "{results}", "--where", "magic > 1"], "--where: unknown column 'magic'"),
    (["best", "{results}", "--top", "-1"], "argument --top: must be >= 1 (got -1)"),
    (["best", "{results}", "--top", "x"], "argument --top: expected an integer (got 'x')"),
])
def test_query_mistakes_exit_2_with_one_line(argv, message, results_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, results=results_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("section,value,message", [
    ("search", {"space": {"ft_lr": [0.0, 1e-3]}}, "search.space.ft_lr: lower bound must be > 0.0 (got 0.0)"),
    ("search", {"space": {"init": ["imagenet"]}}, "search.space.init: ['imagenet'] not in model.inits (random)"),
    ("search", {"scheduler": {"type": "hyperband"}}, "search.scheduler.type: input should be 'asha' or 'fifo'"),
    ("search", {"sampler": "grid"}, "search.sampler: input should be 'tpe' or 'random'"),
    ("search", {"space": {"ft_lr": [1e-5, 1e-4, 1e-3]}}, "search.space.ft_lr: [low, high] needs two numbers"),
    ("search", {"space": {"lp_epochs": {"choices": [2, 8.5]}}}, "search.space.lp_epochs: {choices: [...]} needs"),
    ("search", {"metric": "val_magic"}, "search.metric: unknown 'val_magic'"),
    ("resources", {"gpus_per_trial": {"lp": -1}}, "resources.gpus_per_trial: GPU shares must be >= 0 (got {'lp': -1.0})"),
    ("model", {"backbone": "vit"}, "model.backbone: input should be 'resnet18', 'resnet34' or 'resnet50'"),
])
def test_run_config_errors_exit_2_naming_the_key_and_write_nothing(section, value, message, tmp_path, write_config,
                                                                   capsys):
    config = {"data": {"source": "synthetic", "synthetic": {"n": 20, "size": 32}, "image_size": 32, "folds": 2},
              "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
              "storage": {"path": str(tmp_path / "runs")}}
    config.setdefault(section, {}).update(value)
    assert main(["run", str(write_config(config))]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["demo.yaml", "cgi-hrdc-task1.yaml", "cgi-hrdc-task2.yaml"])
def test_shipped_configs_validate(name):
    from pathlib import Path
    from search.config import load_config
    config = load_config(Path(__file__).parent.parent / "search" / "configs" / name)
    assert config.search.metric == "val_average" and set(config.inits) <= set(config.model.inits)


def test_tensorboard_command_serves_on_loopback(results_dir):
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).parent / "fundus-search")
    server = subprocess.Popen([cli, "tensorboard", str(results_dir), "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert f"at http://127.0.0.1:{port}/" in server.stdout.readline()
        deadline, status = time.monotonic() + 60, None
        while time.monotonic() < deadline and status is None:
            try:
                status = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status
            except OSError:
                time.sleep(0.5)
        assert status == 200, "TensorBoard did not answer on 127.0.0.1"
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("payload", [
    "@pd.io.common.os.system('touch {pwned}')",
    "@Path('{pwned}').touch()",
    "strategy == __import__('os').system('touch {pwned}')",
    "strategy.__class__.__init__.__globals__ == 1",
    "init == (lambda: open('{pwned}', 'w'))()",
    "best_val_average > [x for x in ().__class__.__base__.__subclasses__()]",
    "strategy == 'lp' + 'ft'",
    "init[0] == 'f'",
])
def test_where_never_runs_code(payload, results_dir, tmp_path, capsys):
    pwned = tmp_path / "pwned"
    assert main(["best", str(results_dir), "--where", payload.format(pwned=pwned)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --where:") and len(err.strip().splitlines()) == 1, err
    assert not pwned.exists()


def test_where_filters_with_comparisons_in_and_not(results_dir, capsys):
    query = "init in ['flair', 'imagenet'] and not strategy == 'lp' and best_val_average >= 0.55"
    assert main(["best", str(results_dir), "--where", query, "--json"]) == 0
    assert sorted(r["trial_id"] for r in json.loads(capsys.readouterr().out)) == ["c", "d"]


def test_a_corrupt_parquet_file_is_one_line(results_dir, capsys):
    (results_dir / "trials.parquet").write_bytes(b"PAR1 not really")
    for command in ("best", "table"):
        assert main([command, str(results_dir)]) == 2
        err = capsys.readouterr().err
        assert "trials.parquet: not a readable Parquet file" in err and len(err.strip().splitlines()) == 1


_FILL_THE_STORE = """
import json, os, sys
import pandas as pd
from results import ResultsStore, ResultsWriteError
root = sys.argv[1]
store = ResultsStore(root + "/s", search="s", flush_seconds=0)
written = 0
try:
    for i in range(100000):
        store.add_epoch({"trial_id": f"t{i}", "epoch": 1, "val_average": 0.5, "node": "x" * 200})
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
