"""B3 search efficiency: TPE + stratified ASHA vs random search and the full grid, on stored curves.

The curves of `benchmarks.b3_curves` (a grid of real trainings on the demo's synthetic task)
stand in for training: each trial takes the grid point nearest to its sampled parameters (log
scale, within its init x strategy cell) and reports that point's stored curve epoch by epoch.
Everything else is the real search stack: SearchSpace, PruningOptunaSearch (TPE or random),
StratifiedASHA (per cell or plain) or FIFO, Ray Tune on a local Ray.

Per method, over SEEDS searches: main-phase epochs consumed (reports received by the driver)
until the best-so-far val_average is within TOLERANCE of the grid's best, as a fraction of the
full grid's epochs (every point trained to max_epochs); and, for the ASHA methods, how often
the best configuration a search sampled in each init x strategy cell (judged by its whole
stored curve) survived to max_epochs.
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import ray
from ray import tune

from search.config import Config
from search.tuner import search_algorithms

from .b3_curves import HYPER, TABLE, build_table, read_table
from .b3_replay import Curves, replay_trial
from .common import main, median, write

TOLERANCE = 0.01
SEEDS = 10
CONCURRENT = 2  # trials at once, as the demo on 2 cores
METHODS = {  # name -> the search settings that differ
    "tpe_stratified_asha": {"sampler": "tpe", "scheduler": {"type": "asha", "stratify_by": ["init", "strategy"]}},
    "tpe_plain_asha": {"sampler": "tpe", "scheduler": {"type": "asha", "stratify_by": []}},
    "random_no_stopping": {"sampler": "random", "scheduler": {"type": "fifo"}},
}


class Reports(tune.Callback):
    """Every report in the order the driver received it: (trial id, config id, epoch, value)."""

    def __init__(self):
        self.rows: list[tuple[str, int, int, float]] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows.append((trial.trial_id, result["config_id"], result["epoch"], result["val_average"]))


def search_config(meta: dict, method: str, seed: int, num_samples: int) -> Config:
    """The demo config the curves came from, its space bounded by the grid, with `method`'s settings."""
    grid = meta["grid"]
    bounds = {k: [v for values in grid.values() for v in values.get(k, [])] for k in HYPER}
    search = {**meta["config"]["search"], **METHODS[method], "seed": seed, "num_samples": num_samples,
              "max_epochs": meta["max_epochs"], "cover_cells": True}
    search["scheduler"] = {**meta["config"]["search"]["scheduler"], **METHODS[method]["scheduler"]}
    search["space"] = {**search["space"], "strategy": list(grid), "weight_decay": meta["weight_decay"],
                       **{k: [min(v), max(v)] for k, v in bounds.items() if v}}
    return Config.model_validate({**meta["config"], "search": search})


def one_search(curves: Curves, meta: dict, method: str, seed: int, num_samples: int, folder: Path) -> dict:
    config = search_config(meta, method, seed, num_samples)
    name = f"{method}-{seed}"
    searcher, scheduler = search_algorithms(config, study_name=name, db_path=folder / f"{name}.db",
                                            num_samples=num_samples)
    reports = Reports()
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(replay_trial, curves=curves), {"cpu": 1}),
        tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=searcher, scheduler=scheduler,
                                    max_concurrent_trials=CONCURRENT, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=str(folder), callbacks=[reports], verbose=0),
    )
    tuner.fit()
    return summarize(curves, reports.rows, meta["max_epochs"])


def summarize(curves: Curves, rows: list[tuple[str, int, int, float]], max_epochs: int) -> dict:
    """Epochs (and stored training seconds) to the target; per cell, whether the best sampled
    configuration survived to max_epochs."""
    running = np.maximum.accumulate([value for *_, value in rows])
    reached = np.flatnonzero(running >= curves.grid_best - TOLERANCE)
    seconds = np.cumsum([curves.seconds[config_id][epoch - 1] for _, config_id, epoch, _ in rows])
    last_epoch: dict[str, int] = defaultdict(int)
    config_of: dict[str, int] = {}
    for trial_id, config_id, epoch, _ in rows:
        last_epoch[trial_id] = max(last_epoch[trial_id], epoch)
        config_of[trial_id] = config_id
    by_cell: dict[str, list[str]] = defaultdict(list)
    for trial_id, config_id in config_of.items():
        by_cell["/".join((curves.points[config_id]["init"], curves.points[config_id]["strategy"]))].append(trial_id)
    survived = {cell: last_epoch[max(trials, key=lambda t: curves.best(config_of[t]))] >= max_epochs
                for cell, trials in sorted(by_cell.items())}
    hit = int(reached[0]) if reached.size else None
    return {"epochs_to_target": None if hit is None else hit + 1,
            "seconds_to_target": None if hit is None else float(seconds[hit]),
            "epochs": len(rows), "seconds": float(seconds[-1]), "trials": len(config_of),
            "best": float(running[-1]), "cell_best_survived": survived}


def median_or_none(values: list) -> float | None:
    """Median, a missing value counting as infinite; None when that is the median."""
    middle = median([math.inf if v is None else v for v in values])
    return None if middle == math.inf else middle


def run(tiny: bool = False) -> dict:
    if tiny:
        folder = Path(tempfile.mkdtemp())
        build_table(folder / "curves.parquet", tiny=True)
        table, meta = read_table(folder / "curves.parquet")
        seeds, num_samples = 1, 4
    else:
        table, meta = read_table(TABLE)
        seeds, num_samples = SEEDS, len(set(table.column("config_id").to_pylist())) // 2
    curves = Curves(table.to_pylist())
    ray.init(address="local", num_cpus=CONCURRENT, include_dashboard=False, log_to_driver=False,
             object_store_memory=300 * 1024**2)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            runs = {method: [one_search(curves, meta, method, seed, num_samples, Path(tmp)) for seed in range(seeds)]
                    for method in METHODS}
    finally:
        ray.shutdown()
    figures = {"grid_points": len(curves.points), "grid_epochs": curves.grid_epochs,
               "grid_seconds": curves.grid_seconds, "grid_best": curves.grid_best,
               "tolerance": TOLERANCE, "num_samples": num_samples, "seeds": seeds, "runs": runs, "methods": {}}
    for method, results in runs.items():
        survived = [s for r in results for s in r["cell_best_survived"].values()]
        epochs = median_or_none([r["epochs_to_target"] for r in results])
        seconds = median_or_none([r["seconds_to_target"] for r in results])
        figures["methods"][method] = {
            "epochs_to_target_median": epochs,
            "fraction_of_grid": None if epochs is None else epochs / curves.grid_epochs,
            "seconds_to_target_median": seconds,
            "fraction_of_grid_seconds": None if seconds is None else seconds / curves.grid_seconds,
            "reached_target": sum(r["epochs_to_target"] is not None for r in results),
            "epochs_median": median([r["epochs"] for r in results]),
            "cell_best_survival": sum(survived) / len(survived) if survived else None,
        }
    figures["tpe_stratified_asha_fraction_of_grid"] = figures["methods"]["tpe_stratified_asha"]["fraction_of_grid"]
    return write("b3_search_efficiency", figures, target="TPE + stratified ASHA <= 25% of the grid's epochs",
                 tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("grid_epochs", "tpe_stratified_asha_fraction_of_grid"))
