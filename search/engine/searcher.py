"""Optuna TPE behind Ray Tune, telling Optuna how each trial really ended."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import optuna
from optuna.trial import TrialState
from ray.tune.result import TRAINING_ITERATION
from ray.tune.search.optuna import OptunaSearch

from fundus_search.direction import Direction
from fundus_search.results.layout import trial_folder
from fundus_search.search.engine.outcome import COMPLETED, ERROR, trial_status

log = logging.getLogger(__name__)

_STATES = {COMPLETED: TrialState.COMPLETE, ERROR: TrialState.FAIL}


class FolderStudyStorage(optuna.storages.RDBStorage):
    """The search's Optuna study, `optuna.db` in its folder, that connects on first use.

    Ray pickles the searcher (its study and every Optuna trial hold this storage) into the
    experiment state, and a plain RDBStorage reconnects to its absolute path when unpickled, and
    creates its schema there: a resumed copy of a folder would write into the original, or fail
    when the original is gone. This one waits until `relocate` names the folder being resumed.
    """

    _CONNECTION = ("engine", "scoped_session", "_version_manager")

    def __init__(self, db_path: Path):
        super().__init__(f"sqlite:///{db_path}")

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)  # no connection yet: see __getattr__

    def __getattr__(self, name: str):
        if name in self._CONNECTION and "url" in self.__dict__:
            super().__setstate__({})  # RDBStorage's own: connect to self.url
            return self.__dict__[name]
        raise AttributeError(name)

    def relocate(self, db_path: Path) -> None:
        for name in self._CONNECTION:
            self.__dict__.pop(name, None)
        self.url = f"sqlite:///{db_path}"


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that tells scheduler-stopped trials as PRUNED and errored ones as FAIL,
    and keeps the study consistent with Tune's state across a driver kill and `resume`.

    Ray's OptunaSearch tells an ASHA-stopped trial as COMPLETE with its low-fidelity value,
    which TPE then treats as a finished result; PRUNED keeps only its intermediate values.

    The study (SQLite) is written at once, Tune's experiment state (with this searcher) every
    few seconds: a driver killed in between leaves study trials that Tune never heard of
    (RUNNING forever, their enqueued init x strategy cell never run) or trials the study
    already finished that Tune will report again. `restore` fails the former and enqueues
    their parameters again; reports for the latter are ignored.
    """

    _db_path: Path | None = None  # where the study is now (see relocate)

    def relocate(self, db_path: Path) -> None:
        """Use the study in `db_path`: the folder being resumed, wherever it was first written."""
        self._db_path = Path(db_path)
        if isinstance(self._storage, FolderStudyStorage):
            self._storage.relocate(self._db_path)

    def restore(self, checkpoint_path: str) -> None:
        db_path = self._db_path  # the saved state carries the path of the session that saved it
        super().restore(checkpoint_path)
        if db_path is not None:
            self.relocate(db_path)
        requeued = self.requeue_orphans()
        if requeued:
            log.info("resume: trials %s were asked of Optuna but never started; re-enqueued", requeued)

    def requeue_orphans(self) -> list[int]:
        """Fail the study's RUNNING trials that this searcher does not know and enqueue their
        parameters again; returns their trial numbers."""
        known = {trial.number for trial in self._ot_trials.values()}
        orphans = [
            t for t in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in known
        ]
        for orphan in orphans:
            self._ot_study.tell(orphan.number, state=TrialState.FAIL)
            self._ot_study.enqueue_trial(orphan.params)
        return [orphan.number for orphan in orphans]

    def _finished_in_study(self, trial_id: str) -> bool:
        trial = self._ot_trials.get(trial_id)
        return trial is None or self._ot_study._storage.get_trial(trial._trial_id).state.is_finished()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Skips a step Optuna already has: an epoch redone by a trial retried from an earlier
        checkpoint (storage.checkpoint_every > 1) reports the same value again."""
        trial = self._ot_trials.get(trial_id)
        if trial is None:
            return
        stored = self._ot_study._storage.get_trial(trial._trial_id)
        if not stored.state.is_finished() and result.get(TRAINING_ITERATION) not in stored.intermediate_values:
            super().on_trial_result(trial_id, result)

    def _setup_study(self, mode) -> None:
        """Ray's study, with its objective named after the metric (optuna-dashboard shows the name)."""
        super()._setup_study(mode)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self._ot_study.set_metric_names([self._metric])

    def suggest(self, trial_id: str) -> dict | None:
        """Ray's suggestion, with the Optuna trial linked to its Ray trial (user attributes
        `ray_trial_id` and `trial_dir`, the trial's folder in the search folder)."""
        suggestion = super().suggest(trial_id)
        trial = self._ot_trials.get(trial_id)
        if suggestion is not None and trial is not None:
            trial.set_user_attr("ray_trial_id", trial_id)
            trial.set_user_attr("trial_dir", trial_folder(trial_id))
        return suggestion

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Tells a completed trial's score: its best epoch's value of the metric (the one score the
        progress line, `best`, `table` and the evaluation use), not its last epoch's."""
        if trial_id in self._completed_trials or self._finished_in_study(trial_id):
            self._completed_trials.add(trial_id)
            return
        status = trial_status(result, error=error)
        state = _STATES.get(status, TrialState.PRUNED)
        value = self._best_reported(trial_id, result) if result and state == TrialState.COMPLETE else None
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)

    def _best_reported(self, trial_id: str, result: dict) -> float | None:
        """The best of the trial's epoch values: those the study holds, and the last result's
        (Tune hands the final result to on_trial_complete only, never to on_trial_result)."""
        stored = self._ot_study._storage.get_trial(self._ot_trials[trial_id]._trial_id)
        values = [*stored.intermediate_values.values(), result.get(self.metric)]
        values = [v for v in values if v is not None and v == v]  # NaN epochs never win
        if not values:
            return None
        return Direction(self.mode).best(values)


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    """`tpe` (multivariate, grouped for the conditional space, constant liar for parallel
    trials) or `random` (the baseline)."""
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True)


def make_searcher(
    space,
    *,
    metric: str,
    mode: str,
    seed: int,
    study_name: str,
    db_path: Path | None,
    first_points: list[dict] | None = None,
    sampler: str = "tpe",
) -> PruningOptunaSearch:
    """An Optuna search (TPE or random) with the study persisted as SQLite in `db_path`.

    Args:
        db_path: None keeps the study in memory (nothing to inspect or resume afterwards; the
            B3 benchmark replays hundreds of searches, where SQLite is half the driver's time).
        first_points: partial parameter sets Optuna tries first (enqueued), e.g. one per
            init x strategy cell so every cell of the comparison is measured; TPE fills in the rest.
        sampler: `tpe` or `random`, see make_sampler.
    """
    sampler = make_sampler(sampler, seed)
    storage = FolderStudyStorage(db_path) if db_path else optuna.storages.InMemoryStorage()
    return PruningOptunaSearch(
        space=space,
        metric=metric,
        mode=mode,
        sampler=sampler,
        study_name=study_name,
        storage=storage,
        points_to_evaluate=first_points or None,
    )
