"""`fundus-search submit` and `jobs list|logs|stop`: run a search on a Ray cluster via the Jobs API."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.search.cli._args import UsageError, add_overrides, folder_name

_ADDRESS_HELP = (
    "the cluster's dashboard / Jobs API (default: $RAY_API_SERVER_ADDRESS, else the cluster "
    "cluster/local.sh up recorded, else http://127.0.0.1:8265; reach a remote head through an SSH tunnel)"
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    submit = commands.add_parser("submit", help="submit a search to a Ray cluster (Jobs API)")
    submit.add_argument("config", type=Path)
    submit.add_argument("--address", help=_ADDRESS_HELP)
    submit.add_argument(
        "--name", type=folder_name, help="job id and results folder name (default: <config name>-<timestamp>)"
    )
    submit.add_argument("--follow", action="store_true", help="stream the logs; exit with the job's status")
    submit.add_argument(
        "--same-host",
        action="store_true",
        help="the cluster runs on this machine (cluster/local.sh): the config's paths resolve here, as with run",
    )
    add_overrides(submit)
    submit.set_defaults(handler=submit_command)
    jobs = commands.add_parser("jobs", help="list, follow or stop submitted jobs")
    jobs.add_argument("action", choices=("list", "logs", "stop"))
    jobs.add_argument("job_id", nargs="?")
    jobs.add_argument("--address", help=_ADDRESS_HELP)
    jobs.set_defaults(handler=jobs_command)


def submit_command(args: argparse.Namespace) -> int:
    import tempfile
    import time

    from fundus_search.search.ops.jobs import (
        entrypoint,
        follow,
        job_client,
        jobs_address,
        stage_working_dir,
    )
    from fundus_search.search.study.config import load_config

    config = load_config(args.config, args.overrides)  # a bad config fails here, before the cluster is contacted
    name = args.name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory(prefix="fundus-search-job-") as tmp:
        # so does a path only this machine has (shipped_config), before the cluster is contacted
        staged = stage_working_dir(args.config, Path(tmp), args.overrides, same_host=args.same_host)
        address = jobs_address(args.address)
        client = job_client(address)
        job_id = client.submit_job(
            entrypoint=entrypoint(name), submission_id=name, runtime_env={"working_dir": str(staged)}
        )
    print(job_id, flush=True)
    if not args.follow:
        print(f"follow with: fundus-search jobs logs {job_id} --address {address}")
        return 0
    return follow(client, job_id)


def jobs_command(args: argparse.Namespace) -> int:
    from fundus_search.search.ops.jobs import follow, job_client, jobs_address

    if args.action != "list" and not args.job_id:
        raise UsageError(f"jobs {args.action}: needs a job id (see `fundus-search jobs list`)")
    client = job_client(jobs_address(args.address))
    if args.action == "list":
        for job in client.list_jobs():
            print(f"{job.submission_id or job.job_id}  {job.status}  {job.entrypoint}")
        return 0
    if args.action == "logs":
        return follow(client, args.job_id)
    client.stop_job(args.job_id)
    print(f"stop requested: {args.job_id}")
    return 0
