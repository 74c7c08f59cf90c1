"""Helpers shared by the tests: config builders, a small private filesystem."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def tiny_search_config(*, storage: Path, flair: Path | None = None, num_samples: int = 8, max_epochs: int = 3,
                       strategies=("lp", "ft", "lp_ft"), scheduler: dict | None = None, inits: dict | None = None,
                       **space) -> dict:
    """A search on 80 synthetic 32-px images with ResNet-18: seconds per trial on one CPU."""
    inits = dict(inits or {"random": {"source": "random"}})
    if flair is not None:
        inits["flair"] = {"source": "flair", "path": str(flair)}
    return {
        "name": "tiny",
        "data": {"source": "synthetic", "synthetic": {"n": 80, "size": 32, "difficulty": 0.2}, "image_size": 32,
                 "folds": 3},
        "model": {"backbone": "resnet18", "inits": inits},
        "training": {"eval_batch_size": 32, "device": "cpu"},
        "search": {"num_samples": num_samples, "max_epochs": max_epochs, "seed": 0,
                   "space": {"strategy": list(strategies), "lp_epochs": [1, 2], "batch_size": [16], **space},
                   "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2}},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "storage": {"path": str(storage), "max_failures": 1},
    }


def run_on_a_small_filesystem(command: list[str], folder: Path, *, size: str = "256k", read_only: bool = False,
                              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `command` with a fresh tmpfs of `size` mounted at `folder`, in a private mount
    namespace (unshare: as root, or as a user through a user namespace); skip where neither works."""
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    script = f'mount -t tmpfs -o {options} tmpfs "$1" && shift && exec "$@"'
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare with mount namespaces to make a small filesystem")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(folder), *command],
                          capture_output=True, text=True, timeout=timeout)
