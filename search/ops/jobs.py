"""Running a search on a Ray cluster through its Jobs API (`fundus-search submit`, `jobs`).

The job's working directory is this project checkout (without .venv, caches, results and
.git) plus the config; its entrypoint runs the same `run` command against the cluster
(`--address auto`). The config's paths mean what they mean on the cluster: absolute and `~`
paths are the cluster's, relative ones point into the shipped checkout, and one that would
point at something only this machine has is refused before anything is sent (`shipped_config`).
Token authentication stays on: the token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from fundus_search.search.errors import ClusterError
from fundus_search.search.ops.ray_session import token_path
from fundus_search.search.study.config import StorageConfig, load_config, read_config

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # search/ops/jobs.py -> the checkout
# .gitignore too: what it lists is excluded here already, and Ray would log a line about it
EXCLUDED = (
    ".venv",
    ".cache",
    "runs",
    ".git",
    ".gitignore",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    "benchmarks/results",
)
JOB_CONFIG = "submitted-config.yaml"
DEFAULT_ADDRESS = "http://127.0.0.1:8265"  # Ray's dashboard port, on this machine
_CONNECT_TIMEOUT_S = 10


def jobs_address(address: str | None) -> str:
    """The Jobs API to talk to: `address`, else $RAY_API_SERVER_ADDRESS (Ray's own variable),
    else the dashboard of the cluster `cluster/local.sh up` recorded (while it is up), else
    DEFAULT_ADDRESS."""
    if address:
        return address
    if os.environ.get("RAY_API_SERVER_ADDRESS"):
        return os.environ["RAY_API_SERVER_ADDRESS"]
    default_state = Path.home() / ".cache" / "fundus-search" / "local-cluster"
    state = Path(os.environ.get("FUNDUS_CLUSTER_STATE") or default_state) / "state"
    with contextlib.suppress(OSError):
        for line in state.read_text().splitlines():
            if line.startswith("dashboard "):
                return line.split(maxsplit=1)[1]
    return DEFAULT_ADDRESS


def read_token() -> str | None:
    """The Ray token from its standard places: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = token_path()
    return path.read_text().strip() or None if path.is_file() else None


def job_client(address: str):
    """A JobSubmissionClient, or one clear ClusterError within ~10 s (unreachable, silent, not a
    Ray Jobs API, no token, wrong token)."""
    token = read_token()
    if token is None:
        raise ClusterError(
            "Ray token: none in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; copy the "
            "cluster's token there"
        )
    import requests
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"}
    url = f"{address.rstrip('/')}/api/version"
    try:  # a short probe first: JobSubmissionClient itself retries for much longer
        reply = requests.get(url, timeout=_CONNECT_TIMEOUT_S, headers=headers)
    except requests.RequestException as exc:
        raise ClusterError(
            f"Jobs API {address}: cannot reach it ({type(exc).__name__}); start the cluster or open the SSH tunnel"
        ) from None
    if reply.status_code in (401, 403):
        raise ClusterError(
            f"Jobs API {address}: refused the Ray token (HTTP {reply.status_code}); use the "
            "cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)"
        )
    try:
        is_ray = reply.ok and "ray_version" in reply.json()
    except ValueError:  # not JSON
        is_ray = False
    if not is_ray:
        raise ClusterError(
            f"Jobs API {address}: {url} answered HTTP {reply.status_code} but is not a Ray Jobs "
            "API; pass the cluster's dashboard address (e.g. http://127.0.0.1:8265)"
        )
    return JobSubmissionClient(address, headers=headers)


def stage_working_dir(config_path: Path, into: Path, overrides: list | dict | None = None, *, same_host=False) -> Path:
    """Copy the checkout (minus EXCLUDED) and the config (with its `--set` values, `shipped_config`) into `into`."""
    config = shipped_config(config_path, overrides, same_host=same_host)
    shutil.copytree(PROJECT_ROOT, into, ignore=shutil.ignore_patterns(*EXCLUDED), dirs_exist_ok=True)
    (into / JOB_CONFIG).write_text(yaml.safe_dump(config, sort_keys=False))
    return into


def shipped_config(config_path: Path, overrides: list | dict | None = None, *, same_host: bool = False) -> dict:
    """The config as the job reads it, at the root of its working directory.

    Absolute, `~` and s3:// paths are kept (`~` expands on the cluster); a relative path is
    rewritten to point at the same file of the shipped checkout. `same_host`: the cluster runs
    on this machine (cluster/local.sh), so every path resolves here, as `run` resolves it.

    Raises:
        ConfigError: the config is invalid.
        ClusterError: a relative path names something the job does not ship (outside the
            checkout, or under .cache, runs...), or storage.path is relative.
    """
    config = load_config(config_path, overrides)  # validated as `run` will validate it
    if same_host:
        return config.model_dump(mode="json")
    raw = read_config(Path(config_path), overrides)
    base = Path(config_path).parent.absolute()
    storage = raw.get("storage", {}).get("path", StorageConfig().path)
    if not _kept(storage):
        raise ClusterError(
            f"storage.path: {storage} is relative, so on the cluster it is inside the job's temporary "
            "working directory, deleted with it; set a shared folder (--set storage.path=/mnt/results) or "
            "s3://bucket/prefix (submit --same-host for a cluster on this machine)"
        )
    data = raw.get("data", {})
    for key in ("root", "csv", "cache_dir"):
        if data.get(key) is not None:
            data[key] = _shipped_path(f"data.{key}", str(data[key]), base)
    for name, init in (raw.get("model", {}).get("inits") or {}).items():
        if isinstance(init, dict) and init.get("path") is not None:
            init["path"] = _shipped_path(f"model.inits.{name}.path", str(init["path"]), base)
    return raw


def _kept(path: str) -> bool:
    """A path that means the same on the cluster as written: absolute, under ~, or s3://."""
    return path.startswith(("/", "~", "s3://"))


def _shipped_path(where: str, path: str, base: Path) -> str:
    """`path` (relative to `base`) as a path relative to the job's working directory."""
    if _kept(path):
        return path
    target = Path(os.path.abspath(base / path))
    try:
        inside = target.relative_to(PROJECT_ROOT)
    except ValueError:
        inside = None
    if inside is None or not _ships(inside):
        why = "outside the checkout" if inside is None else "left out of the job like .cache and runs"
        raise ClusterError(
            f"{where}: {path} is {target} on this machine, {why}, so the cluster has no such file; give "
            f"its path on the cluster (--set {where}=/mnt/...), or submit --same-host for a cluster on this machine"
        )
    return inside.as_posix()


def _ships(inside: Path) -> bool:
    """Whether `stage_working_dir` copies the checkout's `inside` (no part matches EXCLUDED)."""
    text = inside.as_posix()
    return not any(
        text == pattern or text.startswith(f"{pattern}/")
        if "/" in pattern
        else any(fnmatch.fnmatch(part, pattern) for part in inside.parts)
        for pattern in EXCLUDED
    )


def entrypoint(name: str) -> str:
    """The job's shell command: the same `run`, against the cluster.

    Ray may remove a job's unpacked working_dir while the job still runs (once its trials
    release it); Tune then fails on a vanished current directory. So the driver imports the
    project from there (PYTHONPATH) but runs from $HOME.
    """
    return (
        f'export PYTHONPATH="$PWD${{PYTHONPATH:+:$PYTHONPATH}}" && config="$PWD/{JOB_CONFIG}" && cd "$HOME" && '
        f'python -m fundus_search run "$config" --name {shlex.quote(name)} --address auto'
    )


def follow(client, job_id: str) -> int:
    """Stream the job's logs to stdout until it ends; 0 if it succeeded, 1 otherwise."""

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}")
    return 0 if str(status).endswith("SUCCEEDED") else 1
