"""ASHA with one rung table per cell of the search (e.g. per init x strategy)."""

from __future__ import annotations

from ray.tune.experiment import Trial
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from fundus_search.direction import Direction


class StratifiedASHA(FIFOScheduler):
    """Delegates each trial to the AsyncHyperBandScheduler of its cell.

    A random-init or FT trial is then compared with its peers, not pruned for converging
    slower than a pretrained linear probe. `time_attr` is the main-phase epoch: the LP-FT
    warm-up does not count toward the budget.

    Args:
        stratify_by: config keys whose values define a cell, e.g. ("init", "strategy");
            empty for plain ASHA.
        metric, mode: what to compare; mode "max" or "min" (normalised once, here).
        max_t, grace_period, reduction_factor: as AsyncHyperBandScheduler, in epochs.
    """

    def __init__(
        self,
        *,
        stratify_by: tuple[str, ...],
        metric: str,
        mode: str,
        max_t: int,
        grace_period: int,
        reduction_factor: float,
        time_attr: str = "epoch",
    ):
        super().__init__()
        Direction(mode)  # raises on anything but "max" or "min"
        self.stratify_by, self._metric, self._mode, self._time_attr = tuple(stratify_by), metric, mode, time_attr
        self._asha = dict(
            time_attr=time_attr,
            metric=metric,
            mode=mode,
            max_t=max_t,
            grace_period=min(grace_period, max_t),
            reduction_factor=reduction_factor,
        )
        self.cells: dict[tuple, AsyncHyperBandScheduler] = {}
        self._cell_of: dict[str, tuple] = {}

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return True  # metric and mode are fixed at construction

    def cell_key(self, trial: Trial) -> tuple:
        return tuple(trial.config.get(key) for key in self.stratify_by)

    def _cell(self, trial: Trial) -> AsyncHyperBandScheduler:
        key = self._cell_of.setdefault(trial.trial_id, self.cell_key(trial))
        if key not in self.cells:
            self.cells[key] = AsyncHyperBandScheduler(**self._asha)
        return self.cells[key]

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._cell(trial).on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        missing = [k for k in (self._metric, self._time_attr) if k not in result]
        if missing:
            raise ValueError(f"trial {trial.trial_id} reported without {missing}; every report must carry them")
        return self._cell(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._cell(trial).on_trial_complete(tune_controller, trial, result)
        self._cell_of.pop(trial.trial_id, None)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.on_trial_remove(tune_controller, trial)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        cell = self.cells.get(self._cell_of.pop(trial.trial_id, None))
        if cell is not None and trial.trial_id in cell._trial_info:
            cell.on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return "StratifiedASHA: " + ", ".join(f"{k}: {c._num_stopped} stopped" for k, c in self.cells.items())


def make_scheduler(kind: str, **kwargs) -> TrialScheduler:
    """`asha` (stratified by kwargs['stratify_by']) or `fifo` (no early stopping)."""
    return StratifiedASHA(**kwargs) if kind == "asha" else FIFOScheduler()
