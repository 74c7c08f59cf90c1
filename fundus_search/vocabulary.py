"""The project's vocabulary, defined once: strategies, searched parameters, metrics and their
column forms, trial statuses, results file names, and the base class of expected input errors.

The bottom of the house: `data_io`, `models`, `results` and `search` import it; it imports
nothing (no torch, no Ray). Parquet schemas, config choices, CLI choices, TensorBoard tags and
table formatters are derived from these names.
"""

from __future__ import annotations

import re


class UserError(ValueError):
    """An expected problem with what the user gave us (a file, a field, a flag, a folder).

    The message is one line: `<where>: <what is wrong> (got <value>); <what to do>`. The command
    line prints it and exits with `exit_code` (2: input and usage errors, as argparse does).
    """

    exit_code = 2


def check_name(value: str) -> str:
    """A search, evaluation or config name: letters, digits, '.', '_', '-', starting with a letter
    or digit, so that as a folder name it can never climb out of `storage.path`.

    Raises:
        ValueError: the name is not of that form.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
        raise ValueError(f"use letters, digits, '.', '_' or '-', starting with a letter or digit (got {value!r})")
    return value


# ---- transfer strategies (the seed paper's three, then partial and norm-only fine-tuning) ----
LP, FT, LP_FT = "lp", "ft", "lp_ft"  # linear probing, fine-tuning, LP then FT (Kumar et al., 2022)
PARTIAL_FT, NORM_FT = "partial_ft", "norm_ft"  # the last blocks only; normalisation layers only (BitFit-like)
STRATEGIES = (LP, FT, LP_FT, PARTIAL_FT, NORM_FT)

# ---- searched parameters: the search-space keys, in table order ----
INIT, STRATEGY, LP_LR, FT_LR, LP_EPOCHS, FT_BLOCKS, LAYER_DECAY, WEIGHT_DECAY, BATCH_SIZE, SEED, FOLD = (
    "init",
    "strategy",
    "lp_lr",
    "ft_lr",
    "lp_epochs",
    "ft_blocks",
    "layer_decay",
    "weight_decay",
    "batch_size",
    "seed",
    "fold",
)
PARAMS = (INIT, STRATEGY, LP_LR, FT_LR, LP_EPOCHS, FT_BLOCKS, LAYER_DECAY, WEIGHT_DECAY, BATCH_SIZE, SEED, FOLD)
SPLIT, CV, TEST = "split", "cv", "test"  # a run's `split`: a fold of the cross-validation, or the held-out test split
REPEAT = "repeat"  # an evaluation run's partition of the repeated k-fold (0: the search's)
TRAIN_SEED = "train_seed"  # an evaluation run's training seed, when it is not its `seed` (see search.evaluate.retrain)
NUMERIC_PARAMS = (LP_LR, FT_LR, LP_EPOCHS, FT_BLOCKS, LAYER_DECAY, WEIGHT_DECAY)  # ranges in the config
INTEGER_PARAMS = (LP_EPOCHS, FT_BLOCKS)  # searched as integers
RATES = (LP_LR, FT_LR, WEIGHT_DECAY)  # searched on a log scale

# ---- metrics (CGI-HRDC challenge: average = mean(kappa, F1 of the positive class, specificity)) ----
KAPPA, F1, SPECIFICITY, AVERAGE, AUC, ACCURACY, SENSITIVITY = (
    "kappa",
    "f1",
    "specificity",
    "average",
    "auc",
    "accuracy",
    "sensitivity",
)
METRICS = (KAPPA, F1, SPECIFICITY, AVERAGE, AUC, ACCURACY, SENSITIVITY)
CHALLENGE_METRICS = (KAPPA, F1, SPECIFICITY, AVERAGE)  # the challenge's columns, at the decision rule
TRAIN_LOSS = "train_loss"


def val(metric: str) -> str:
    """`kappa` -> `val_kappa`: a metric on the validation fold, as trials report it."""
    return f"val_{metric}"


def best(column: str) -> str:
    """`val_kappa` -> `best_val_kappa`: at the trial's best epoch (trials.parquet)."""
    return f"best_{column}"


def last(column: str) -> str:
    """`val_kappa` -> `last_val_kappa`: at the trial's last epoch (trials.parquet)."""
    return f"last_{column}"


def held_out(metric: str) -> str:
    """`kappa` -> `test_kappa`: on the held-out test split (evaluation)."""
    return f"test_{metric}"


def lp_warmup(column: str) -> str:
    """`val_average` -> `lp_val_average`: after the LP warm-up of lp_ft."""
    return f"lp_{column}"


VAL_METRICS = tuple(val(m) for m in METRICS)

# ---- how a trial ended ----
RUNNING, COMPLETED, STOPPED_EARLY, ERROR = "running", "completed", "stopped_early", "error"
STATUSES = (RUNNING, COMPLETED, STOPPED_EARLY, ERROR)

# ---- files of a search folder ----
TRIALS_FILE, EPOCHS_FILE = "trials.parquet", "epochs.parquet"
CONFIG_FILE, SEARCH_FILE, STUDY_FILE, TENSORBOARD_DIR = "config.yaml", "search.json", "optuna.db", "tensorboard"
ROW_LOG = ".rows.jsonl"
# ... and of an evaluation folder (inside the search folder by default)
EVALUATION_DIR, EVALUATION_FILE = "evaluation", "evaluation.json"
RUNS_FILE, PREDICTIONS_FILE, COMPARISONS_FILE = "runs.parquet", "predictions.parquet", "comparisons.parquet"
REPORT_FILE = "report.html"
