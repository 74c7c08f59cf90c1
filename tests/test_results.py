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
    (["best", "{results}", "--where", "strategy ==="], "--where: cannot evaluate"),
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
