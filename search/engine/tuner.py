"""Build, run and resume a search: Ray Tune + Optuna TPE + stratified ASHA + the results callbacks."""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import optuna
import pandas as pd
import ray
import yaml
from ray import tune
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import ConcurrencyLimiter, SearchGenerator

from fundus_search.data_io import ImageCache
from fundus_search.results.layout import SearchFolder, trial_folder, write_atomic
from fundus_search.search.engine.callbacks import ParquetCallback, ProgressCallback
from fundus_search.search.engine.scheduler import make_scheduler
from fundus_search.search.engine.searcher import PruningOptunaSearch, make_searcher
from fundus_search.search.engine.tensorboard import TensorBoardCallback
from fundus_search.search.engine.trainable import train_trial
from fundus_search.search.engine.trial import DatasetInfo
from fundus_search.search.errors import SearchError
from fundus_search.search.ops.folders import check_trusted, prepare, provenance
from fundus_search.search.ops.ray_session import alive_nodes
from fundus_search.search.study.config import Config, load_config
from fundus_search.search.study.space import SearchSpace
from fundus_search.vocabulary import (
    COMPLETED,
    EPOCHS_FILE,
    ROW_LOG,
    RUNNING,
    STOPPED_EARLY,
    STUDY_FILE,
    TENSORBOARD_DIR,
    TRIALS_FILE,
    check_name,
)

log = logging.getLogger(__name__)

TUNER_STATE = "tuner.pkl"  # what Ray's Tuner writes first in an experiment folder


def default_name(config: Config) -> str:
    """`<config name>-<YYYYmmdd-HHMMSS>`: every run starts a new search beside the old ones."""
    return f"{config.name}-{datetime.now():%Y%m%d-%H%M%S}"


def trial_dirname(trial) -> str:
    """Ray Tune's trial_dirname_creator: `trial_folder`."""
    return trial_folder(trial.trial_id)


def trainable_with_resources(config: Config, caches: dict[int, ImageCache], train_fn: Callable):
    """`train_fn` with the image arrays (one per input size, `prepare`'s caches) shared through
    the object store and strategy-aware resources."""
    cache_dir = config.data.to_spec().resolved_cache_dir()
    info = {size: DatasetInfo.of(c, cache_dir) for size, c in caches.items()}
    has_gpus = ray.cluster_resources().get("GPU", 0) > 0
    cpus, gpus = config.resources.cpus_per_trial, config.resources.gpus_per_trial

    def resources(params: dict) -> tune.PlacementGroupFactory:
        # Strategy-aware: an LP trial needs a slice of a GPU, an FT trial a whole one.
        return tune.PlacementGroupFactory([{"CPU": cpus, "GPU": gpus.get(params["strategy"], 0) if has_gpus else 0}])

    # The image arrays go into the object store once; every trial on a node maps them zero-copy.
    images = {size: c.images for size, c in caches.items()}
    with_data = tune.with_parameters(train_fn, images=images, info=info, config=config)
    return tune.with_resources(with_data, resources)


def reuse_actors() -> bool:
    """Whether a new trial reuses a finished trial's worker process: on one node yes (no torch
    import and array fetch per trial, B4); on several nodes no. Tune hands a freed worker to a
    pending trial even when that trial's own worker is already starting on another node, and
    drops the starting one: trials shorter than a worker's start (LP trials, seconds) then all
    run, one at a time, in the first node's worker while the other nodes idle.
    """
    return len(alive_nodes()) == 1


def search_algorithms(
    config: Config, *, study_name: str, db_path: Path | None, num_samples: int
) -> tuple[PruningOptunaSearch, TrialScheduler]:
    """The searcher (Optuna, persisted in `db_path`, or in memory if None) and the scheduler
    that `config.search` asks for."""
    s = config.search
    space = SearchSpace(config)
    cells = space.cell_points() if s.cover_cells else []
    searcher = make_searcher(
        space,
        metric=s.metric,
        mode=s.mode,
        seed=s.seed,
        study_name=study_name,
        db_path=db_path,
        first_points=cells[:num_samples],
        sampler=s.sampler,
    )
    scheduler = make_scheduler(
        s.scheduler.type,
        stratify_by=tuple(s.scheduler.stratify_by),
        metric=s.metric,
        mode=s.mode,
        max_t=s.max_epochs,
        grace_period=s.scheduler.grace_period,
        reduction_factor=s.scheduler.reduction_factor,
    )
    return searcher, scheduler


def build_tuner(
    config: Config,
    folder: SearchFolder,
    caches: dict[int, ImageCache],
    *,
    num_samples: int,
    train_fn: Callable = train_trial,
    extra_callbacks: tuple = (),
) -> tune.Tuner:
    """The Tuner of a new search (Ray must be connected); `extra_callbacks` are added to ours."""
    s = config.search
    searcher, scheduler = search_algorithms(
        config, study_name=folder.name, db_path=folder.study_file, num_samples=num_samples
    )
    meta = provenance(config, caches[config.data.image_size].meta["fingerprint"])
    callbacks = [
        ParquetCallback(
            folder.results,
            name=folder.name,
            metric=s.metric,
            mode=s.mode,
            metadata=meta,
            log_path=folder.row_log if folder.remote else None,
        ),
        TensorBoardCallback(str(folder.tensorboard_dir)),
        ProgressCallback(metric=s.metric, mode=s.mode, total=num_samples),
        *extra_callbacks,
    ]
    # Ray's experiment is the search folder itself (or its remote location)
    storage, name = (config.storage.path, folder.name) if folder.remote else (str(folder.path.parent), folder.path.name)
    return make_tuner(
        trainable_with_resources(config, caches, train_fn),
        config,
        name=name,
        storage_path=storage,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=num_samples,
        callbacks=callbacks,
    )


def make_tuner(
    trainable, config: Config, *, name: str, storage_path: str, search_alg, scheduler, num_samples: int, callbacks: list
) -> tune.Tuner:
    """The Tuner a search and an evaluation share: concurrency from the resources, reused
    workers, retries from the last checkpoint, one checkpoint kept per trial.

    Ray's own TensorBoard logger is left out (our TensorBoardCallback writes the curves, grouped,
    in the folder), and with it Ray's banner pointing at a TensorBoard folder in its temporary
    directory that holds none of them; its JSON and CSV loggers are kept (result.json per trial).
    """
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # read by Tuner.fit, in this process
    callbacks = [*callbacks, JsonLoggerCallback(), CSVLoggerCallback()]
    concurrent = config.resources.max_concurrent_trials or max(
        1, int(ray.cluster_resources().get("CPU", 1) // config.resources.cpus_per_trial)
    )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            search_alg=search_alg,
            scheduler=scheduler,
            max_concurrent_trials=concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=reuse_actors(),
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=callbacks,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=config.storage.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )


def start_search(
    config_path: Path,
    *,
    name: str | None = None,
    num_samples: int | None = None,
    address: str | None = None,
    train_fn: Callable = train_trial,
    extra_callbacks: tuple = (),
    study: dict | None = None,
    overrides: list | dict | None = None,
) -> tuple[SearchFolder, tune.ResultGrid]:
    """Validate everything, then write the search folder, then run the search.

    `train_fn` is the function each trial runs (tests inject failures by wrapping it);
    `extra_callbacks` are more Ray Tune callbacks (the benchmarks time trials with one);
    `study` is what `fundus-search study` does after the search, kept in search.json so that
    `resume` can finish it; `overrides` are `--set` values (the folder's config.yaml holds them).

    Raises:
        UserError (ConfigError, ManifestError, WeightsError, SearchError, ClusterError): nothing was written.
    """
    config = load_config(config_path, overrides)
    if name is not None:
        try:
            check_name(name)
        except ValueError as exc:
            raise SearchError(f"search name: {exc}") from None
    total = num_samples or config.search.num_samples
    folder = SearchFolder.new(
        config.storage.path,
        name or default_name(config),
        scratch=config.data.to_spec().resolved_cache_dir(),
        num_samples=total,
        study=study,
        facts=config.facts(),
    )
    if folder.remote is None and folder.path.exists():
        raise SearchError(
            f"search folder {folder.path} already exists; pick another name or `fundus-search resume {folder.path}`"
        )
    caches = prepare(config, address=address, destination=folder.results)
    try:
        folder.path.mkdir(parents=True)
    except FileExistsError:
        raise SearchError(
            f"search folder {folder.path} was just created by another command; pick another name"
        ) from None
    write_atomic(folder.config_file, yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    folder.write()
    return folder, _fit(config, folder, caches, total, train_fn, extra_callbacks)


def _fit(
    config: Config,
    folder: SearchFolder,
    caches: dict[int, ImageCache],
    total: int,
    train_fn: Callable,
    extra_callbacks: tuple = (),
) -> tune.ResultGrid:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate/group TPE
        tuner = build_tuner(
            config, folder, caches, num_samples=total, train_fn=train_fn, extra_callbacks=extra_callbacks
        )
    grid = tuner.fit()
    prune_checkpoints(folder.path, folder.trials_file, folder.remote)
    return grid


def prune_checkpoints(experiment: Path, table: str, remote: str | None = None) -> int:
    """Remove the checkpoints (weights and optimiser state) of the trials or runs of `table` that
    ended for good, completed or stopped early: nothing resumes them, and a ResNet-50 + AdamW
    checkpoint is ~300 MB. Errored ones keep theirs (`resume` retries them from it), and
    running ones theirs (a search stopped by Ctrl-C continues from them).

    Returns:
        the bytes freed.
    """
    if remote is not None or not Path(table).is_file():
        return 0
    status = pd.read_parquet(table, columns=["trial_id", "status"])
    ended = status.loc[status["status"].isin([COMPLETED, STOPPED_EARLY]), "trial_id"]
    freed = 0
    for trial_id in ended:
        for checkpoint in Path(experiment).glob(f"{trial_folder(trial_id)}/checkpoint_*"):
            if checkpoint.is_dir() and not checkpoint.is_symlink():
                freed += sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
                shutil.rmtree(checkpoint)
    if freed:
        log.info("%s: removed %.0f MB of checkpoints of ended trials", experiment, freed / 2**20)
    return freed


def search_ended(folder: SearchFolder) -> bool:
    """Whether the search ran to its end: trials.parquet, rewritten last as the search ends,
    holds `num_samples` trials and none still running."""
    trials = Path(folder.trials_file)
    if not trials.is_file():
        return False
    status = pd.read_parquet(trials, columns=["status"])["status"]
    return len(status) >= folder.num_samples and not (status == RUNNING).any()


def ray_saved_state(folder: Path) -> bool:
    """Whether Ray's experiment in `folder` has saved its state (what `Tuner.restore` continues
    from): `experiment_state-*.json`, written as the run starts and every few seconds after."""
    return any(folder.glob("experiment_state-*.json"))


def resume_search(
    results_dir: Path, *, address: str | None = None, train_fn: Callable = train_trial
) -> tuple[SearchFolder, tune.ResultGrid]:
    """Continue an interrupted search to its full num_samples (same experiment, same trials),
    from `results_dir` and into it, wherever the folder was first written.

    Raises:
        SearchError: `results_dir` is not a search folder, holds no Ray state, or others could
            have written something in it.
    """
    folder = SearchFolder.open(check_trusted(results_dir) if Path(results_dir).is_dir() else results_dir)
    if folder.remote is None:
        check_ray_state(folder.path)
    config = load_config(folder.config_file)
    caches = prepare(config, address=address)
    if folder.remote is None and not ray_saved_state(folder.path):
        # stopped between writing the folder and Ray's first snapshot: nothing to continue, so it
        # starts again here (what was begun before is Ray's and Optuna's first seconds, dropped)
        log.info("%s: Ray saved no state before the search stopped; starting it again in this folder", folder.path)
        discard_unsaved(folder.path, (STUDY_FILE, ROW_LOG, TRIALS_FILE, EPOCHS_FILE, TENSORBOARD_DIR))
        return folder, _fit(config, folder, caches, folder.num_samples, train_fn)
    tuner = restore_tuner(folder.results, trainable_with_resources(config, caches, train_fn), local=folder.path)
    grid = tuner.fit()
    prune_checkpoints(folder.path, folder.trials_file, folder.remote)
    return folder, grid


def discard_unsaved(folder: Path, names: tuple[str, ...]) -> None:
    """Remove Ray's Tuner file and `names` from `folder`, whose Ray saved no state: what they
    hold is the first seconds of a run that starts again."""
    for name in (TUNER_STATE, *names):
        path = folder / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def check_ray_state(folder: Path) -> None:
    """Ray's state in `folder` is either absent (nothing was saved: start again) or whole.

    Raises:
        SearchError: a saved experiment state without the Tuner it belongs to.
    """
    if ray_saved_state(folder) and not (folder / TUNER_STATE).is_file():
        raise SearchError(
            f"{folder}: Ray's experiment state is incomplete (no {TUNER_STATE}); this folder was "
            "not left so by fundus-search, so it is not resumed"
        )


def restore_tuner(experiment: str, trainable, *, local: Path) -> tune.Tuner:
    """Ray's `Tuner.restore` of `experiment`, with everything writing into it and `local`.

    Ray re-points the trials it restores at the folder it restores from; three things it
    restores from its pickles still hold the paths of the folder's first location (a copy would
    write into its original, a moved folder would fail): our callbacks and searcher, each told
    the folder by `relocate`, and the experiment Tune's search generator makes new trials in,
    re-pointed by `_RelocatedSearch`.
    """
    tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_unfinished=True, resume_errored=True)
    internal = tuner._local_tuner  # where Ray keeps the unpickled RunConfig and TuneConfig
    tune_config = internal._tune_config
    for part in [*(internal.get_run_config().callbacks or []), tune_config.search_alg]:
        if hasattr(part, "relocate"):
            part.relocate(local / STUDY_FILE if isinstance(part, PruningOptunaSearch) else local)
    if "://" not in experiment:
        # the wrapping Tune would do (tune.run): the concurrency limit, then the generator
        searcher = tune_config.search_alg
        if tune_config.max_concurrent_trials:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=tune_config.max_concurrent_trials)
        tune_config.search_alg, tune_config.max_concurrent_trials = _RelocatedSearch(searcher, Path(experiment)), None
    return tuner


class _RelocatedSearch(SearchGenerator):
    """Tune's SearchGenerator, whose restored experiment makes new trials in `folder`: the saved
    one names the folder the experiment was first written in (Ray restores it as saved)."""

    def __init__(self, searcher, folder: Path):
        super().__init__(searcher)
        self.folder = folder

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        storage = self._experiment.spec["storage"]  # the one new trials get (and experiment.storage)
        storage.storage_fs_path, storage.experiment_dir_name = self.folder.parent.as_posix(), self.folder.name
