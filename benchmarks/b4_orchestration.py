"""B4 orchestration overhead: 16 trials of fixed CPU work through the real search stack.

Each trial burns `work` CPU seconds in 5 reports (the trainable is replaced, everything else
is the real stack: OptunaSearch, the scheduler, Parquet and TensorBoard callbacks, retries).
overhead = wall x CPUs / sum(trial compute) - 1; latency = driver-side time from a trial's
start to its first report, minus the work done before that report.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import ray
import yaml
from ray import tune

from benchmarks.common import REPEATS, local_ray, main, median, write
from fundus_search.search.engine.tuner import start_search

REPORTS = 5


def burn(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


def burn_trial(params, *, images, info, config) -> None:
    """A trainable doing only CPU work, reporting like the real one."""
    per_report = params["work_s"] / REPORTS
    for epoch in range(1, REPORTS + 1):
        start = time.perf_counter()
        burn(per_report)
        # the search stores epoch_seconds: the work of this report
        tune.report(
            {
                "epoch": epoch,
                "val_average": 0.5,
                "epochs_planned": REPORTS,
                "epoch_seconds": time.perf_counter() - start,
            }
        )


class Timing(tune.Callback):
    def __init__(self):
        self.started, self.first, self.compute = {}, {}, {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started[trial.trial_id] = time.monotonic()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.first.setdefault(trial.trial_id, (time.monotonic(), result["epoch_seconds"]))
        self.compute[trial.trial_id] = self.compute.get(trial.trial_id, 0.0) + result["epoch_seconds"]


def search_config(folder: Path, trials: int, work_s: float) -> Path:
    config = {
        "name": "b4",
        "data": {"source": "synthetic", "synthetic": {"n": 20, "size": 32}, "image_size": 32, "folds": 2},
        "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
        "search": {
            "num_samples": trials,
            "max_epochs": REPORTS,
            "cover_cells": False,
            "scheduler": {"type": "fifo"},
            "space": {"strategy": ["ft"], "batch_size": [16]},
        },
        "resources": {"cpus_per_trial": 1},
        "storage": {"path": str(folder / "runs")},
    }
    path = folder / "b4.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_search(folder: Path, trials: int, work_s: float, index: int) -> dict:
    timing = Timing()

    def trial_fn(params, **kwargs):
        burn_trial({**params, "work_s": work_s}, **kwargs)

    start = time.monotonic()
    start_search(
        search_config(folder, trials, work_s), name=f"b4-{index}", train_fn=trial_fn, extra_callbacks=(timing,)
    )
    wall = time.monotonic() - start
    cpus = ray.cluster_resources()["CPU"]
    compute = sum(timing.compute.values())
    latency = [first - timing.started[t] - compute_before for t, (first, compute_before) in timing.first.items()]
    return {
        "wall_seconds": wall,
        "cpus": cpus,
        "compute_seconds": compute,
        "overhead": wall * cpus / compute - 1,
        "first_report_latency_seconds": latency,
    }


def run(tiny: bool = False) -> dict:
    trials, work_s, repeats = (2, 0.5, 1) if tiny else (16, 5.0, REPEATS)
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        runs = [one_search(Path(tmp), trials, work_s, i) for i in range(repeats)]
    latencies = [x for r in runs for x in r["first_report_latency_seconds"]]
    figures = {
        "trials": trials,
        "work_seconds_per_trial": work_s,
        "repeats": runs,
        "overhead_median": median([r["overhead"] for r in runs]),
        "first_report_latency_median_seconds": median(latencies),
    }
    return write("b4_orchestration", figures, target="overhead <= 15%", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("overhead_median", "first_report_latency_median_seconds"))
