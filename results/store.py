"""The Parquet results store: the tables of a search (`trials`, `epochs`) and of an evaluation
(`runs`, `predictions`, `epochs`), each with a fixed schema defined here.

Rows arrive one at a time. Each is appended at once to a JSON-lines log (cheap, survives a
killed driver) and the Parquet files are rewritten from all rows at most every
`flush_seconds` and at the end, atomically (temporary file, then rename). Every table has a
key (e.g. trial_id and epoch): a replayed or re-reported row replaces its predecessor, so a
resumed search or evaluation never duplicates one. Works on local paths and s3:// through
pyarrow filesystems.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from fundus_search.results.layout import open_append, write_atomic
from fundus_search.vocabulary import (
    BATCH_SIZE,
    EPOCHS_FILE,
    FOLD,
    FT_BLOCKS,
    FT_LR,
    INIT,
    LAYER_DECAY,
    LP_EPOCHS,
    LP_LR,
    METRICS,
    PARAMS,
    PREDICTIONS_FILE,
    REPEAT,
    ROW_LOG,
    RUNS_FILE,
    SEED,
    STRATEGY,
    TRAIN_LOSS,
    TRAIN_SEED,
    TRIALS_FILE,
    VAL_METRICS,
    WEIGHT_DECAY,
    UserError,
    best,
    last,
    lp_warmup,
)

log = logging.getLogger(__name__)

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()
_PARAM_TYPES = {
    INIT: _str,
    STRATEGY: _str,
    LP_LR: _f64,
    FT_LR: _f64,
    LP_EPOCHS: _i64,
    FT_BLOCKS: _i64,
    LAYER_DECAY: _f64,
    WEIGHT_DECAY: _f64,
    BATCH_SIZE: _i64,
    SEED: _i64,
    FOLD: _i64,
}
assert set(_PARAM_TYPES) == set(PARAMS)

# One row per report (epoch). lp_val_* is set on the first main-phase epoch of lp_ft only.
EPOCHS_SCHEMA = pa.schema(
    [("search", _str), ("trial_id", _str), ("epoch", _i64), ("phase", _str), (TRAIN_LOSS, _f64)]
    + [(c, _f64) for c in VAL_METRICS]
    + [(lp_warmup(c), _f64) for c in VAL_METRICS]
    + [
        ("epoch_seconds", _f64),
        ("images_per_second", _f64),
        ("time_total_s", _f64),
        ("timestamp", _f64),
        ("node", _str),
    ]
)

# How a trial or a run ran and what it ran with: the last columns of trials and runs alike.
_RAN = [
    ("wall_seconds", _f64),
    ("cpus", _f64),
    ("gpus", _f64),
    ("node", _str),
    ("error", _str),
    ("weights_id", _str),
    ("normalize", _str),
    ("dataset_fingerprint", _str),
]

# One row per trial. Space parameters that do not apply to a strategy are null. `normalize` is
# the input normalisation the trial's weights were used with (its weight source's, or the config's).
TRIALS_SCHEMA = pa.schema(
    [("search", _str), ("trial_id", _str), ("optuna_number", _i64), ("status", _str)]
    + [(p, _PARAM_TYPES[p]) for p in PARAMS]
    + [("best_epoch", _i64)]
    + [(best(c), _f64) for c in VAL_METRICS]
    + [(last(c), _f64) for c in VAL_METRICS]
    + [("epochs_run", _i64), ("max_epochs", _i64)]
    + _RAN
)


# One row per run of an evaluation: a configuration retrained on one fold of one repeat's
# partition (split "cv") or on every non-test row and scored on the test split (split "test",
# fold and repeat null), with one seed, for a fixed number of epochs. Metrics are those of the
# last epoch on the scored rows.
RUNS_SCHEMA = pa.schema(
    [
        ("search", _str),
        ("run_id", _str),
        ("config_id", _str),
        ("rank", _i64),
        ("split", _str),
        ("trial_id", _str),
        ("status", _str),
    ]
    + [(p, _PARAM_TYPES[p]) for p in PARAMS]
    + [(REPEAT, _i64), (TRAIN_SEED, _i64)]
    + [("epochs", _i64), ("source_trial_id", _str), ("source_optuna_number", _i64), ("search_score", _f64)]
    + [(m, _f64) for m in METRICS]
    + [("n_train", _i64), ("n_scored", _i64), ("train_seconds", _f64)]
    + _RAN
)

# One row per scored image per run: every metric of an evaluation is recomputed from these.
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("search", _str),
        ("run_id", _str),
        ("config_id", _str),
        ("split", _str),
        ("repeat", _i64),
        ("fold", _i64),
        ("seed", _i64),
        ("row", _i64),
        ("image", _str),
        ("group", _str),
        ("label", _i64),
        ("prob_positive", _f64),
    ]
)

# What a trial reports besides its epoch's columns: stored once per trial in trials.parquet
# (`epochs_planned` as max_epochs). Anything else a trial reports is an error (see search.engine.callbacks).
TRIAL_REPORT_KEYS = ("epochs_planned", "weights_id", "normalize", "dataset_fingerprint")
# ... and, in an evaluation, on its last epoch: the scored rows and their P(positive).
PREDICTION_REPORT_KEYS = ("scored_rows", "scored_probabilities", "n_train")


@dataclass(frozen=True)
class Table:
    """A Parquet file of the store: its schema and the columns whose values identify a row."""

    schema: pa.Schema
    key: tuple[str, ...]


SEARCH_TABLES = {
    EPOCHS_FILE: Table(EPOCHS_SCHEMA, ("trial_id", "epoch")),
    TRIALS_FILE: Table(TRIALS_SCHEMA, ("trial_id",)),
}
EVALUATION_TABLES = {
    EPOCHS_FILE: Table(EPOCHS_SCHEMA, ("trial_id", "epoch")),
    RUNS_FILE: Table(RUNS_SCHEMA, ("run_id",)),
    PREDICTIONS_FILE: Table(PREDICTIONS_SCHEMA, ("run_id", "row")),
}


class ResultsWriteError(UserError):
    """A results file could not be written (disk full, read-only, no permission). The rows
    written before stay readable; the message names the file and the OS error. Exit code 1:
    the search ran and stopped, its input was fine."""

    exit_code = 1

    def __init__(self, path: str, exc: OSError, folder: str | Path | None = None):
        self.path, self.errno = path, exc.errno
        reason = f"[Errno {exc.errno}] {os.strerror(exc.errno)}" if exc.errno else str(exc).splitlines()[0]
        folder = folder if folder is not None else Path(path).parent  # the search or evaluation folder
        super().__init__(
            f"{path}: cannot write ({reason}); free space or fix the permissions, then continue "
            f"with `fundus-search resume {folder}`"
        )


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or an s3:// URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


class ResultsStore:
    """Collects the rows of one search or evaluation and keeps its Parquet files current.

    Args:
        uri: the results folder (local or s3://).
        search: the search (or evaluation) name written in every row.
        tables: file name -> Table; SEARCH_TABLES or EVALUATION_TABLES.
        metadata: provenance for the Parquet key-value metadata (config, versions, ...).
        log_path: the local JSON-lines row log; default `<uri>/.rows.jsonl` for local folders.
        flush_seconds: rewrite the Parquet files at most this often (and at `close`).
    """

    def __init__(
        self,
        uri: str,
        *,
        search: str,
        tables: dict[str, Table] = SEARCH_TABLES,
        metadata: dict[str, str] | None = None,
        log_path: Path | None = None,
        flush_seconds: float = 30.0,
    ):
        self.fs, self.root = filesystem(uri)
        self.fs.create_dir(self.root, recursive=True)
        self.search, self.tables = search, tables
        self.metadata = {f"fundus_search.{k}": v for k, v in (metadata or {}).items()}
        self.flush_seconds = flush_seconds
        if log_path is None:
            if "://" in uri:
                raise ValueError("results: a remote store needs a local log_path")
            log_path = Path(self.root) / ROW_LOG
        self.log_path = Path(log_path)
        # file -> first key value (e.g. a trial id) -> rest of the key -> row: a trial's rows in one look-up
        self._rows = _replay(self.fs, self.root, self.log_path, tables)
        self._last_flush = 0.0
        try:
            self._log = open_append(self.log_path)
        except OSError as exc:  # e.g. a symlink planted at the log's name
            raise ResultsWriteError(str(self.log_path), exc, self.log_path.parent) from exc

    def _keep(self, name: str, row: dict) -> None:
        _keep(self._rows, self.tables, name, row)

    def rows(self, name: str, first_key) -> list[dict]:
        """The rows of table `name` whose first key column is `first_key` (e.g. one trial's epochs)."""
        return list(self._rows[name].get(first_key, {}).values())

    def put(self, name: str, row: dict) -> None:
        """Add a row, or replace the row with the same key.

        Raises:
            ValueError: `name` is not a table of this store, the row names a column its schema
                does not have (a misspelt key would otherwise be dropped and leave a null), or
                it lacks a key column.
        """
        table = self.tables.get(name)
        if table is None:
            raise ValueError(f"{name}: not a table of this store ({', '.join(self.tables)})")
        unknown = sorted(row.keys() - set(table.schema.names))
        if unknown:
            raise ValueError(f"{name}: no column {unknown}; add it to the table's schema in results/store.py")
        missing = [k for k in table.key if row.get(k) is None]
        if missing:
            raise ValueError(f"{name}: a row without its key column(s) {missing}")
        row = {"search": self.search, **row}
        self._keep(name, row)
        try:
            self._log.write(json.dumps([name, row]) + "\n")
            self._log.flush()
        except OSError as exc:  # a cut line is skipped on replay (see _replay)
            raise ResultsWriteError(str(self.log_path), exc, self.log_path.parent) from exc
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Rewrite every Parquet file from all its rows, in key order (atomic rename)."""
        for name, table in self.tables.items():
            rows = [row for first in sorted(self._rows[name]) for _, row in sorted(self._rows[name][first].items())]
            self._write(name, table.schema, rows)
        self._last_flush = time.monotonic()

    def _write(self, name: str, schema: pa.Schema, rows: list[dict]) -> None:
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
        table = pa.table(columns, schema=schema).replace_schema_metadata(self.metadata)
        final, tmp = f"{self.root}/{name}", f"{self.root}/.{name}.{os.getpid()}.tmp"
        if isinstance(self.fs, pafs.LocalFileSystem):
            try:
                sink = pa.BufferOutputStream()
                pq.write_table(table, sink)
                write_atomic(final, sink.getvalue().to_pybytes())
            except OSError as exc:
                raise ResultsWriteError(final, exc, self.log_path.parent) from exc
            return
        try:
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(table, out)
            self.fs.move(tmp, final)
        except OSError as exc:  # the previous file stays whole: only the temporary one is lost
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise ResultsWriteError(final, exc, self.log_path.parent) from exc

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with contextlib.suppress(OSError):
                self._log.close()


def _keep(rows: dict[str, dict], tables: dict[str, Table], name: str, row: dict) -> None:
    first, *rest = (row[k] for k in tables[name].key)
    rows[name].setdefault(first, {})[tuple(rest)] = row


def _replay(fs: pafs.FileSystem, root: str, log_path: Path, tables: dict[str, Table]) -> dict[str, dict]:
    """Rows from the Parquet files, then from the log (newer), keyed as the store keeps them."""
    rows: dict[str, dict] = {name: {} for name in tables}
    for name in tables:
        path = f"{root}/{name}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            for row in pq.read_table(path, filesystem=fs).to_pylist():
                _keep(rows, tables, name, row)
    if log_path.is_file():
        for line in log_path.read_text(encoding="utf-8").splitlines():
            try:
                name, row = json.loads(line)
            except (json.JSONDecodeError, ValueError):  # a line cut short by a killed driver
                continue
            if name in tables:
                _keep(rows, tables, name, row)
    return rows


def current_table(folder: str | Path, name: str, tables: dict[str, Table]) -> pa.Table:
    """Table `name` of a local results folder as it stands now: its Parquet file plus the rows
    only the log holds yet (the Parquet files lag by up to 30 s, and a killed driver's last rows
    are only in the log). Reads; writes nothing."""
    fs, root = filesystem(str(folder))
    rows = _replay(fs, root, Path(root) / ROW_LOG, {name: tables[name]})[name]
    ordered = [row for first in sorted(rows) for _, row in sorted(rows[first].items())]
    schema = tables[name].schema
    return pa.table({f.name: [r.get(f.name) for r in ordered] for f in schema}, schema=schema)
