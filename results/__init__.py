"""The Parquet results store and its queries."""

from .query import (ResultsError, best_configs, find_searches, init_strategy_table, load_epochs, load_trials,
                    metric_column)
from .store import EPOCHS_FILE, EPOCHS_SCHEMA, TRIALS_FILE, TRIALS_SCHEMA, ResultsStore, ResultsWriteError

__all__ = ["ResultsError", "best_configs", "find_searches", "init_strategy_table", "load_epochs", "load_trials", "metric_column",
           "EPOCHS_FILE", "EPOCHS_SCHEMA", "TRIALS_FILE", "TRIALS_SCHEMA", "ResultsStore", "ResultsWriteError"]
