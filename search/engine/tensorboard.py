"""TensorBoard: one run per trial (or evaluation run) with a readable name, a scalar per metric
per epoch in groups (`train/`, `val/`, `lp_warmup/`, `speed/`), HParams."""

from __future__ import annotations

import errno
from pathlib import Path

from ray.tune import Callback
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fundus_search.results.store import ResultsWriteError
from fundus_search.vocabulary import (
    AVERAGE,
    FOLD,
    PARAMS,
    SEED,
    TENSORBOARD_DIR,
    TRAIN_LOSS,
    VAL_METRICS,
    lp_warmup,
    val,
)

SCALARS = (TRAIN_LOSS, *VAL_METRICS, "epoch_seconds", "images_per_second")
_NAMED = tuple(p for p in PARAMS if p not in (SEED, FOLD))  # the run's name: what was chosen
_WARMUP = lp_warmup(val(AVERAGE))


def tag(metric: str) -> str:
    """The grouped TensorBoard tag of a reported metric: `train_loss` -> `train/loss`,
    `val_average` -> `val/average`, `lp_val_average` -> `lp_warmup/val_average`,
    `epoch_seconds` -> `speed/epoch_seconds`."""
    if metric == TRAIN_LOSS:
        return "train/loss"
    if metric.startswith(lp_warmup("")):
        return f"lp_warmup/{metric.removeprefix(lp_warmup(''))}"
    if metric.startswith(val("")):
        return f"val/{metric.removeprefix(val(''))}"
    return f"speed/{metric}"


def run_name(config: dict) -> str:
    """e.g. `0007 init=flair,strategy=lp_ft,lp_lr=0.0012,ft_lr=3e-05,lp_epochs=5`; an evaluation
    run by its id, which says its configuration, split, fold and seed (`flair-lp-1-fold2-seed0`)."""
    if config.get("run_id"):
        return str(config["run_id"])
    parts = [
        f"{k}={config[k]:.2g}" if isinstance(config.get(k), float) else f"{k}={config[k]}"
        for k in _NAMED
        if config.get(k) is not None
    ]
    return f"{config.get('optuna_number', 0):04d} " + ",".join(parts)


class TensorBoardCallback(Callback):
    """Writes `<logdir>/<run name>/events.*` for each trial; the HParams tab compares trials."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.writers: dict[str, SummaryWriter] = {}

    def _writer(self, trial) -> SummaryWriter:
        if trial.trial_id not in self.writers:
            folder = Path(self.logdir) / run_name(trial.config)
            for path in (Path(self.logdir), folder):  # event files are appended: never through a link
                if path.is_symlink():
                    raise ResultsWriteError(str(path), OSError(errno.ELOOP, "a symlink"), Path(self.logdir).parent)
            writer = SummaryWriter(str(folder))
            hparam_values = {k: trial.config[k] for k in PARAMS if trial.config.get(k) is not None}
            experiment, session_start, _ = hparams(hparam_values, {tag(c): 0.0 for c in SCALARS})
            for summary in (experiment, session_start):
                writer.file_writer.add_summary(summary)
            self.writers[trial.trial_id] = writer
        return self.writers[trial.trial_id]

    def relocate(self, folder: Path) -> None:
        """Write into `folder`'s TensorBoard runs (see ParquetCallback.relocate)."""
        self.logdir = str(Path(folder) / TENSORBOARD_DIR)

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        writer = self._writer(trial)
        for metric in SCALARS:
            if result.get(metric) is not None:
                writer.add_scalar(tag(metric), result[metric], global_step=result["epoch"])
        if result.get(_WARMUP) is not None:
            writer.add_scalar(tag(_WARMUP), result[_WARMUP], global_step=0)
        writer.flush()

    def _close(self, trial) -> None:
        writer = self.writers.pop(trial.trial_id, None)
        if writer is not None:
            writer.file_writer.add_summary(hparams({}, {})[2])  # session end
            writer.close()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._close(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._close(trial)

    def __getstate__(self):  # writers hold open files; a restored callback reopens them
        return {"logdir": self.logdir, "writers": {}}
