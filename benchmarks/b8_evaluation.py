"""B8 evaluation orchestration: what `fundus-search evaluate` costs beyond its runs' own work.

A search folder is written directly (its config and a trials.parquet naming one lp and one ft
configuration of a random ResNet-18 on 120 synthetic 48-px images), then the real `evaluate`
retrains them on 3 folds x 2 seeds (12 runs, 3 epochs each) on 2 CPUs, twice at a time.
overhead = wall x CPUs / sum(run time) - 1, where a run's time is the trainable's own
(`time_total_s`: building the model, loading features, its epochs) and wall is the whole
`start_evaluation` (weight checks, CPU timing, the grid, the comparisons) with Ray started and
the image cache built beforehand. The target is B4's: <= 15%.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
import yaml

from benchmarks.common import REPEATS, local_ray, main, median, write
from fundus_search.data_io import prepare_images
from fundus_search.results.store import TRIALS_SCHEMA
from fundus_search.search.evaluate.retrain import EvaluationRequest, start_evaluation
from fundus_search.search.study.config import load_config
from fundus_search.vocabulary import CONFIG_FILE, RUNS_FILE, SEARCH_FILE, TRIALS_FILE


def search_folder(folder: Path, cache: Path, *, tiny: bool) -> Path:
    """A finished search, as `run` would leave it, with two configurations to evaluate."""
    config = {
        "name": "b8",
        "data": {
            "source": "synthetic",
            "synthetic": {"n": 40 if tiny else 120, "size": 48},
            "image_size": 32 if tiny else 48,
            "folds": 3,
            "cache_dir": str(cache),
        },
        "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
        "training": {"device": "cpu", "eval_batch_size": 64},
        "search": {"max_epochs": 3, "space": {"strategy": ["lp", "ft"], "batch_size": [16]}},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "storage": {"path": str(folder)},
    }
    search = folder / "b8"
    search.mkdir(parents=True)
    (search / CONFIG_FILE).write_text(yaml.safe_dump(config))
    (search / SEARCH_FILE).write_text('{"name": "b8", "num_samples": 2}')
    trials = pd.DataFrame(
        [
            {
                "search": "b8",
                "trial_id": "lp",
                "optuna_number": 0,
                "status": "completed",
                "init": "random",
                "strategy": "lp",
                "lp_lr": 1e-3,
                "weight_decay": 1e-4,
                "batch_size": 16,
                "seed": 0,
                "fold": 0,
                "best_epoch": 3,
                "best_val_average": 0.5,
            },
            {
                "search": "b8",
                "trial_id": "ft",
                "optuna_number": 1,
                "status": "completed",
                "init": "random",
                "strategy": "ft",
                "ft_lr": 1e-4,
                "weight_decay": 1e-4,
                "batch_size": 16,
                "seed": 1,
                "fold": 0,
                "best_epoch": 3,
                "best_val_average": 0.5,
            },
        ]
    )
    trials.reindex(columns=TRIALS_SCHEMA.names).to_parquet(search / TRIALS_FILE)
    return search


def one_evaluation(folder: Path, index: int, *, tiny: bool) -> dict:
    search = search_folder(folder / f"repeat{index}", folder / "cache", tiny=tiny)
    prepare_images(load_config(search / CONFIG_FILE).data.to_spec())  # decoding is not orchestration
    start = time.monotonic()
    evaluation = start_evaluation(
        search, EvaluationRequest(seeds=1 if tiny else 2, repeats=1, folds=(0,) if tiny else None)
    )
    wall = time.monotonic() - start
    runs = pd.read_parquet(evaluation / RUNS_FILE)
    cpus = ray.cluster_resources()["CPU"]
    work = float(runs["wall_seconds"].sum())
    return {
        "wall_seconds": wall,
        "cpus": cpus,
        "runs": len(runs),
        "run_seconds": work,
        "epoch_seconds": float(runs["train_seconds"].sum()),
        "overhead": wall * cpus / work - 1,
    }


def run(tiny: bool = False) -> dict:
    repeats = 1 if tiny else REPEATS
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        measured = [one_evaluation(Path(tmp), i, tiny=tiny) for i in range(repeats)]
    figures = {
        "repeats": measured,
        "overhead_median": median([r["overhead"] for r in measured]),
        "runs_per_evaluation": measured[0]["runs"],
    }
    return write("b8_evaluation", figures, target="overhead <= 15%", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("overhead_median", "runs_per_evaluation"))
