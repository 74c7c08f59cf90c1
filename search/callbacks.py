"""Driver-side Ray Tune callbacks: Parquet rows for every report and trial, and progress lines."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import TextIO

from ray.tune import Callback
from ray.tune.experiment import Trial

from results.store import EPOCHS_SCHEMA, VAL_COLUMNS, ResultsStore

from .outcome import COMPLETED, ERROR, STOPPED_EARLY, trial_status
from .trial import PARAMS

_EPOCH_COLUMNS = [f.name for f in EPOCHS_SCHEMA if f.name not in ("search", "trial_id")]


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
    lines = [line.strip() for line in latest.splitlines()[1:] if line.strip()] or [line.strip() for line in
                                                                                    latest.splitlines() if line.strip()]
    return lines[-1][:500] if lines else "error (no message)"


def epoch_row(trial: Trial, result: dict) -> dict:
    return {"trial_id": trial.trial_id, **{k: result.get(k) for k in _EPOCH_COLUMNS}}


class ParquetCallback(Callback):
    """Keeps `trials.parquet` and `epochs.parquet` of the search current (see results.store).

    Args:
        results_uri: the search's results folder.
        search: search name written in every row.
        metric, mode: pick each trial's best epoch.
        metadata: provenance for the Parquet key-value metadata.
        log_path: local row log (see ResultsStore).
    """

    def __init__(self, results_uri: str, *, search: str, metric: str, mode: str, metadata: dict[str, str],
                 log_path: Path | None = None, flush_seconds: float = 30.0):
        self.results_uri, self.search, self.metric, self.mode = results_uri, search, metric, mode
        self.metadata, self.log_path, self.flush_seconds = metadata, log_path, flush_seconds
        self.store: ResultsStore | None = None  # opened in setup: the callback is pickled before

    def __getstate__(self):  # the store holds an open log; a restored callback reopens it in setup
        return {**self.__dict__, "store": None}

    def setup(self, **info) -> None:
        self.store = ResultsStore(self.results_uri, search=self.search, metadata=self.metadata,
                                  log_path=self.log_path, flush_seconds=self.flush_seconds)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.store.add_epoch(epoch_row(trial, result))
        self.store.put_trial(self.trial_row(trial, result, status="running"))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.store.put_trial(self.trial_row(trial, trial.last_result, status=trial_status(trial.last_result, error=False)))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.store.put_trial(self.trial_row(trial, trial.last_result, status=ERROR, error=error_line(trial)))

    def on_experiment_end(self, trials, **info) -> None:
        self.store.close()

    def trial_row(self, trial: Trial, last: dict, *, status: str, error: str | None = None) -> dict:
        config = trial.config
        epochs = self.store.epochs.get(trial.trial_id, {}).values()
        sign = 1 if self.mode == "max" else -1
        scored = [r for r in epochs if r.get(self.metric) is not None and not math.isnan(r[self.metric])]
        best = max(scored, key=lambda r: (sign * r[self.metric], -r["epoch"]), default={})
        resources = trial.placement_group_factory.required_resources
        return {
            "trial_id": trial.trial_id, "optuna_number": config.get("optuna_number"), "status": status,
            **{k: config.get(k) for k in PARAMS},
            "best_epoch": best.get("epoch"), **{f"best_{c}": best.get(c) for c in VAL_COLUMNS},
            **{f"last_{c}": (last or {}).get(c) for c in VAL_COLUMNS},
            "epochs_run": (last or {}).get("epoch", 0), "max_epochs": (last or {}).get("epochs_planned", config.get("max_epochs")),
            "wall_seconds": (last or {}).get("time_total_s"), "cpus": resources.get("CPU"), "gpus": resources.get("GPU", 0.0),
            "node": (last or {}).get("node"), "error": error, "weights_id": (last or {}).get("weights_id"),
            "dataset_fingerprint": (last or {}).get("dataset_fingerprint"),
        }


class ProgressCallback(Callback):
    """One line per finished trial: how it ended and the best result so far."""

    def __init__(self, *, metric: str, mode: str, total: int, stream: TextIO | None = None):
        self.metric, self.mode, self.total = metric, mode, total
        self.stream = stream
        self.best: float | None = None
        self.done = 0

    def _say(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, trial_status(trial.last_result, error=False))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._finish(trial, ERROR, error_line(trial))

    def _finish(self, trial: Trial, status: str, error: str | None = None) -> None:
        self.done += 1
        last = trial.last_result or {}
        value = last.get(self.metric)
        if value is not None and status != ERROR and (self.best is None or (value > self.best) == (self.mode == "max")):
            self.best = value
        c = trial.config
        label = {COMPLETED: "completed", STOPPED_EARLY: "stopped early", ERROR: "FAILED"}[status]
        shown = f"{self.metric} {value:.3f}" if value is not None and not error else error or "no result"
        best = f"{self.best:.3f}" if self.best is not None else "-"
        self._say(f"[{self.done:>3}/{self.total}] #{c.get('optuna_number')} {c.get('init'):<9} {c.get('strategy'):<6}"
                  f" {label:<13} epoch {last.get('epoch', 0):>2}  {shown}  (best {best})")
