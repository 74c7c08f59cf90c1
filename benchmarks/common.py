"""Shared benchmark plumbing: machine description, repeated timing, JSON output."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
RESULTS_ENV = "FUNDUS_BENCH_RESULTS"  # another folder for the JSON (the tests' tiny runs use a temporary one)
REPEATS = 5


def machine() -> dict:
    """CPU model, cores, memory and GPU (if any) of this machine."""
    import torch

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration), open("/proc/cpuinfo") as info:
        cpu = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "python": platform.python_version()}


def versions() -> dict:
    out = {}
    for package in ("fundus-search", "torch", "torchvision", "ray", "optuna", "numpy", "pillow"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


@contextlib.contextmanager
def local_ray(**options):
    """A local Ray for one benchmark (2 CPUs, a 300 MB object store, no dashboard, unless
    `options` say otherwise; None: Ray's default). Inside a Ray already running (the tests start
    one for all the tiny runs) it uses that one and leaves it running."""
    import ray

    if ray.is_initialized():
        yield
        return
    settings = {"num_cpus": 2, "object_store_memory": 300 * 1024**2, **options}
    ray.init(address="local", include_dashboard=False, log_to_driver=False, **settings)
    try:
        yield
    finally:
        ray.shutdown()


def timed(fn: Callable[[], object], repeats: int = REPEATS) -> list[float]:
    """Wall seconds of `repeats` calls of fn."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def main(run: Callable[[bool], dict], doc: str | None, keys: tuple[str, ...]) -> None:
    """Command line of one benchmark: `python -m benchmarks.<name> [--tiny]`, printing `keys`."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--tiny", action="store_true", help="seconds-long sizes (the tests use this)")
    record = run(parser.parse_args().tiny)
    print({k: record.get(k) for k in keys})


def results_dir() -> Path:
    """benchmarks/results, or $FUNDUS_BENCH_RESULTS."""
    return Path(os.environ.get(RESULTS_ENV) or RESULTS)


def write(name: str, figures: dict, *, target: str, tiny: bool) -> dict:
    """<results_dir>/<name>.json with the machine, versions, raw figures and the target."""
    record = {
        "benchmark": name,
        "target": target,
        "tiny": tiny,
        "machine": machine(),
        "versions": versions(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **figures,
    }
    folder = results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.tiny.json" if tiny else f"{name}.json")
    path.write_text(json.dumps(record, indent=2))
    return record
