"""The cluster path on one machine: cluster/local.sh nodes, `fundus-search submit`, fast failures, node loss.

Last in this file: the node-loss test removes the module cluster's worker node.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pandas as pd
import pytest
import ray
import yaml

from tests.search_helpers import tiny_search_config

ROOT = Path(__file__).parent.parent
CLI = str(Path(sys.executable).parent / "fundus-search")
DASHBOARD = "http://127.0.0.1:8275"


def local_sh(*args: str, state: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FUNDUS_CLUSTER_STATE": str(state)}
    return subprocess.run(["bash", str(ROOT / "cluster" / "local.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=240)


def node_pids(state: Path) -> dict[str, int]:
    return {line.split()[1]: int(line.split()[2]) for line in (state / "state").read_text().splitlines()
            if line.startswith("node ")}


def group_alive(pgid: int) -> bool:
    return subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    state = tmp_path_factory.mktemp("cluster-state")
    up = local_sh("up", "--workers", "1", "--cpus-per-node", "1", "--port-base", "21000", "--gcs-port", "6390",
                  "--dashboard-port", "8275", state=state)
    assert up.returncode == 0, up.stderr + up.stdout
    pids = node_pids(state)
    yield state
    down = local_sh("down", state=state)
    assert down.returncode == 0, down.stderr
    for name, pid in pids.items():
        assert not group_alive(pid), f"{name} (process group {pid}) survived `down`"


def write_config(tmp_path: Path, **overrides) -> Path:
    config = tiny_search_config(storage=tmp_path / "runs", **overrides)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def submit(*args: str, env: dict | None = None, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    done = subprocess.run([CLI, "submit", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return done, time.monotonic() - start


def test_local_cluster_reports_its_nodes(cluster):
    status = local_sh("status", state=cluster)
    assert "head: pid" in status.stdout and "worker1: pid" in status.stdout and "stopped" not in status.stdout


def test_submitted_search_uses_every_node(cluster, tmp_path):
    config = write_config(tmp_path, num_samples=4, max_epochs=2, strategies=("ft",), scheduler={"type": "fifo"})
    done, _ = submit(str(config), "--address", DASHBOARD, "--follow", "--name", "spread")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert done.stdout.splitlines()[0] == "spread", "the job id comes first"
    assert "SUCCEEDED" in done.stdout
    trials = pd.read_parquet(tmp_path / "runs" / "spread" / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all()
    assert trials["node"].nunique() >= 2, f"all trials ran on {trials['node'].unique()}"


def test_unreachable_address_fails_fast(tmp_path):
    done, seconds = submit(str(write_config(tmp_path)), "--address", "http://127.0.0.1:9")
    assert done.returncode == 2 and seconds < 30
    assert "cannot reach the Ray Jobs API at http://127.0.0.1:9" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_wrong_token_fails_fast(cluster, tmp_path):
    done, seconds = submit(str(write_config(tmp_path)), "--address", DASHBOARD, env={"RAY_AUTH_TOKEN": "not-the-token"})
    assert done.returncode == 2 and seconds < 30, done.stderr
    assert "refused the Ray token" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_missing_token_fails_fast(tmp_path):
    env = {"HOME": str(tmp_path), "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "none")}
    done, seconds = submit(str(write_config(tmp_path)), "--address", DASHBOARD, env=env)
    assert done.returncode == 2 and seconds < 30
    assert "no Ray token" in done.stderr


def test_manifests_parse_and_carry_the_required_fields():
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    launcher = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    jsonschema.validate(launcher, schema)
    assert "--dashboard-host=127.0.0.1" in " ".join(launcher["head_start_ray_commands"])
    assert launcher["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    for name in ("raycluster.yaml", "rayjob.yaml"):
        manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / name).read_text())
        spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
        assert spec["authOptions"]["mode"] == "token"
        workers = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert workers["resources"]["limits"]["nvidia.com/gpu"] == 1
    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and "fundus-search run" in job["spec"]["entrypoint"]


def test_losing_a_worker_node_mid_trial_still_completes_every_trial(cluster, tmp_path):
    config = write_config(tmp_path, num_samples=4, max_epochs=6, strategies=("ft",), scheduler={"type": "fifo"})
    job = subprocess.Popen([CLI, "submit", str(config), "--address", DASHBOARD, "--follow", "--name", "loss"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rows = tmp_path / "runs" / "loss" / ".rows.jsonl"
    deadline = time.monotonic() + 300
    nodes: set[str] = set()
    while len(nodes) < 2 and time.monotonic() < deadline and job.poll() is None:
        time.sleep(0.5)
        if rows.exists():
            nodes = {json.loads(line)[1].get("node") for line in rows.read_text().splitlines()
                     if line.startswith('["epochs')} - {None}
    assert len(nodes) >= 2, "trials never ran on both nodes"
    os.killpg(node_pids(cluster)["worker1"], signal.SIGKILL)  # the worker node dies mid-trial
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    trials = pd.read_parquet(tmp_path / "runs" / "loss" / "trials.parquet")
    assert len(trials) == 4 and (trials["status"] == "completed").all() and (trials["epochs_run"] == 6).all()
