"""Driver-side Ray Tune callbacks: Parquet rows for every report and trial, and progress lines."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.result import AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID

from fundus_search.direction import Direction
from fundus_search.results.store import (
    EPOCHS_SCHEMA,
    PREDICTION_REPORT_KEYS,
    SEARCH_TABLES,
    TRIAL_REPORT_KEYS,
    ResultsStore,
)
from fundus_search.search.engine.outcome import trial_status
from fundus_search.vocabulary import (
    COMPLETED,
    EPOCHS_FILE,
    ERROR,
    PARAMS,
    RUNNING,
    STOPPED_EARLY,
    TRIALS_FILE,
    VAL_METRICS,
    best,
    last,
)

_EPOCH_COLUMNS = [f.name for f in EPOCHS_SCHEMA if f.name not in ("search", "trial_id")]
_TUNE_KEYS = {*AUTO_RESULT_KEYS, DONE, EXPERIMENT_TAG, SHOULD_CHECKPOINT, TRIAL_ID}  # filled in by Tune itself


def unknown_report_keys(result: dict) -> list[str]:
    """Keys a trial reported that no Parquet column stores (they would be lost)."""
    known = {*_EPOCH_COLUMNS, *TRIAL_REPORT_KEYS, *PREDICTION_REPORT_KEYS, *_TUNE_KEYS}
    return sorted(k for k in result if k not in known)


def error_line(trial: Trial) -> str | None:
    """The last line of a trial's latest failure: the exception and its message.

    Read from the driver's own copy of the error (`trial.error_file`), which Tune writes before
    calling back; the copy in storage may not be synced yet.
    """
    path = trial.error_file
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    else:
        error = trial.get_error()
        text = str(error) if error is not None else ""
    latest = text.split("Failure # ")[-1]  # retries append one section each
    lines = [line.strip() for line in latest.splitlines()[1:] if line.strip()] or [
        line.strip() for line in latest.splitlines() if line.strip()
    ]
    return lines[-1][:500] if lines else "error (no message)"


def epoch_row(trial: Trial, result: dict) -> dict:
    """The epochs.parquet row of one report.

    Raises:
        ValueError: the report holds a key without a column (add it to results.store's schema).
    """
    unknown = unknown_report_keys(result)
    if unknown:
        raise ValueError(
            f"trial {trial.trial_id} reported {unknown}, which no column of results.store stores; "
            "add them to EPOCHS_SCHEMA, TRIAL_REPORT_KEYS or PREDICTION_REPORT_KEYS"
        )
    return {"trial_id": trial.trial_id, **{k: result.get(k) for k in _EPOCH_COLUMNS}}


class StoreCallback(Callback):
    """Keeps a ResultsStore's Parquet files current: the one base of the search's and the
    evaluation's callbacks. Every report is an epochs.parquet row, then `on_result`; a trial's
    end, completed or errored, is `on_end` (as Ray's LoggerCallback merges the two).

    Args:
        root: the results folder (or its s3:// location).
        name: written in every row's `search` column.
        metadata: provenance for the Parquet key-value metadata.
        log_path: the local row log, when `root` is remote (see ResultsStore).
    """

    tables = SEARCH_TABLES

    def __init__(
        self, root: str, *, name: str, metadata: dict[str, str], log_path: Path | None = None, flush_seconds=30.0
    ):
        self.root, self.name, self.metadata, self.log_path, self.flush_seconds = (
            root,
            name,
            metadata,
            log_path,
            flush_seconds,
        )
        self.store: ResultsStore | None = None  # opened in setup: the callback is pickled before

    def __getstate__(self):  # the store holds an open log; a restored callback reopens it in setup
        return {**self.__dict__, "store": None}

    def relocate(self, folder: Path) -> None:
        """Write into `folder`, the experiment being resumed (the paths this callback was pickled
        with are those of the folder's first location)."""
        if self.log_path is None:
            self.root = str(folder)
        else:  # Parquet files on remote storage; the row log in the local folder
            self.log_path = Path(folder) / self.log_path.name

    def setup(self, **info) -> None:
        self.store = ResultsStore(
            self.root,
            search=self.name,
            tables=self.tables,
            metadata=self.metadata,
            log_path=self.log_path,
            flush_seconds=self.flush_seconds,
        )

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.store.put(EPOCHS_FILE, epoch_row(trial, result))
        self.on_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        final = trial.last_result or {}
        self.on_end(trial, final, status=trial_status(final, error=False), error=None)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.on_end(trial, trial.last_result or {}, status=ERROR, error=error_line(trial))

    def on_experiment_end(self, trials, **info) -> None:
        self.store.close()

    def on_result(self, trial: Trial, result: dict) -> None:
        """A report of a running trial, after its epoch row."""

    def on_end(self, trial: Trial, final: dict, *, status: str, error: str | None) -> None:
        """A trial ended: completed, stopped early or errored (`error`: its last line)."""


class ParquetCallback(StoreCallback):
    """Keeps `trials.parquet` and `epochs.parquet` of the search current (see results.store).

    Args:
        metric, mode: pick each trial's best epoch.
        (the rest as StoreCallback)
    """

    def __init__(self, root: str, *, metric: str, mode: str, **store):
        super().__init__(root, **store)
        self.metric, self.mode = metric, mode

    def on_result(self, trial: Trial, result: dict) -> None:
        self.store.put(TRIALS_FILE, self.trial_row(trial, result, status=RUNNING))

    def on_end(self, trial: Trial, final: dict, *, status: str, error: str | None) -> None:
        self.store.put(TRIALS_FILE, self.trial_row(trial, final, status=status, error=error))

    def trial_row(self, trial: Trial, final: dict | None, *, status: str, error: str | None = None) -> dict:
        """The trials.parquet row: parameters, best and last epoch metrics, resources, provenance."""
        config, final = trial.config, final or {}
        epochs = self.store.rows(EPOCHS_FILE, trial.trial_id)
        sign = Direction(self.mode).sign
        scored = [r for r in epochs if r.get(self.metric) is not None and not math.isnan(r[self.metric])]
        top = max(scored, key=lambda r: (sign * r[self.metric], -r["epoch"]), default={})
        resources = trial.placement_group_factory.required_resources
        return {
            "trial_id": trial.trial_id,
            "optuna_number": config.get("optuna_number"),
            "status": status,
            **{k: config.get(k) for k in PARAMS},
            "best_epoch": top.get("epoch"),
            **{best(c): top.get(c) for c in VAL_METRICS},
            **{last(c): final.get(c) for c in VAL_METRICS},
            "epochs_run": final.get("epoch", 0),
            "max_epochs": final.get("epochs_planned", config.get("max_epochs")),
            "wall_seconds": final.get("time_total_s"),
            "cpus": resources.get("CPU"),
            "gpus": resources.get("GPU", 0.0),
            "node": final.get("node"),
            "error": error,
            **{k: final.get(k) for k in TRIAL_REPORT_KEYS if k != "epochs_planned"},
        }


def search_label(config: dict) -> str:
    """`#7 flair     lp_ft `: a search trial on its progress line."""
    return f"#{config.get('optuna_number')} {config.get('init'):<9} {config.get('strategy'):<6}"


class ProgressCallback(Callback):
    """One line per finished trial: how it ended, its score and the best score so far.

    A search trial's score is its best epoch's value of the metric (what trials.parquet's
    `best_*`, `best`, `table` and Optuna hold); an evaluation run's is its last epoch's (the
    model it scores), with `best_epoch=False`.

    Args:
        label: the trial's name on its line, from its config (a module-level function: the
            callback is pickled with the experiment).
    """

    def __init__(
        self,
        *,
        metric: str,
        mode: str,
        total: int,
        stream: TextIO | None = None,
        label: Callable[[dict], str] = search_label,
        best_epoch: bool = True,
    ):
        self.metric, self.mode, self.total, self.label = metric, mode, total, label
        self.stream, self.best_epoch = stream, best_epoch
        self.best: float | None = None
        self.scores: dict[str, tuple[float, int]] = {}  # trial id -> (score, its epoch)
        self.epochs_said: dict[str, int] = {}  # trial id -> the last epoch given its line
        self.done = 0

    def _better(self, value: float, than: float | None) -> bool:
        return Direction(self.mode).better(value, than)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        """Keeps the trial's score; in a log (stdout not a terminal) also says the epoch, as a
        log reader has no live table to watch."""
        self._score(trial, result)
        self._epoch_line(trial, result)

    def _epoch_line(self, trial: Trial, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if (self.stream or sys.stdout).isatty() or value is None or epoch is None:
            return
        if self.epochs_said.get(trial.trial_id, 0) >= epoch:
            return  # the final result, already said as a result
        self.epochs_said[trial.trial_id] = epoch
        seconds = result.get("epoch_seconds")
        took = f"  ({seconds:.1f} s)" if seconds is not None else ""
        shown = f"{epoch:>2}/{result.get('epochs_planned', '?')}"
        self._say(f"        {self.label(trial.config)} epoch {shown}  {self.metric} {value:.3f}{took}")

    def _score(self, trial: Trial, result: dict) -> None:
        value = result.get(self.metric)
        if value is None or value != value:  # NaN
            return
        kept = self.scores.get(trial.trial_id)
        if not self.best_epoch or kept is None or self._better(value, kept[0]):
            self.scores[trial.trial_id] = (value, result.get("epoch", 0))

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, trial_status(trial.last_result, error=False))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, ERROR, error_line(trial))

    def _finish(self, trial: Trial, status: str, error: str | None = None) -> None:
        self.done += 1
        final = trial.last_result or {}
        self._score(trial, final)  # the last result counts, whether or not it came as a result
        self._epoch_line(trial, final)
        value, epoch = self.scores.get(trial.trial_id, (None, None))
        if value is not None and status != ERROR and self._better(value, self.best):
            self.best = value
        label = {COMPLETED: "completed", STOPPED_EARLY: "stopped early", ERROR: "FAILED"}[status]
        at = f" (epoch {epoch})" if self.best_epoch and epoch is not None else ""
        shown = f"{self.metric} {value:.3f}{at}" if value is not None and not error else error or "no result"
        so_far = f"{self.best:.3f}" if self.best is not None else "-"
        self._say(
            f"[{self.done:>3}/{self.total}] {self.label(trial.config)} {label:<13} epoch {final.get('epoch', 0):>2}"
            f"  {shown}  (best {so_far})"
        )
