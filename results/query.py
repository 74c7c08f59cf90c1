"""Queries over one or many searches' Parquet results: best configs, the init x strategy table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .store import EPOCHS_FILE, TRIALS_FILE


class ResultsError(ValueError):
    """No results where the user pointed, or a query that does not fit them."""


def find_searches(paths: list[str | Path]) -> list[Path]:
    """Search folders under `paths`: each path is a search folder or a folder of searches."""
    found = []
    for path in map(Path, paths):
        if (path / TRIALS_FILE).is_file():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob(f"*/{TRIALS_FILE}")))
    if not found:
        raise ResultsError(f"results: no {TRIALS_FILE} in {', '.join(map(str, paths))} or its subfolders; "
                           "pass a folder that `fundus-search run` printed")
    return found


def load_trials(paths: list[str | Path]) -> pd.DataFrame:
    """All trial rows of every search under `paths` (plain pandas, no Ray needed)."""
    return pd.concat([pd.read_parquet(p / TRIALS_FILE) for p in find_searches(paths)], ignore_index=True)


def load_epochs(paths: list[str | Path]) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p / EPOCHS_FILE) for p in find_searches(paths)], ignore_index=True)


def metric_column(trials: pd.DataFrame, metric: str) -> str:
    """The column holding `metric`: itself, or its best-epoch column (`val_average` -> `best_val_average`)."""
    column = metric if metric in trials.columns else f"best_{metric}"
    if column not in trials.columns:
        valid = sorted(c.removeprefix("best_") for c in trials.columns if c.startswith("best_val"))
        raise ResultsError(f"--metric: unknown {metric!r}; use one of {valid}")
    return column


def best_configs(trials: pd.DataFrame, *, metric: str = "val_average", mode: str = "max", top: int = 5,
                 where: str | None = None) -> pd.DataFrame:
    """The `top` trials by their best epoch's `metric`, errored trials excluded.

    Args:
        where: a pandas query over trial columns, e.g. "strategy == 'lp_ft' and init == 'flair'".
    """
    column = metric_column(trials, metric)
    rows = trials[trials["status"] != "error"]
    if where:
        try:
            rows = rows.query(where)
        except Exception as exc:  # pandas raises many types for a bad expression
            raise ResultsError(f"--where: cannot evaluate {where!r}: {exc}") from None
    return rows.sort_values(column, ascending=mode == "min", na_position="last").head(top)


def init_strategy_table(trials: pd.DataFrame, *, metric: str = "val_average", mode: str = "max") -> pd.DataFrame:
    """For each (init, strategy) cell, the trial with the best `metric`, with kappa, F1 and specificity.

    The shape of the seed paper's table. Columns: init, strategy, trials, and best_val_* of
    the cell's winner, plus its trial_id and search.
    """
    column = metric_column(trials, metric)
    rows = trials[trials["status"] != "error"].dropna(subset=[column])
    order = rows.sort_values(column, ascending=mode == "min")
    winners = order.groupby(["init", "strategy"], as_index=False).head(1)
    counts = trials.groupby(["init", "strategy"]).size().rename("trials").reset_index()
    keep = ["init", "strategy", column, "best_val_kappa", "best_val_f1", "best_val_specificity", "best_val_auc",
            "trial_id", "search"]
    table = counts.merge(winners[list(dict.fromkeys(keep))], on=["init", "strategy"], how="left")
    return table.sort_values(["init", "strategy"]).reset_index(drop=True)
