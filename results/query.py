"""Queries over one or many searches' Parquet results: best configs, the init x strategy table."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fundus_search.direction import Direction
from fundus_search.results.filters import FilterError, filter_rows
from fundus_search.vocabulary import (
    AUC,
    AVERAGE,
    EPOCHS_FILE,
    ERROR,
    F1,
    INIT,
    KAPPA,
    PARAMS,
    SPECIFICITY,
    STRATEGY,
    TRIALS_FILE,
    UserError,
    best,
    val,
)


class ResultsError(UserError):
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
        raise ResultsError(
            f"results: no {TRIALS_FILE} in {', '.join(map(str, paths))} or its subfolders; "
            "pass a folder that `fundus-search run` printed"
        )
    return found


def read_parquet(path: Path) -> pd.DataFrame:
    """One Parquet file, or a ResultsError naming it when it is not readable Parquet."""
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ResultsError(
            f"{path}: not a readable Parquet file ({reason}); restore it from the search's "
            ".rows.jsonl by `fundus-search resume`, or remove the folder"
        ) from None


def load_trials(paths: list[str | Path]) -> pd.DataFrame:
    """All trial rows of every search under `paths` (plain pandas, no Ray needed)."""
    trials = pd.concat([read_parquet(p / TRIALS_FILE) for p in find_searches(paths)], ignore_index=True)
    for param in PARAMS:  # a search written before a parameter existed did not search it
        if param not in trials.columns:
            trials[param] = None
    return trials


def load_epochs(paths: list[str | Path]) -> pd.DataFrame:
    return pd.concat([read_parquet(p / EPOCHS_FILE) for p in find_searches(paths)], ignore_index=True)


def metric_column(trials: pd.DataFrame, metric: str) -> str:
    """The column holding `metric`: itself, or its best-epoch column (`val_average` -> `best_val_average`)."""
    column = metric if metric in trials.columns else best(metric)
    if column not in trials.columns:
        valid = sorted(c.removeprefix(best("")) for c in trials.columns if c.startswith(best(val(""))))
        raise ResultsError(f"--metric: unknown {metric!r}; use one of {valid}")
    return column


def best_configs(
    trials: pd.DataFrame, *, metric: str = val(AVERAGE), mode: str = "max", top: int = 5, where: str | None = None
) -> pd.DataFrame:
    """The `top` trials by their best epoch's `metric`, errored trials excluded.

    Args:
        where: a filter over trial columns, e.g. "strategy == 'lp_ft' and init == 'flair'"
            (see results.filters: comparisons, and/or/not, literals; never Python code).
    """
    column = metric_column(trials, metric)
    rows = trials[trials["status"] != ERROR]
    if where:
        try:
            rows = filter_rows(rows, where)
        except FilterError as exc:
            raise ResultsError(f"--where: {exc} (got {where!r})") from None
    return rows.sort_values(column, ascending=Direction(mode).ascending, na_position="last").head(top)


DATASET = "dataset_fingerprint"  # searches of different data are never pooled into one cell


def cell_winners(
    trials: pd.DataFrame, column: str, mode: str = "max", *, top: int = 1, cell: tuple[str, ...] = (INIT, STRATEGY)
) -> pd.DataFrame:
    """The `top` trials of each cell by `column` (e.g. best_val_average), best first.

    The one rule for "the winner of a cell": errored trials and trials without a value never
    win, and a tie goes to the earlier trial (lower optuna_number). Callers choose the
    candidates (the evaluation takes finished trials only).
    """
    rows = trials[(trials["status"] != ERROR) & trials[column].notna()]
    order = rows.sort_values([column, "optuna_number"], ascending=[Direction(mode).ascending, True])
    return order.groupby(list(cell), as_index=False, sort=False).head(top)


def init_strategy_table(trials: pd.DataFrame, *, metric: str = val(AVERAGE), mode: str = "max") -> pd.DataFrame:
    """For each dataset and (init, strategy) cell, the trial with the best `metric`, with kappa, F1
    and specificity.

    The shape of the seed paper's table, once per dataset (fingerprint): searches of one
    dataset share a table, searches of different datasets never do. Columns: dataset_fingerprint,
    init, strategy, trials, and best_val_* of the cell's winner, plus its trial_id and search,
    and `searches`: every search of that dataset.
    """
    column = metric_column(trials, metric)
    trials = with_dataset(trials)
    cell = [DATASET, INIT, STRATEGY]
    winners = cell_winners(trials, column, mode, cell=tuple(cell))
    counts = trials.groupby(cell).size().rename("trials").reset_index()
    keep = [*cell, column, *(best(val(m)) for m in (KAPPA, F1, SPECIFICITY, AUC)), "trial_id", "search"]
    table = counts.merge(winners[list(dict.fromkeys(keep))], on=cell, how="left")
    searches = trials.groupby(DATASET)["search"].agg(lambda names: ", ".join(sorted(set(names.dropna()))))
    table["searches"] = table[DATASET].map(searches)
    return table.sort_values(cell).reset_index(drop=True)


def with_dataset(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials with a dataset_fingerprint everywhere (`unrecorded` where a trial never reported one)."""
    fingerprint = trials[DATASET] if DATASET in trials else pd.Series("unrecorded", index=trials.index)
    return trials.assign(**{DATASET: fingerprint.fillna("unrecorded")})
