"""Running a search on a Ray cluster through its Jobs API (`fundus-search submit`, `jobs`).

The job's working directory is this project checkout (without .venv, caches, results and
.git) plus the resolved config; its entrypoint runs the same `run` command against the
cluster (`--address auto`). Token authentication stays on: the token comes from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path

import yaml

from fundus_search.search.errors import ClusterError
from fundus_search.search.ops.ray_session import token_path
from fundus_search.search.study.config import load_config

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
_CONNECT_TIMEOUT_S = 10


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


def stage_working_dir(config_path: Path, into: Path, overrides: list | dict | None = None) -> Path:
    """Copy the checkout (minus EXCLUDED) and the resolved config (with its `--set` values) into `into`."""
    config = load_config(config_path, overrides)
    shutil.copytree(PROJECT_ROOT, into, ignore=shutil.ignore_patterns(*EXCLUDED), dirs_exist_ok=True)
    (into / JOB_CONFIG).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return into


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
