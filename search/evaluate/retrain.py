"""`fundus-search evaluate`: the study's answer from a finished search.

Each init x strategy cell's top K configurations are retrained from scratch on every fold of R
partitions of a repeated k-fold (repeat 0 is the search's own split) x S seeds, for a fixed
number of epochs (no early stopping, no best-epoch picking on the fold being scored), and, when
the config holds out a test split, on every non-test image x S seeds, scored once on the test
images. The runs go through the search's own machinery (the same trainable, resources, image
sharing, checkpoints and retries) as one Ray Tune run over that grid; their last epoch's
predictions are kept, and the table and the paired comparisons are computed from them
(results.answer).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ray.tune.search import Searcher

from fundus_search.data_io import ImageCache, decode_image, held_out_indices
from fundus_search.models import Classifier, build_feature_net, cpu_ms_samples
from fundus_search.models.backbones import Head
from fundus_search.results import load_trials
from fundus_search.results.answer import (
    CV,
    TEST,
    Planned,
    default_primary,
    load_evaluation,
    paired_comparisons,
    write_comparisons,
)
from fundus_search.results.layout import EvaluationFolder, SearchFolder
from fundus_search.results.query import cell_winners
from fundus_search.results.store import EVALUATION_TABLES
from fundus_search.search.engine.callbacks import ProgressCallback, StoreCallback
from fundus_search.search.engine.tensorboard import TensorBoardCallback
from fundus_search.search.engine.trainable import train_trial
from fundus_search.search.engine.tuner import (
    check_ray_state,
    discard_unsaved,
    make_tuner,
    prune_checkpoints,
    ray_saved_state,
    restore_tuner,
    trainable_with_resources,
)
from fundus_search.search.errors import SearchError
from fundus_search.search.evaluate.bundles import write_bundles
from fundus_search.search.ops.folders import check_trusted, prepare, provenance
from fundus_search.search.study.config import Config, load_config
from fundus_search.statistics import scored_protocol
from fundus_search.vocabulary import (
    COMPLETED,
    EPOCHS_FILE,
    EVALUATION_DIR,
    FOLD,
    INIT,
    METRICS,
    PARAMS,
    PREDICTIONS_FILE,
    REPEAT,
    ROW_LOG,
    RUNNING,
    RUNS_FILE,
    SEED,
    STOPPED_EARLY,
    STRATEGY,
    TENSORBOARD_DIR,
    TRAIN_SEED,
    best,
    check_name,
    val,
)

_CHOSEN = tuple(p for p in PARAMS if p not in (SEED, FOLD))  # what a configuration fixes


@dataclass(frozen=True)
class EvaluationRequest:
    """What to retrain: each cell's `top` configurations, on `folds` (None: all) of `repeats`
    partitions x `seeds` seeds (None: the config's `evaluation` section), for each
    configuration's best epoch of the search (`epochs="best"`) or search.max_epochs ("max");
    `keep_models`: which final models become bundles (search/evaluate/bundles.py)."""

    top: int = 1
    seeds: int | None = None
    folds: tuple[int, ...] | None = None
    epochs: str = "best"
    repeats: int | None = None
    keep_models: str = "best"

    def resolved(self, config: Config) -> EvaluationRequest:
        """This request with the config's repeats and seeds where it leaves them open."""
        return replace(
            self, seeds=self.seeds or config.evaluation.seeds, repeats=self.repeats or config.evaluation.repeats
        )

    @classmethod
    def from_json(cls, stored: dict) -> EvaluationRequest:
        """The request as evaluation.json or search.json store it (folds as a list)."""
        folds = stored.get("folds")
        # a request stored before repeats existed ran one partition
        return cls(**{"repeats": 1, **stored, "folds": None if folds is None else tuple(folds)})


def plan_runs(trials: pd.DataFrame, config: Config, request: EvaluationRequest, search: Path) -> list[dict]:
    """One run per configuration x fold x seed (and x seed on the test split): the trial configs.

    Raises:
        SearchError: no finished trial, a cell of the search space without one, or a fold that
            the search's split does not have.
    """
    folds = request.folds if request.folds is not None else tuple(range(config.data.folds))
    bad = [f for f in folds if not 0 <= f < config.data.folds]
    if bad:
        raise SearchError(
            f"folds: {bad} not in the search's {config.data.folds}-fold split "
            f"(0..{config.data.folds - 1}); pick folds from it"
        )
    score = best(config.search.metric)
    done = trials[trials["status"].isin([COMPLETED, STOPPED_EARLY]) & trials["best_epoch"].notna()]
    if done.empty:
        raise SearchError(f"no finished trials in the search; let it finish first: fundus-search resume {search}")
    cells = [(i, s) for i in config.inits for s in config.search.space.strategy]
    missing = [f"{i}/{s}" for i, s in cells if not ((done[INIT] == i) & (done[STRATEGY] == s)).any()]
    if missing:
        raise SearchError(
            f"no finished trial in cell(s) {', '.join(missing)}; every cell needs one: run a new "
            "search with search.num_samples of at least the number of cells (its first trials cover "
            "every cell while search.cover_cells is on)"
        )
    runs = []
    winners = cell_winners(done, score, config.search.mode, top=request.top)
    for init, strategy in cells:
        chosen = winners[(winners[INIT] == init) & (winners[STRATEGY] == strategy)]
        for rank, trial in enumerate(chosen.to_dict("records"), start=1):
            runs += _runs_of(trial, rank, config, request, folds, score)
    return runs


def _runs_of(trial: dict, rank: int, config: Config, request: EvaluationRequest, folds, score: str) -> list[dict]:
    config_id = f"{trial[INIT]}-{trial[STRATEGY]}-{rank}"
    common = {
        **{k: None if pd.isna(trial[k]) else trial[k] for k in _CHOSEN},
        "config_id": config_id,
        "rank": rank,
        "max_epochs": int(trial["best_epoch"]) if request.epochs == "best" else config.search.max_epochs,
        "source_trial_id": trial["trial_id"],
        "source_optuna_number": int(trial["optuna_number"]),
        "search_score": float(trial[score]),
        "keep_predictions": True,
    }
    runs = [
        {
            **common,
            "split": CV,
            REPEAT: repeat,
            FOLD: fold,
            SEED: seed,
            TRAIN_SEED: train_seed(repeat, fold, seed, config.data.folds),
            "run_id": f"{config_id}-{f'repeat{repeat}-' if repeat else ''}fold{fold}-seed{seed}",
        }
        for repeat in range(request.repeats)
        for fold in folds
        for seed in range(request.seeds)
    ]
    if config.data.test_fraction > 0:
        runs += [
            {
                **common,
                "split": TEST,
                REPEAT: None,
                FOLD: None,
                SEED: seed,
                "run_id": f"{config_id}-test-seed{seed}",
                "keep_model": seed == 0 and request.keep_models != "none",  # the configuration's final model
            }
            for seed in range(request.seeds)
        ]
    return runs


def train_seed(repeat: int, fold: int, seed: int, k: int) -> int:
    """The training seed of cross-validation run (repeat, fold, seed): a different one on every
    fold. With one seed shared by every fold, what that seed does (the head's initialisation,
    the batch order, a collapse to one class) is the same in all of an arm's folds: a fixed
    offset the fold-to-fold variance cannot see, which the t-test would read as a difference
    (benchmark B9's real null studies found 13% false positives that way). Both arms of a
    comparison share it on each fold, so their runs stay paired. Seed 0 of fold 0, repeat 0 is
    the search's own seed 0."""
    return seed + 1000 * (fold + k * repeat)


class FixedRuns(Searcher):
    """Hands Tune the planned runs in order, then says it is finished: a fixed grid, no search.
    Its state (the runs and how many were handed out) is saved with Tune's experiment state, so
    a resumed evaluation continues exactly where the snapshot left it."""

    def __init__(self, runs: list[dict]):
        super().__init__()
        self.runs, self.handed_out = runs, 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # nothing to search: metric and mode do not matter

    def suggest(self, trial_id: str) -> dict | None:
        if self.handed_out >= len(self.runs):
            return Searcher.FINISHED
        self.handed_out += 1
        return dict(self.runs[self.handed_out - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({"runs": self.runs, "handed_out": self.handed_out}, default=_plain))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.runs, self.handed_out = state["runs"], state["handed_out"]


def _plain(value):
    """numpy scalars (from pandas rows) as JSON numbers."""
    return value.item()


def evaluation_label(config: dict) -> str:
    """`flair     lp_ft  repeat 1 fold 2 seed 0`: an evaluation run on its progress line."""
    where = f"repeat {config.get(REPEAT) or 0} fold {config[FOLD]}" if config["split"] == CV else "test split    "
    return f"{config[INIT]:<9} {config[STRATEGY]:<6} {where} seed {config[SEED]}"


class EvaluationCallback(StoreCallback):
    """Keeps runs.parquet, predictions.parquet and epochs.parquet of an evaluation current.

    Args:
        images: paths, groups and labels of the image array's rows (the predictions name them).
        (the rest as StoreCallback: `root` is the evaluation folder)
    """

    tables = EVALUATION_TABLES

    def __init__(self, root: str, *, images: dict[str, list], **store):
        super().__init__(root, **store)
        self.images = images

    def on_result(self, trial, result: dict) -> None:
        run = trial.config
        for row, prob in zip(result.get("scored_rows") or [], result.get("scored_probabilities") or [], strict=True):
            self.store.put(
                PREDICTIONS_FILE,
                {
                    "run_id": run["run_id"],
                    "config_id": run["config_id"],
                    "split": run["split"],
                    REPEAT: run.get(REPEAT),
                    "fold": run.get(FOLD),
                    "seed": run[SEED],
                    "row": row,
                    "image": self.images["paths"][row],
                    "group": self.images["groups"][row],
                    "label": self.images["labels"][row],
                    "prob_positive": prob,
                },
            )
        self.store.put(RUNS_FILE, self.run_row(trial, result, status=RUNNING))

    def on_end(self, trial, final: dict, *, status: str, error: str | None) -> None:
        self.store.put(RUNS_FILE, self.run_row(trial, final, status=status, error=error))

    def run_row(self, trial, final: dict, *, status: str, error: str | None = None) -> dict:
        """The runs.parquet row: the configuration, the last epoch's metrics, sizes, time, provenance."""
        run, resources = trial.config, trial.placement_group_factory.required_resources
        epochs = self.store.rows(EPOCHS_FILE, trial.trial_id)
        return {
            "run_id": run["run_id"],
            "config_id": run["config_id"],
            "rank": run["rank"],
            "split": run["split"],
            "trial_id": trial.trial_id,
            "status": status,
            **{p: run.get(p) for p in PARAMS},
            REPEAT: run.get(REPEAT),
            TRAIN_SEED: run.get(TRAIN_SEED),
            "epochs": run["max_epochs"],
            "source_trial_id": run["source_trial_id"],
            "source_optuna_number": run["source_optuna_number"],
            "search_score": run["search_score"],
            **{m: final.get(val(m)) for m in METRICS},
            "n_train": final.get("n_train"),
            "n_scored": len(final["scored_rows"]) if final.get("scored_rows") else None,
            "train_seconds": sum(r.get("epoch_seconds") or 0.0 for r in epochs),
            "wall_seconds": final.get("time_total_s"),
            "cpus": resources.get("CPU"),
            "gpus": resources.get("GPU", 0.0),
            "node": final.get("node"),
            "error": error,
            "weights_id": final.get("weights_id"),
            "normalize": final.get("normalize"),
            "dataset_fingerprint": final.get("dataset_fingerprint"),
        }


def _image_rows(cache: ImageCache) -> dict[str, list]:
    return {"paths": list(cache.paths), "groups": list(cache.groups), "labels": [int(x) for x in cache.labels]}


def _search_folder(search_dir: Path) -> tuple[SearchFolder, Config, pd.DataFrame]:
    search = SearchFolder.open(search_dir)
    return search, load_config(search.config_file), load_trials([search.path])


def start_evaluation(
    search_dir: Path,
    request: EvaluationRequest = EvaluationRequest(),
    *,
    name: str | None = None,
    address: str | None = None,
    train_fn: Callable = train_trial,
) -> Path:
    """Validate everything, then write the evaluation folder, then run every planned run.

    Returns:
        the evaluation folder (`<search>/evaluation` or `<search>/<name>`).

    Raises:
        UserError (SearchError, ConfigError, WeightsError, ManifestError, ClusterError): nothing was written.
    """
    search, config, trials = _search_folder(search_dir)
    request = request.resolved(config)
    runs = plan_runs(trials, config, request, search.path)
    try:
        name = check_name(name or EVALUATION_DIR)
    except ValueError as exc:
        raise SearchError(f"evaluation name: {exc}") from None
    folder = search.path / name
    if folder.exists():
        raise SearchError(
            f"{folder} already exists; continue it with `fundus-search resume {folder}` or pass another --name"
        )
    caches = prepare(config, address=address, destination=str(folder))
    cache = caches[config.data.image_size]
    cpu = measure_cpu(config, cache)
    try:
        folder.mkdir()
    except FileExistsError:  # another evaluate got here first: it owns the folder
        raise SearchError(
            f"{folder}: another `fundus-search evaluate` is writing it; wait for it, or pass another --name"
        ) from None
    EvaluationFolder(
        path=folder,
        name=name,
        search_name=search.name,
        request=request.__dict__,
        runs=len(runs),
        protocol=protocol(config, request, cache),
        cpu_ms_per_image=cpu,
        planned=[_planned(r) for r in runs],
    ).write()
    _run(folder, config, caches, runs, train_fn, request.keep_models)
    return folder


def _planned(run: dict) -> dict:
    return {k: run[k] for k in ("run_id", "config_id", "split", REPEAT, FOLD, SEED)}


def primary_question(config: Config) -> list[Planned]:
    """The declared primary family: `evaluation.primary`, or every pair of pretrained inits under
    each strategy (results.answer.default_primary)."""
    if config.evaluation.primary:
        return [Planned.parse(text) for text in config.evaluation.primary]
    sources = {name: init.source for name, init in config.model.inits.items()}
    return default_primary(config.inits, config.search.space.strategy, sources)


def protocol(config: Config, request: EvaluationRequest, cache: ImageCache) -> dict:
    """What evaluation.json declares before any run: the partitions, the test images, the question."""
    data = config.data
    test = held_out_indices(cache.labels, cache.groups, fraction=data.test_fraction, seed=data.seed)
    return {
        "folds": len(request.folds) if request.folds is not None else data.folds,
        "k": data.folds,
        "repeats": request.repeats,
        "seeds": request.seeds,
        "test_images": len(test),
        "images": len(cache.labels),
        "dataset": cache.meta.get("fingerprint"),
        "primary": [p.key for p in primary_question(config)],
        "rope": config.evaluation.rope,
    }


def _run(
    folder: Path,
    config: Config,
    caches: dict[int, ImageCache],
    runs: list[dict],
    train_fn: Callable,
    keep_models: str,
) -> None:
    """Every planned run as one Ray Tune experiment, `folder` itself, then the comparisons and
    the model bundles."""
    cache = caches[config.data.image_size]
    tuner = make_tuner(
        trainable_with_resources(config, caches, train_fn),
        config,
        name=folder.name,
        storage_path=str(folder.parent),
        search_alg=FixedRuns(runs),
        scheduler=None,
        num_samples=len(runs),
        callbacks=_callbacks(folder, folder.name, config, cache, len(runs)),
    )
    tuner.fit()
    finish_evaluation(folder)
    write_bundles(folder, config, cache, keep_models)
    prune_checkpoints(folder, str(folder / RUNS_FILE))


def _callbacks(folder: Path, name: str, config: Config, cache: ImageCache, total: int) -> list:
    return [
        EvaluationCallback(
            str(folder), name=name, images=_image_rows(cache), metadata=provenance(config, cache.meta["fingerprint"])
        ),
        ProgressCallback(
            metric=config.search.metric, mode=config.search.mode, total=total, label=evaluation_label, best_epoch=False
        ),
        TensorBoardCallback(str(folder / TENSORBOARD_DIR)),  # a run per evaluation run, named by its id
    ]


def resume_evaluation(folder: Path, *, address: str | None = None, train_fn: Callable = train_trial) -> Path:
    """Continue an interrupted evaluation (same runs; none lost, none twice), from `folder` and
    into it, wherever it was first written. One stopped before Ray saved anything starts again.

    Raises:
        SearchError: `folder` is not an evaluation folder, or others could have written it.
    """
    evaluation = EvaluationFolder.open(check_trusted(folder) if Path(folder).is_dir() else folder)
    folder = evaluation.path
    check_ray_state(folder)
    search = evaluation.search
    config = load_config(search.config_file)
    caches = prepare(config, address=address)
    if not ray_saved_state(folder):  # stopped between evaluation.json and Ray's first snapshot
        request = EvaluationRequest.from_json(evaluation.request).resolved(config)
        runs = plan_runs(load_trials([search.path]), config, request, search.path)
        discard_unsaved(folder, (ROW_LOG, *EVALUATION_TABLES))  # what Ray never recorded runs again
        _run(folder, config, caches, runs, train_fn, request.keep_models)
        return folder
    trainable = trainable_with_resources(config, caches, train_fn)
    restore_tuner(str(folder), trainable, local=folder).fit()
    finish_evaluation(folder)
    keep_models = EvaluationRequest.from_json(evaluation.request).keep_models
    write_bundles(folder, config, caches[config.data.image_size], keep_models)
    prune_checkpoints(folder, str(folder / RUNS_FILE))
    return folder


def finish_evaluation(folder: Path, *, resamples: int = 2000) -> pd.DataFrame:
    """Compute the paired comparisons of the finished runs, for the question evaluation.json
    declared, and write comparisons.parquet (the bootstrap is seeded with search.seed: the same
    runs give the same file)."""
    config = load_config(EvaluationFolder.open(folder).search.config_file)
    declared = EvaluationFolder.open(folder).protocol
    primary = (
        [Planned.parse(t) for t in declared["primary"]]
        if declared.get("primary") is not None
        else primary_question(config)
    )
    sources = {name: init.source for name, init in config.model.inits.items()}
    runs, predictions = load_evaluation(folder)
    comparisons = paired_comparisons(
        runs,
        predictions,
        sources,
        primary=primary,
        rope=declared.get("rope", config.evaluation.rope),
        resamples=resamples,
        seed=config.search.seed,
        protocol=scored_protocol(declared),
    )
    write_comparisons(folder, comparisons)
    return comparisons


def measure_cpu(config: Config, cache: ImageCache, *, repeats: int = 20) -> dict[str, dict]:
    """CPU milliseconds per image of each network (architecture and input size), from a decoded image of the
    dataset to its probability, at batch 1, on 1 thread and on all of this machine's threads:
    `repeats` timings, kept as median and quartiles. Every init and strategy of one architecture
    runs the same network, so they share one figure; its weights do not change the speed."""
    image = decode_image(Path(cache.meta["root"]) / cache.paths[0])
    threads = os.cpu_count() or 1
    by_network: dict[tuple[str, int], list[str]] = {}  # (architecture, input size) -> its inits
    for init in config.inits:
        by_network.setdefault((config.model.arch(init), config.image_size(init)), []).append(init)
    figures = {}
    for (arch, size), inits in by_network.items():
        preprocessing = config.data_spec(size).preprocessing
        net = build_feature_net(config.model.init_spec(inits[0]), arch, seed=0, image_size=size)
        classifier = Classifier(net, Head(net.feature_dim, 2))

        def summary(n_threads: int, classifier=classifier, preprocessing=preprocessing) -> list[float]:
            times = cpu_ms_samples(classifier, image, preprocessing, threads=n_threads, repeats=repeats)
            return [float(x) for x in np.percentile(times, [50, 25, 75])]

        name = arch if len({s for _, s in by_network}) == 1 else f"{arch} at {size} px"
        figures[name] = {
            "inits": inits,
            "ms_1_thread": summary(1),
            "ms_all_threads": summary(threads),
            "threads": threads,
            "repeats": repeats,
            "torch": torch.__version__,
        }
    return figures
