"""Checks on the folders, files and weights a search or an evaluation reads and writes, made
before anything is written; and the provenance written with their results."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import secrets
import stat
import subprocess
import tempfile
from importlib import metadata as importlib_metadata
from pathlib import Path

import yaml

from fundus_search.data_io import ImageCache, prepare_images, split_indices
from fundus_search.models import WeightsError, build_feature_net
from fundus_search.models.backbones import depth_groups
from fundus_search.search.errors import SearchError
from fundus_search.search.ops.ray_session import alive_nodes, check_address, connect
from fundus_search.search.study.config import Config
from fundus_search.vocabulary import PARTIAL_FT


def prepare(config: Config, *, address: str | None, destination: str | None = None) -> dict[int, ImageCache]:
    """The checks a search or an evaluation makes before it writes anything, new or resumed, in
    the order that makes a mistake cheap: the results location can be written (`destination`,
    a new folder), the Ray address answers, every init's weights load, every image decodes (the
    cache is built once), every fold can be made, then Ray is connected, has a node big enough
    for one trial, and (several nodes) shares the results location with every node.

    Returns:
        the decoded-image caches of the config's data, by input size (`image_caches`).

    Raises:
        UserError (SearchError, ConfigError, WeightsError, ManifestError, ClusterError).
    """
    if destination is not None:
        check_storage(destination)
    if address:
        check_address(address)  # seconds, not minutes, and before the images are decoded
    check_weights(config)
    caches = image_caches(config)
    check_splits(config, caches[config.data.image_size])
    connect(address)  # a wrong address fails here, before a folder is written
    check_resources(config)
    if address:  # an embedded Ray is one node: nothing to share
        check_shared(destination or config.storage.path)
    return caches


def image_caches(config: Config) -> dict[int, ImageCache]:
    """The decoded images at every input size the config's inits use, and at data.image_size
    (built once each, then read from the cache); every size holds the same rows."""
    sizes = sorted({config.data.image_size, *config.image_sizes()})
    caches = {size: prepare_images(config.data_spec(size)) for size in sizes}
    rows = {size: list(cache.paths) for size, cache in caches.items()}
    assert all(paths == rows[sizes[0]] for paths in rows.values()), "image caches of one dataset differ in rows"
    return caches


def check_splits(config: Config, cache: ImageCache) -> None:
    """Every fold of the search's partition can be made from these images, after the test split:
    a class with fewer groups than folds fails here, in one line, not inside every trial."""
    data = config.data
    for fold in range(data.folds):
        split_indices(
            cache.labels, cache.groups, folds=data.folds, fold=fold, seed=data.seed, test_fraction=data.test_fraction
        )


def check_weights(config: Config) -> None:
    """Load every init's weights once, on the CPU, strictly: a missing, unsafe or mismatched file
    fails here, before anything is written, not inside every trial."""
    space = config.search.space
    by_depth = PARTIAL_FT in space.strategy or space.layer_decay != 1.0  # needs the architecture's depth rule
    for name in config.inits:
        net = build_feature_net(
            config.model.init_spec(name),
            config.model.arch(name),
            seed=0,
            where=f"model.inits.{name}",
            image_size=config.image_size(name),
        )
        if by_depth:
            try:
                depth_groups(net.backbone)
            except ValueError as exc:
                raise WeightsError(f"model.inits.{name}: {exc}") from None


def check_storage(results: str) -> None:
    """A local results folder can be created and written: probe with a temporary file in the
    nearest folder that exists (nothing is left behind).

    Raises:
        SearchError: naming the folder and the OS error.
    """
    if "://" in results:
        return
    folder = _nearest_folder(results)
    try:
        if not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SearchError(
            f"storage.path: cannot write results under {folder} ([Errno {exc.errno}] {exc.strerror}); "
            "choose a writable folder"
        ) from exc


def _nearest_folder(results: str) -> Path:
    folder = Path(results)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def check_shared(results: str, *, timeout_s: float = 120) -> None:
    """On a Ray cluster of several nodes, every node reads what this driver writes under the
    results location: Tune's trials write their checkpoints there, and a folder that is local to
    each machine would scatter them (and lose them with the node). A marker file is written in
    the nearest existing folder and read back by a task pinned to each alive node.

    Raises:
        SearchError: naming the folder and the nodes that could not read it.
    """
    if "://" in results:
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = {f"{n['NodeManagerHostname']}:{n['NodeID'][:12]}": n["NodeID"] for n in alive_nodes()}
    if len(nodes) < 2:
        return
    folder = _nearest_folder(results)
    marker = folder / f".fundus-search-shared-{secrets.token_hex(8)}"
    marker.write_text(marker.name)
    try:
        read = ray.remote(num_cpus=0)(_read_marker)
        refs = [
            read.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote(str(marker))
            for node_id in nodes.values()
        ]
        blind = [name for name, ref in zip(nodes, refs, strict=True) if not _reads(ref, marker.name, name, timeout_s)]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise SearchError(
            f"storage.path: {folder} is not shared by the cluster's nodes ({len(blind)} of {len(nodes)}, e.g. "
            f"{blind[0]}, cannot read a file written there); put results on a mount every node shares (NFS, "
            "the KubeRay results volume) or s3://bucket/prefix"
        )


def _reads(ref, text: str, node: str, timeout_s: float) -> bool:
    """Whether `node`'s task read `text`; a node gone since Ray listed it holds no trial, so it passes."""
    import ray

    try:
        return ray.get(ref, timeout=timeout_s) == text
    except ray.exceptions.TaskUnschedulableError:  # died after ray.nodes() listed it
        return True
    except ray.exceptions.GetTimeoutError:
        raise SearchError(
            f"storage.path: node {node} did not run the shared-storage check within {timeout_s:.0f} s; "
            "see `ray status` for a busy or unhealthy node"
        ) from None


def _read_marker(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


def check_trusted(folder: Path) -> Path:
    """Refuse to resume `folder` unless this user alone could have written everything in it.

    Resuming unpickles Ray's experiment state (`tuner.pkl`, `experiment_state-*.json`, the
    searcher's state) and loads trial checkpoints, so every entry under the folder is checked,
    at any depth, without following links: a symlink is refused (it could lead to anyone's
    file), and so is an entry owned by another user or writable by others.

    Returns:
        the folder, resolved (what is checked is what is restored).

    Raises:
        SearchError: naming the first untrusted path.
    """
    folder = Path(os.path.realpath(folder))
    _check_entry(folder, folder)
    for dirpath, dirnames, filenames in os.walk(folder):  # never descends into a linked folder
        for name in sorted(dirnames + filenames):
            _check_entry(Path(dirpath) / name, folder)
    return folder


def _check_entry(path: Path, folder: Path) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise SearchError(
            f"{path}: a symlink (to {os.readlink(path)}); resuming unpickles files from this folder, "
            "so it follows no link: remove the link, or resume a folder without links"
        )
    if info.st_uid != os.getuid():
        raise SearchError(
            f"{path}: owned by user id {info.st_uid}, not you; resuming unpickles files from this "
            "folder, so only folders you wrote are resumed (a copy of another user's folder still holds "
            "their pickles); `report`, `table` and `best` read it safely"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise SearchError(
            f"{path}: writable by other users (mode {stat.filemode(info.st_mode)}); resuming "
            f"unpickles files from this folder: `chmod -R go-w {folder}` if you trust its contents"
        )


def check_resources(config: Config) -> None:
    """A trial's resource request fits on at least one node of the connected Ray: Ray would
    otherwise wait for such a node for ever.

    Raises:
        SearchError: naming the request and the largest node.
    """

    nodes = [n.get("Resources", {}) for n in alive_nodes()]
    cpus = max((n.get("CPU", 0) for n in nodes), default=0)
    gpus = max((n.get("GPU", 0) for n in nodes), default=0)
    want = config.resources.cpus_per_trial
    if want > cpus:
        raise SearchError(
            f"resources.cpus_per_trial: {want:g} CPUs per trial, but the largest node of the Ray "
            f"cluster has {cpus:g}; ask for at most {cpus:g}"
        )
    if gpus:  # without GPUs every trial runs on CPUs (search.engine.tuner.trainable_with_resources)
        strategies = set(config.search.space.strategy)
        over = {s: g for s, g in config.resources.gpus_per_trial.items() if s in strategies and g > gpus}
        if over:
            raise SearchError(
                f"resources.gpus_per_trial: {over} GPUs per trial, but the largest node of the Ray "
                f"cluster has {gpus:g}; ask for at most {gpus:g}"
            )


def provenance(config: Config, fingerprint: str) -> dict[str, str]:
    """Parquet metadata: the resolved config, package versions, git commit, dataset fingerprint."""
    packages = ("fundus-search", "ray", "optuna", "torch", "torchvision", "pyarrow", "numpy")
    versions = {p: _version(p) for p in packages}
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "config": yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False),
        "versions": json.dumps(versions),
        "git_commit": commit or "unknown",
        "dataset_fingerprint": fingerprint,
        "machine": machine(),
    }


def machine() -> str:
    """`AMD EPYC (2 cores, 23 GiB), GPUs: none` for the driver's machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    memory = ""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/meminfo") as info:
        kib = int(next(line.split()[1] for line in info if line.startswith("MemTotal")))
        memory = f", {kib / 2**20:.0f} GiB"
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return f"{cpu} ({os.cpu_count()} cores{memory}), GPUs: {', '.join(gpus) or 'none'}"


def _version(package: str) -> str:
    try:
        return importlib_metadata.version(package)
    except importlib_metadata.PackageNotFoundError:
        return "unknown"
