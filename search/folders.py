"""Checks on the folders, files and weights a search or an evaluation reads and writes, made
before anything is written; and the provenance written with their results."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import stat
import subprocess
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import yaml

from models import build_feature_net

from .config import Config
from .errors import SearchError


def check_weights(config: Config) -> None:
    """Load every init's weights once, on the CPU, strictly: a missing, unsafe or mismatched file
    fails here, before anything is written, not inside every trial."""
    for name in config.inits:
        build_feature_net(config.model.init_spec(name), config.model.backbone, seed=0, where=f"model.inits.{name}")


def check_storage(results: str) -> None:
    """A local results folder can be created and written: probe with a temporary file in the
    nearest folder that exists (nothing is left behind).

    Raises:
        SearchError: naming the folder and the OS error.
    """
    if "://" in results:
        return
    folder = Path(results)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SearchError(f"storage.path: cannot write results under {folder} ([Errno {exc.errno}] {exc.strerror}); "
                         "choose a writable folder") from exc


def check_trusted(folder: Path) -> None:
    """Refuse a folder (or a file in it) owned by someone else or writable by others.

    Resuming unpickles Ray's experiment state (`tuner.pkl`, the searcher state): a crafted
    results folder would run code, so only folders only this user could have written are resumed.

    Raises:
        SearchError: naming the first untrusted path.
    """
    for path in [folder, *sorted(folder.iterdir())]:
        info = path.lstat()
        if info.st_uid != os.getuid():
            raise SearchError(f"{path}: owned by user id {info.st_uid}, not you; resuming unpickles files from this "
                             "folder, so only your own folders are resumed (copy it, check it, then resume the copy)")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not stat.S_ISLNK(info.st_mode):
            raise SearchError(f"{path}: writable by other users (mode {stat.filemode(info.st_mode)}); resuming "
                             f"unpickles files from this folder: `chmod -R go-w {folder}` if you trust its contents")


def provenance(config: Config, fingerprint: str) -> dict[str, str]:
    """Parquet metadata: the resolved config, package versions, git commit, dataset fingerprint."""
    packages = ("fundus-search", "ray", "optuna", "torch", "torchvision", "pyarrow", "numpy")
    versions = {p: _version(p) for p in packages}
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {"config": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
            "versions": json.dumps(versions), "git_commit": commit or "unknown", "dataset_fingerprint": fingerprint,
            "machine": machine()}


def machine() -> str:
    """`AMD EPYC (2 cores, 23 GiB), GPUs: none` for the driver's machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    memory = ""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        kib = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal")))
        memory = f", {kib / 2**20:.0f} GiB"
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return f"{cpu} ({os.cpu_count()} cores{memory}), GPUs: {', '.join(gpus) or 'none'}"


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"
