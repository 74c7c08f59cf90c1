"""`best`, `table` and `tensorboard` on real Parquet files: ordering, filters that never run
code, formats, and one-line errors."""

from __future__ import annotations

import json

import pytest

from fundus_search.search.cli.main import main
from tests.helpers import write_results_dir


@pytest.fixture
def results_dir(tmp_path):
    return write_results_dir(tmp_path / "s1")


def test_best_command_orders_filters_and_formats(results_dir, capsys):
    assert main(["best", str(results_dir), "--top", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["trial_id"] for r in rows] == ["c", "b"]
    assert main(["best", str(results_dir), "--where", "strategy == 'ft'", "--csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("search,dataset_fingerprint,trial_id,status,init") and len(out) == 3  # d, f (e errored)
    assert main(["best", str(results_dir.parent), "--metric", "val_kappa", "--top", "1"]) == 0
    assert "lp_ft" in capsys.readouterr().out


def test_table_command_prints_the_paper_shape(results_dir, capsys):
    assert main(["table", str(results_dir)]) == 0
    out = capsys.readouterr().out
    assert "best val_average per init x strategy" in out
    flair_line = next(line for line in out.splitlines() if line.startswith("flair"))
    assert "0.650 (k 0.55 F1 0.65 Sp 0.75) n=2" in flair_line and "0.700" in flair_line


def test_searches_of_different_datasets_are_never_pooled_into_one_table(results_dir, tmp_path, capsys):
    from tests.helpers import write_results_dir

    write_results_dir(tmp_path / "s2", dataset="e" * 64, shift=0.2)  # another dataset: flair lp 0.85
    write_results_dir(tmp_path / "s3", shift=-0.1)  # results_dir's dataset again: pooled with it
    assert main(["table", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 datasets (fingerprints differ): one table each, never pooled")
    first, second = out.split("dataset eeeeeeeeeeee (search s2):")
    assert "dataset dddddddddddd (searches s1, s3):" in first and "0.650 (k 0.55" in first and "0.850" not in first
    assert "0.850 (k 0.55" in second and "s2 #1" in second
    assert main(["best", str(tmp_path), "--top", "10"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:2] == ["search", "dataset"] and "eeeeeeeeeeee" in out
    assert main(["table", str(tmp_path), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["dataset_fingerprint"] for r in rows} == {"d" * 64, "e" * 64}


@pytest.mark.parametrize(
    "argv,message",
    [
        (["best", "{tmp}/nothing"], "no trials.parquet in"),
        (["best", "{results}", "--metric", "val_magic"], "--metric: unknown 'val_magic'"),
        (["best", "{results}", "--where", "strategy ==="], "--where: not a valid expression"),
        (["best", "{results}", "--where", "magic > 1"], "--where: unknown column 'magic'"),
        (["best", "{results}", "--top", "-1"], "argument --top: must be >= 1 (got -1)"),
        (["best", "{results}", "--top", "x"], "argument --top: expected an integer (got 'x')"),
    ],
)
def test_query_mistakes_exit_2_with_one_line(argv, message, results_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, results=results_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


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
    server = subprocess.Popen(
        [cli, "tensorboard", str(results_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
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


@pytest.mark.parametrize(
    "payload",
    [
        "@pd.io.common.os.system('touch {pwned}')",
        "@Path('{pwned}').touch()",
        "strategy == __import__('os').system('touch {pwned}')",
        "strategy.__class__.__init__.__globals__ == 1",
        "init == (lambda: open('{pwned}', 'w'))()",
        "best_val_average > [x for x in ().__class__.__base__.__subclasses__()]",
        "strategy == 'lp' + 'ft'",
        "init[0] == 'f'",
    ],
)
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


def test_the_end_screen_ranks_by_the_searchs_own_metric_and_mode(results_dir, capsys):
    """`run`'s closing screen: the table, the winners and the best configuration by search.metric
    and search.mode (as search.json's facts record them), not by val_average."""
    from fundus_search.results.layout import SearchFacts, SearchFolder
    from fundus_search.search.cli.run import summarise

    facts = SearchFacts(metric="val_kappa", mode="min", max_epochs=2, rungs=(), params={}, dataset="d")
    folder = SearchFolder(path=results_dir, name="s1", num_samples=6, facts=facts)
    folder.write()
    assert summarise(SearchFolder.open(results_dir)) == 1  # one trial errored
    out = capsys.readouterr().out
    assert "best val_kappa per init x strategy" in out
    winners = out.split("each cell's winner:")[1].split("best configuration:")[0]
    assert "flair     lp     0.500  #0 " in winners  # kappa 0.50 (#0) beats 0.55 (#1) when lower is better
    best = out.split("best configuration:")[1].splitlines()[2].split()
    assert best[:3] == ["stopped_early", "random", "ft"] and "0.3" in best  # kappa 0.30: the lowest of all


@pytest.mark.parametrize("rows", ["few", "many"])
def test_a_reader_that_stops_early_ends_the_command_quietly(rows, results_dir, tmp_path):
    """`best --json | head -1`: the reader closes the pipe, before the command wrote (few rows,
    flushed at the end) or while it writes (many rows): exit 0 and nothing on stderr."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    folder = results_dir
    if rows == "many":  # 100 searches of six trials: more JSON than a pipe holds
        folder = tmp_path / "many"
        for i in range(100):
            write_results_dir(folder / f"s{i}", shift=i / 1000)
    read, write = os.pipe()
    os.close(read)  # the reader already left
    try:
        done = subprocess.run(
            [str(Path(sys.executable).parent / "fundus-search"), "best", str(folder), "--json", "--top", "1000"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},  # stdout buffered, as usual
        )
    finally:
        os.close(write)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]
