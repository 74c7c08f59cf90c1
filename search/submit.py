"""`fundus-search submit` and `jobs list|logs|stop`: run a search on a Ray cluster via the Jobs API.

The job's working directory is this project checkout (without .venv, caches, results and
.git) plus the resolved config; its entrypoint runs the same `run` command against the
cluster (`--address auto`). Token authentication stays on: the token comes from
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .config import load_config
from .errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXCLUDED = (".venv", ".cache", "runs", ".git", "__pycache__", "*.egg-info", ".pytest_cache", "benchmarks/results")
JOB_CONFIG = "submitted-config.yaml"
_CONNECT_TIMEOUT_S = 10


def add_parsers(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="submit a search to a Ray cluster (Jobs API)")
    submit.add_argument("config", type=Path)
    submit.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"),
                        help="the cluster's dashboard / Jobs API (reach a remote head through an SSH tunnel)")
    submit.add_argument("--name", help="job id and results folder name (default: <config name>-<timestamp>)")
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    submit.set_defaults(handler=submit_command)
    jobs = commands.add_parser("jobs", help="list, follow or stop submitted jobs")
    jobs.add_argument("action", choices=("list", "logs", "stop"))
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--address", default=os.environ.get("RAY_API_SERVER_ADDRESS", "http://127.0.0.1:8265"))
    jobs.set_defaults(handler=jobs_command)


def read_token() -> str | None:
    """The Ray token from its standard places: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() or None if path.is_file() else None


def connect(address: str):
    """A JobSubmissionClient, or one clear UsageError within ~10 s (unreachable, silent, not a
    Ray Jobs API, no token, wrong token)."""
    token = read_token()
    if token is None:
        raise UsageError("--address: no Ray token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); "
                         "copy the cluster's token there")
    import requests
    from ray.job_submission import JobSubmissionClient

    headers = {"Authorization": f"Bearer {token}"}
    url = f"{address.rstrip('/')}/api/version"
    try:  # a short probe first: JobSubmissionClient itself retries for much longer
        reply = requests.get(url, timeout=_CONNECT_TIMEOUT_S, headers=headers)
    except requests.RequestException as exc:
        raise UsageError(f"--address: cannot reach the Ray Jobs API at {address} ({type(exc).__name__}); "
                         "start the cluster or open the SSH tunnel") from None
    if reply.status_code in (401, 403):
        raise UsageError(f"--address: {address} refused the Ray token (HTTP {reply.status_code}); "
                         "use the cluster's token (RAY_AUTH_TOKEN or ~/.ray/auth_token)")
    try:
        is_ray = reply.ok and "ray_version" in reply.json()
    except ValueError:  # not JSON
        is_ray = False
    if not is_ray:
        raise UsageError(f"--address: {url} answered HTTP {reply.status_code} but is not a Ray Jobs API; "
                         "pass the cluster's dashboard address (e.g. http://127.0.0.1:8265)")
    return JobSubmissionClient(address, headers=headers)


def stage_working_dir(config_path: Path, into: Path) -> Path:
    """Copy the checkout (minus EXCLUDED) and the resolved config into `into`."""
    config = load_config(config_path)
    shutil.copytree(PROJECT_ROOT, into, ignore=shutil.ignore_patterns(*EXCLUDED), dirs_exist_ok=True)
    (into / JOB_CONFIG).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    return into


def entrypoint(name: str) -> str:
    """The job's shell command: the same `run`, against the cluster.

    Ray may remove a job's unpacked working_dir while the job still runs (once its trials
    release it); Tune then fails on a vanished current directory. So the driver imports the
    project from there (PYTHONPATH) but runs from $HOME.
    """
    return (f'export PYTHONPATH="$PWD${{PYTHONPATH:+:$PYTHONPATH}}" && config="$PWD/{JOB_CONFIG}" && cd "$HOME" && '
            f'python -m search.cli run "$config" --name {shlex.quote(name)} --address auto')


def submit_command(args: argparse.Namespace) -> int:
    config = load_config(args.config)  # a bad config fails here, before the cluster is contacted
    client = connect(args.address)
    name = args.name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="fundus-search-job-") as tmp:
        staged = stage_working_dir(args.config, Path(tmp))
        job_id = client.submit_job(entrypoint=entrypoint(name), submission_id=name,
                                   runtime_env={"working_dir": str(staged)})
    print(job_id, flush=True)
    if not args.follow:
        print(f"follow with: fundus-search jobs logs {job_id} --address {args.address}")
        return 0
    return follow(client, job_id)


def follow(client, job_id: str) -> int:
    """Stream the job's logs until it ends; 0 if it succeeded, 1 otherwise."""
    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}")
    return 0 if str(status).endswith("SUCCEEDED") else 1


def jobs_command(args: argparse.Namespace) -> int:
    client = connect(args.address)
    if args.action == "list":
        for job in client.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
        return 0
    if not args.job_id:
        raise UsageError(f"jobs {args.action}: needs a job id (see `fundus-search jobs list`)")
    if args.action == "logs":
        return follow(client, args.job_id)
    client.stop_job(args.job_id)
    print(f"stop requested: {args.job_id}")
    return 0
