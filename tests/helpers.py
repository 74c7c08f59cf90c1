"""Helpers shared by the tests: config builders, a small private filesystem."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest

from fundus_search.data_io.cgi_hrdc import CGI_HRDC_TASKS, GROUNDTRUTHS, IMAGES
from fundus_search.results import ResultsStore
from fundus_search.vocabulary import EPOCHS_FILE, TRIALS_FILE


def tiny_search_config(
    *,
    storage: Path,
    flair: Path | None = None,
    num_samples: int = 8,
    max_epochs: int = 3,
    strategies=("lp", "ft", "lp_ft"),
    scheduler: dict | None = None,
    inits: dict | None = None,
    **space,
) -> dict:
    """A search on 80 synthetic 32-px images with ResNet-18: seconds per trial on one CPU."""
    inits = dict(inits or {"random": {"source": "random"}})
    if flair is not None:
        inits["flair"] = {"source": "flair", "path": str(flair)}
    return {
        "name": "tiny",
        "data": {
            "source": "synthetic",
            "synthetic": {"n": 80, "size": 32, "difficulty": 0.2},
            "image_size": 32,
            "folds": 3,
        },
        "model": {"backbone": "resnet18", "inits": inits},
        "training": {"eval_batch_size": 32, "device": "cpu"},
        "search": {
            "num_samples": num_samples,
            "max_epochs": max_epochs,
            "seed": 0,
            "space": {"strategy": list(strategies), "lp_epochs": [1, 2], "batch_size": [16], **space},
            "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "storage": {"path": str(storage), "max_failures": 1},
    }


def needs(reason: str) -> None:
    """Skip a test this machine cannot run; under CI=true fail instead, so that CI never passes
    with a check silently left out (.ci/run provides root, unshare and Chromium)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true, where this test must run")
    pytest.skip(reason)


def run_on_a_small_filesystem(
    command: list[str], folder: Path, *, size: str = "256k", read_only: bool = False, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run `command` with a fresh tmpfs of `size` mounted at `folder`, in a private mount
    namespace (unshare: as root, or as a user through a user namespace); skip where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    script = f'mount -t tmpfs -o {options} tmpfs "$1" && shift && exec "$@"'
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        needs("needs unshare with mount namespaces to make a small filesystem")
    return subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(folder), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def image_dir(root: Path) -> Path:
    """The training images of CGI-HRDC task 2 (the synthetic source's task) under `root`."""
    folder, _, _ = CGI_HRDC_TASKS[2]
    return root.joinpath(folder, *IMAGES)


def label_csv(root: Path) -> Path:
    folder, labels, _ = CGI_HRDC_TASKS[2]
    return root / folder / GROUNDTRUTHS / labels


def trial_row(trial_id, number, init, strategy, average, **extra) -> dict:
    """A trials.parquet row with made-up metrics: best_val_average = `average`."""
    return {
        "trial_id": trial_id,
        "optuna_number": number,
        "status": extra.pop("status", "completed"),
        "init": init,
        "strategy": strategy,
        "lp_lr": 1e-3 if strategy != "ft" else None,
        "ft_lr": 1e-4 if strategy != "lp" else None,
        "lp_epochs": 3 if strategy == "lp_ft" else None,
        "weight_decay": 1e-3,
        "batch_size": 16,
        "seed": number,
        "fold": 0,
        "best_epoch": 2,
        "best_val_average": average,
        "best_val_kappa": average - 0.1,
        "best_val_f1": average,
        "best_val_specificity": average + 0.1,
        "best_val_auc": 0.8,
        "epochs_run": 3,
        **extra,
    }


def write_results_dir(folder: Path, *, dataset: str = "d" * 64, shift: float = 0.0) -> Path:
    """A search folder with six trials of `dataset` (a fingerprint): flair lp 0.60 and 0.65, flair
    lp_ft 0.70, imagenet ft 0.55 and an errored 0.90, random ft 0.40 stopped early (each + shift);
    one epoch row."""
    store = ResultsStore(str(folder), search=folder.name, metadata={"config": "name: s1"})
    rows = [
        trial_row("a", 0, "flair", "lp", 0.60),
        trial_row("b", 1, "flair", "lp", 0.65),
        trial_row("c", 2, "flair", "lp_ft", 0.70),
        trial_row("d", 3, "imagenet", "ft", 0.55),
        trial_row("e", 4, "imagenet", "ft", 0.90, status="error"),
        trial_row("f", 5, "random", "ft", 0.40, status="stopped_early"),
    ]
    for row in rows:
        store.put(
            TRIALS_FILE, {**row, "best_val_average": row["best_val_average"] + shift, "dataset_fingerprint": dataset}
        )
    store.put(EPOCHS_FILE, {"trial_id": "a", "epoch": 1, "phase": "lp", "val_average": 0.5})
    store.close()
    return folder


# Two architectures at two input sizes: a ResNet-18 at data.image_size (32 px), a tiny ViT at 48 px.
EVALUATED_INITS = {
    "random": {"source": "random"},
    "scratch": {"source": "random", "arch": "vit_tiny_patch16_224", "image_size": 48},
}
EVALUATED_FOLDS, EVALUATED_REPEATS, EVALUATED_SEEDS = (0,), 2, 1


def evaluated_search(folder: Path) -> Path:
    """A finished 4-trial search over 2 inits x (lp, ft) on 3 folds with a 20% test split and its
    evaluation (fold 0 of 2 repeats x 1 seed), made by the real command line: `study`, killed with
    SIGKILL once 3 evaluation runs are done (its embedded Ray's listening sockets recorded just
    before, in STUDY_SOCKETS beside the runs); then `report` and `table --evaluation` of the
    killed study (kept as `killed-report.html` and `killed-table.txt` beside the runs); then the
    search folder is moved and `resume` of the moved search folder finishes the evaluation and
    the report. Returns the moved search folder."""
    import contextlib
    import io
    import os
    import signal
    import sys
    import time

    import yaml

    config = tiny_search_config(
        storage=folder / "runs",
        num_samples=4,
        max_epochs=1,
        strategies=("lp", "ft"),
        scheduler={"type": "fifo"},
        inits=EVALUATED_INITS,
    )
    config["data"]["test_fraction"] = 0.2
    (folder / "c.yaml").write_text(yaml.safe_dump(config))
    cli = str(Path(sys.executable).parent / "fundus-search")
    search = folder / "runs" / "s"
    rows = search / "evaluation" / ".rows.jsonl"
    # Own session: the study's Ray shares its process group, so exactly those are killed.
    with (folder / "study.out").open("w") as out:
        study = subprocess.Popen(
            [
                cli,
                "study",
                str(folder / "c.yaml"),
                "--name",
                "s",
                "--seeds",
                str(EVALUATED_SEEDS),
                "--repeats",
                str(EVALUATED_REPEATS),
                "--folds",
                ",".join(map(str, EVALUATED_FOLDS)),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline and study.poll() is None and completed_runs(rows) < 3:
                time.sleep(0.3)
            assert study.poll() is None, (
                "the study ended before its evaluation could be killed: " + (folder / "study.out").read_text()[-3000:]
            )
            _record_sockets(study.pid, folder / STUDY_SOCKETS)  # runs are reporting: every server is up
            os.killpg(study.pid, signal.SIGKILL)
            study.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(study.pid, signal.SIGKILL)
    printed = (folder / "study.out").read_text()
    assert "best val_average per init x strategy" in printed, printed[-3000:]  # the search's screen came first
    from fundus_search.search.cli.main import main  # report and table need no Ray: in this process

    assert main(["report", str(search), "-o", str(folder / "killed-report.html")]) == 0
    with contextlib.redirect_stdout(io.StringIO()) as table:
        assert main(["table", str(search), "--evaluation"]) == 0
    (folder / "killed-table.txt").write_text(table.getvalue())
    moved = search.with_name("s-moved")
    search.rename(moved)
    resumed = subprocess.run(
        [cli, "resume", str(moved)], capture_output=True, text=True, timeout=900, start_new_session=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (
        "verdict (primary question" in resumed.stdout and f"report:      {moved / 'report.html'}" in resumed.stdout
    ), resumed.stdout[-3000:]
    assert not search.exists(), "resume of the moved folder wrote into its old place"
    return moved


STUDY_SOCKETS = "study-sockets.json"  # beside the runs of `evaluated_search`


def is_loopback(ip: str) -> bool:
    return ipaddress.ip_address(ip.removeprefix("::ffff:")).is_loopback


def listening_sockets(processes) -> list[str]:
    """`name ip:port` of every listening TCP socket of `processes`."""
    found = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            found += [
                f"{process.name()} {c.laddr.ip}:{c.laddr.port}"
                for c in process.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
    return found


def exposed(sockets: list[str]) -> list[str]:
    return [s for s in sockets if not is_loopback(s.rsplit(" ", 1)[1].rsplit(":", 1)[0])]


def _record_sockets(pid: int, path: Path) -> None:
    """The listening sockets and command lines of process `pid` and its descendants, as JSON."""
    root = psutil.Process(pid)
    processes = [root, *root.children(recursive=True)]
    command_lines = []
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            command_lines.append(" ".join(process.cmdline()))
    path.write_text(json.dumps({"sockets": listening_sockets(processes), "command_lines": command_lines}))


def completed_runs(rows: Path) -> int:
    """Evaluation runs logged as completed in an evaluation's .rows.jsonl."""
    if not rows.exists():
        return 0
    return sum(
        1
        for line in rows.read_text().splitlines()
        if line.startswith('["runs.parquet"') and '"status": "completed"' in line
    )
