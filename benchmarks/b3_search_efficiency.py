"""B3 search efficiency: TPE + stratified ASHA vs random search and the full grid, on stored curves.

The curves of `benchmarks.b3_curves` (a grid of real trainings on the demo's synthetic task)
stand in for training. The search space is the grid's values (`{choices: [...]}`); each trial
takes the grid point nearest to its sampled parameters (log scale, within its init x strategy
cell) and reports that point's stored curve epoch by epoch.
Everything else is the real search stack: SearchSpace, PruningOptunaSearch (TPE or random),
StratifiedASHA (per cell or plain) or FIFO, Ray Tune on a local Ray (the Optuna study is
kept in memory rather than in SQLite).

Per method, over SEEDS searches of as many trials as the grid has points:
- epochs to target: main-phase epochs consumed (reports received by the driver) until the
  best-so-far val_average is within TOLERANCE of the grid's best, against the full grid's
  epochs (every point trained to max_epochs); the same in the stored training seconds;
- best at a quarter: the best-so-far val_average once a quarter of the grid's epochs is spent;
- survival (ASHA): how often the best configuration a search sampled in each init x strategy
  cell (judged by its whole stored curve) ran to max_epochs instead of being stopped.
Random search stops once it reaches the target (it prunes nothing, so only that figure counts).
"""

from __future__ import annotations

import math
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from ray import tune

from benchmarks.b3_curves import HYPER, TABLE, build_table, read_table
from benchmarks.b3_replay import Curves, replay_trial
from benchmarks.common import local_ray, main, median, write
from fundus_search.search.engine.tuner import search_algorithms
from fundus_search.search.study.config import Config

TOLERANCE = 0.01
LOOSER = (0.02, 0.04)  # the same figure for looser targets: how much hinges on one lucky epoch
SEEDS = 10
CONCURRENT = 2  # trials at once, as the demo on 2 cores
METHODS = {  # name -> the search settings that differ
    "tpe_stratified_asha": {"sampler": "tpe", "scheduler": {"type": "asha", "stratify_by": ["init", "strategy"]}},
    "tpe_plain_asha": {"sampler": "tpe", "scheduler": {"type": "asha", "stratify_by": []}},
    "random_no_stopping": {"sampler": "random", "scheduler": {"type": "fifo"}},
}
Row = tuple[str, int, int, float]  # trial id, grid point, epoch, val_average


class Reports(tune.Callback):
    """Every report in the order the driver received it."""

    def __init__(self):
        self.rows: list[Row] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.rows.append((trial.trial_id, result["config_id"], result["epoch"], result["val_average"]))


class TargetReached(tune.Stopper):
    """Ends the search once any report is at least `target`."""

    def __init__(self, target: float):
        self.target, self.reached = target, False

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.reached = self.reached or result["val_average"] >= self.target
        return False

    def stop_all(self) -> bool:
        return self.reached


def search_config(meta: dict, method: str, seed: int, num_samples: int) -> Config:
    """The demo config the curves came from, searching the grid's values, with `method`'s settings.

    Each parameter chooses among every value the grid gives it in any strategy; a strategy
    whose grid has fewer values takes the nearest one (Curves.nearest).
    """
    grid = meta["grid"]
    bounds = {k: [v for values in grid.values() for v in values.get(k, [])] for k in HYPER}
    search = {
        **meta["config"]["search"],
        **METHODS[method],
        "seed": seed,
        "num_samples": num_samples,
        "max_epochs": meta["max_epochs"],
        "cover_cells": True,
    }
    search["scheduler"] = {**meta["config"]["search"]["scheduler"], **METHODS[method]["scheduler"]}
    search["space"] = {
        **search["space"],
        "strategy": list(grid),
        "weight_decay": meta["weight_decay"],
        **{k: {"choices": sorted(set(v))} for k, v in bounds.items() if v},
    }
    return Config.model_validate({**meta["config"], "search": search})


def one_search(curves: Curves, meta: dict, method: str, seed: int, num_samples: int, folder: Path) -> dict:
    config = search_config(meta, method, seed, num_samples)
    name = f"{method}-{seed}"
    # the study in memory: this figure is epochs, and SQLite would be half of the wall time
    searcher, scheduler = search_algorithms(config, study_name=name, db_path=None, num_samples=num_samples)
    reports = Reports()
    stop = TargetReached(curves.grid_best - TOLERANCE) if config.search.scheduler.type == "fifo" else None
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(replay_trial, curves=curves), {"cpu": 1}),
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=searcher,
            scheduler=scheduler,
            max_concurrent_trials=CONCURRENT,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(name=name, storage_path=str(folder), callbacks=[reports], stop=stop, verbose=0),
    )
    tuner.fit()
    return summarize(curves, reports.rows, meta["max_epochs"])


def first_at_least(values: np.ndarray, target: float) -> int | None:
    reached = np.flatnonzero(values >= target)
    return int(reached[0]) if reached.size else None


def summarize(curves: Curves, rows: list[Row], max_epochs: int) -> dict:
    """One search's figures from its reports, in the order the driver received them."""
    running = np.maximum.accumulate([value for *_, value in rows])
    seconds = np.cumsum([curves.seconds[config_id][epoch - 1] for _, config_id, epoch, _ in rows])
    hit = first_at_least(running, curves.grid_best - TOLERANCE)
    quarter = min(len(rows), curves.grid_epochs // 4) - 1
    last_epoch: dict[str, int] = defaultdict(int)
    config_of: dict[str, int] = {}
    for trial_id, config_id, epoch, _ in rows:
        last_epoch[trial_id] = max(last_epoch[trial_id], epoch)
        config_of[trial_id] = config_id
    by_cell: dict[str, list[str]] = defaultdict(list)
    for trial_id, config_id in config_of.items():
        by_cell["/".join((curves.points[config_id]["init"], curves.points[config_id]["strategy"]))].append(trial_id)
    survived = {
        cell: last_epoch[max(trials, key=lambda t: curves.best(config_of[t]))] >= max_epochs
        for cell, trials in sorted(by_cell.items())
    }
    return {
        "epochs_to_target": None if hit is None else hit + 1,
        "seconds_to_target": None if hit is None else float(seconds[hit]),
        "epochs_to_looser_target": {
            str(t): None if (h := first_at_least(running, curves.grid_best - t)) is None else h + 1 for t in LOOSER
        },
        "best_at_quarter_grid": float(running[quarter]),
        "epochs": len(rows),
        "seconds": float(seconds[-1]),
        "trials": len(config_of),
        "best": float(running[-1]),
        "cell_best_survived": survived,
    }


def median_or_none(values: list) -> float | None:
    """Median, a missing value counting as infinite; None when that is the median."""
    middle = median([math.inf if v is None else v for v in values])
    return None if middle == math.inf else middle


def method_figures(curves: Curves, results: list[dict], *, prunes: bool) -> dict:
    epochs = median_or_none([r["epochs_to_target"] for r in results])
    seconds = median_or_none([r["seconds_to_target"] for r in results])
    cells: dict[str, list[bool]] = defaultdict(list)
    for r in results:
        for cell, survived in r["cell_best_survived"].items():
            cells[cell].append(survived)
    every = [s for values in cells.values() for s in values]
    return {
        "epochs_to_target_median": epochs,
        "fraction_of_grid_epochs": None if epochs is None else epochs / curves.grid_epochs,
        "seconds_to_target_median": seconds,
        "fraction_of_grid_seconds": None if seconds is None else seconds / curves.grid_seconds,
        "reached_target": f"{sum(r['epochs_to_target'] is not None for r in results)}/{len(results)}",
        "looser_targets": {
            t: {
                "fraction_of_grid_epochs": None
                if (e := median_or_none([r["epochs_to_looser_target"][t] for r in results])) is None
                else e / curves.grid_epochs,
                "reached_target": f"{sum(r['epochs_to_looser_target'][t] is not None for r in results)}/{len(results)}",
            }
            for t in map(str, LOOSER)
        },
        "best_at_quarter_grid_median": median([r["best_at_quarter_grid"] for r in results]),
        "epochs_median": median([r["epochs"] for r in results]),
        "cell_best_survival": sum(every) / len(every) if every and prunes else None,
        "cell_best_survival_by_cell": {cell: sum(v) / len(v) for cell, v in sorted(cells.items())} if prunes else None,
    }


def run(tiny: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        if tiny:
            build_table(Path(tmp) / "curves.parquet", tiny=True)
        table, meta = read_table(Path(tmp) / "curves.parquet" if tiny else TABLE)
        curves = Curves(table.to_pylist())
        seeds, num_samples = (1, 4) if tiny else (SEEDS, len(curves.points))
        with local_ray(num_cpus=CONCURRENT):
            runs = {
                method: [one_search(curves, meta, method, seed, num_samples, Path(tmp)) for seed in range(seeds)]
                for method in METHODS
            }
    figures = {
        "table": str(TABLE.relative_to(TABLE.parents[2])) if not tiny else "tiny",
        "grid_points": len(curves.points),
        "grid_epochs": curves.grid_epochs,
        "grid_seconds": curves.grid_seconds,
        "grid_best": curves.grid_best,
        "grid_points_within": {
            str(t): sum(curves.best(c) >= curves.grid_best - t for c in curves.points) for t in (TOLERANCE, *LOOSER)
        },
        "tolerance": TOLERANCE,
        "max_epochs": meta["max_epochs"],
        "num_samples": num_samples,
        "seeds": seeds,
        "concurrent_trials": CONCURRENT,
        "table_recipe": {k: meta[k] for k in ("grid", "weight_decay", "seconds") if k in meta},
        "methods": {
            method: method_figures(curves, results, prunes=METHODS[method]["scheduler"]["type"] == "asha")
            for method, results in runs.items()
        },
        "runs": runs,
    }
    figures["tpe_stratified_asha_fraction_of_grid"] = figures["methods"]["tpe_stratified_asha"][
        "fraction_of_grid_epochs"
    ]
    return write(
        "b3_search_efficiency", figures, target="TPE + stratified ASHA <= 25% of the grid's epochs to target", tiny=tiny
    )


if __name__ == "__main__":
    main(run, __doc__, ("grid_epochs", "grid_best", "methods"))
