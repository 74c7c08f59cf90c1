"""`fundus-search run` refuses bad input before writing anything, and a disk that fills mid-run
is one line: bad weights, names that leave storage.path, read-only and full disks."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

from fundus_search.search.cli.main import main
from tests.helpers import run_on_a_small_filesystem, tiny_search_config

CLI = str(Path(sys.executable).parent / "fundus-search")


def _weights_that_do_not_fit(kind: str, folder: Path) -> Path:
    import os

    import torch
    import torchvision

    path = folder / f"{kind}.pth"
    if kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "resnet50-for-resnet18":
        torch.save({f"vision_model.model.{k}": v for k, v in torchvision.models.resnet50().state_dict().items()}, path)
    else:  # a pickle that would run code

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {folder / 'pwned'}",))

        torch.save({"vision_model.model.conv1.weight": Payload()}, path)
    return path


@pytest.mark.parametrize(
    "kind,message",
    [
        ("random-bytes", "is not a PyTorch checkpoint"),
        ("resnet50-for-resnet18", "checkpoint is a resnet50 but the architecture is resnet18"),
        ("code", "would run code on load"),
    ],
)
def test_bad_weights_stop_the_run_before_anything_is_written(kind, message, tmp_path, capsys):
    weights = _weights_that_do_not_fit(kind, tmp_path)
    config = tiny_search_config(storage=tmp_path / "runs", flair=weights)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and "model.inits.flair" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["../outside", "/tmp/abs", ".hidden", "a/b"])
def test_a_name_cannot_leave_the_storage_folder(name, tmp_path, capsys):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_search_config(storage=tmp_path / "runs")))
    assert main(["run", str(tmp_path / "c.yaml"), "--name", name]) == 2
    err = capsys.readouterr().err
    assert "argument --name: use letters, digits" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "outside").exists()


def test_a_read_only_results_folder_is_one_line_and_exit_2(tmp_path):
    storage = tmp_path / "ro"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_search_config(storage=storage / "runs")))
    done = run_on_a_small_filesystem([CLI, "run", str(tmp_path / "c.yaml")], storage, read_only=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"storage.path: cannot write results under {storage} ([Errno 30] Read-only file system)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


_FILL_WHEN_ROWS_ARRIVE = """
set -e
folder=$1; shift
( while [ ! -s "$folder/runs/full/.rows.jsonl" ]; do sleep 0.2; done
  sleep 0.3; cat /dev/zero > "$folder/filler" 2>/dev/null || true ) &
exec "$@"
"""


@pytest.mark.slow
def test_a_disk_that_fills_mid_run_is_one_line_exit_1_and_readable_parquet(tmp_path):
    storage = tmp_path / "fs"
    config = tiny_search_config(
        storage=storage / "runs", num_samples=4, max_epochs=3, strategies=("lp",), scheduler={"type": "fifo"}
    )
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    read_back = (
        f"import pandas as pd, glob; rows = len(pd.read_parquet('{storage}/runs/full/trials.parquet')); "
        f"print('rows', rows, 'tmp', glob.glob('{storage}/runs/full/.*.tmp'))"
    )
    command = [
        "sh",
        "-c",
        f'{CLI} run {tmp_path / "c.yaml"} --name full; echo "exit=$?"; {sys.executable} -c "{read_back}"',
    ]
    done = run_on_a_small_filesystem(
        ["sh", "-c", _FILL_WHEN_ROWS_ARRIVE, "sh", str(storage), *command], storage, size="40m"
    )
    assert "exit=1" in done.stdout, done.stdout[-2000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    noise = [line for line in done.stderr.splitlines() if not line.startswith(("error:", "INFO "))]
    assert len(errors) == 1 and not noise, done.stderr[-3000:]
    assert "No space left on device" in errors[0] and "fundus-search resume" in errors[0], errors
    assert (
        errors[0].endswith(f"`fundus-search resume {storage / 'runs' / 'full'}`")
        or "search (or evaluation) folder" in errors[0]
    ), errors
    assert "tmp []" in done.stdout and "rows " in done.stdout, done.stdout[-1000:]


def test_folds_the_images_cannot_fill_stop_the_run_before_anything_is_written(tmp_path, capsys):
    """10 images (4 positive), a 20% test split, 5 folds: a class has fewer groups than folds.
    Found from the manifest before the results folder exists, not inside every trial."""
    import yaml

    from tests.helpers import tiny_search_config

    config = tiny_search_config(storage=tmp_path / "runs")
    config["data"]["synthetic"]["n"] = 10
    config["data"] |= {"folds": 5, "test_fraction": 0.2}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml"), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert "fewer than folds=5; lower data.folds" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "never").exists()
