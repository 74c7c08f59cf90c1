"""The Parquet results of searches and evaluations, their queries, metrics and tables (no torch, no Ray)."""

from fundus_search.results.query import (
    ResultsError,
    best_configs,
    find_searches,
    init_strategy_table,
    load_epochs,
    load_trials,
    metric_column,
)
from fundus_search.results.store import EPOCHS_SCHEMA, TRIALS_SCHEMA, ResultsStore, ResultsWriteError

__all__ = [
    "ResultsError",
    "best_configs",
    "find_searches",
    "init_strategy_table",
    "load_epochs",
    "load_trials",
    "metric_column",
    "EPOCHS_SCHEMA",
    "TRIALS_SCHEMA",
    "ResultsStore",
    "ResultsWriteError",
]
