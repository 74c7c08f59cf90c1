"""The Parquet results store: `trials.parquet` and `epochs.parquet` of one search, with a fixed schema.

Rows arrive one at a time. Each is appended at once to a JSON-lines log (cheap, survives a
killed driver) and the Parquet files are rewritten from all rows at most every
`flush_seconds` and at the end, atomically (temporary file, then rename). Rows are keyed by
(trial_id, epoch) and trial_id: a replayed or re-reported row replaces its predecessor, so a
resumed search never duplicates one. Works on local paths and s3:// through pyarrow filesystems.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

log = logging.getLogger(__name__)

TRIALS_FILE, EPOCHS_FILE = "trials.parquet", "epochs.parquet"
METRICS = ("kappa", "f1", "specificity", "average", "auc", "accuracy", "sensitivity")
VAL_COLUMNS = tuple(f"val_{m}" for m in METRICS)

_f64, _i64, _str = pa.float64(), pa.int64(), pa.string()

# One row per report (epoch). lp_val_* is set on the first main-phase epoch of lp_ft only.
EPOCHS_SCHEMA = pa.schema(
    [("search", _str), ("trial_id", _str), ("epoch", _i64), ("phase", _str), ("train_loss", _f64)]
    + [(c, _f64) for c in VAL_COLUMNS]
    + [(f"lp_{c}", _f64) for c in VAL_COLUMNS]
    + [("epoch_seconds", _f64), ("images_per_second", _f64), ("time_total_s", _f64), ("timestamp", _f64),
       ("node", _str)]
)

# One row per trial. Space parameters that do not apply to a strategy are null.
TRIALS_SCHEMA = pa.schema(
    [("search", _str), ("trial_id", _str), ("optuna_number", _i64), ("status", _str),
     ("init", _str), ("strategy", _str), ("lp_lr", _f64), ("ft_lr", _f64), ("lp_epochs", _i64),
     ("weight_decay", _f64), ("batch_size", _i64), ("seed", _i64), ("fold", _i64)]
    + [("best_epoch", _i64)] + [(f"best_{c}", _f64) for c in VAL_COLUMNS]
    + [(f"last_{c}", _f64) for c in VAL_COLUMNS]
    + [("epochs_run", _i64), ("max_epochs", _i64), ("wall_seconds", _f64), ("cpus", _f64), ("gpus", _f64),
       ("node", _str), ("error", _str), ("weights_id", _str), ("dataset_fingerprint", _str)]
)

STATUSES = ("completed", "stopped_early", "error", "running")


class ResultsWriteError(RuntimeError):
    """A results file could not be written (disk full, read-only, no permission). The rows
    written before stay readable; the message names the file and the OS error."""

    def __init__(self, path: str, exc: OSError):
        self.path, self.errno = path, exc.errno
        reason = f"[Errno {exc.errno}] {os.strerror(exc.errno)}" if exc.errno else str(exc).splitlines()[0]
        super().__init__(f"{path}: cannot write ({reason}); free space or fix the permissions, then continue "
                         "with `fundus-search resume`")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local folder or an s3:// URI."""
    if "://" in uri:
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), str(Path(uri).absolute())


class ResultsStore:
    """Collects epoch and trial rows of one search and keeps its Parquet files current.

    Args:
        uri: the search's results folder (local or s3://).
        search: the search name written in every row.
        metadata: provenance for the Parquet key-value metadata (config, versions, ...).
        log_path: the local JSON-lines row log; default `<uri>/.rows.jsonl` for local folders.
        flush_seconds: rewrite the Parquet files at most this often (and at `close`).
    """

    def __init__(self, uri: str, *, search: str, metadata: dict[str, str] | None = None,
                 log_path: Path | None = None, flush_seconds: float = 30.0):
        self.fs, self.root = filesystem(uri)
        self.fs.create_dir(self.root, recursive=True)
        self.search = search
        self.metadata = {f"fundus_search.{k}": v for k, v in (metadata or {}).items()}
        self.flush_seconds = flush_seconds
        if log_path is None:
            if "://" in uri:
                raise ValueError("results: a remote store needs a local log_path")
            log_path = Path(self.root) / ".rows.jsonl"
        self.log_path = Path(log_path)
        self.epochs: dict[str, dict[int, dict]] = {}  # trial_id -> epoch -> row
        self.trials: dict[str, dict] = {}
        self._last_flush = 0.0
        self._replay()
        self._log = open(self.log_path, "a", encoding="utf-8")

    def _replay(self) -> None:
        """Load rows from the Parquet files and the log, so a resumed search continues them."""
        for name, schema in ((EPOCHS_FILE, EPOCHS_SCHEMA), (TRIALS_FILE, TRIALS_SCHEMA)):
            path = f"{self.root}/{name}"
            if self.fs.get_file_info(path).type == pafs.FileType.File:
                for row in pq.read_table(path, filesystem=self.fs).to_pylist():
                    self._keep(name, row)
        if self.log_path.exists():
            for line in self.log_path.read_text(encoding="utf-8").splitlines():
                try:
                    kind, row = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a killed driver
                    continue
                self._keep(kind, row)

    def _keep(self, kind: str, row: dict) -> None:
        if kind == EPOCHS_FILE:
            self.epochs.setdefault(row["trial_id"], {})[int(row["epoch"])] = row
        else:
            self.trials[row["trial_id"]] = row

    def add_epoch(self, row: dict) -> None:
        self._add(EPOCHS_FILE, row)

    def put_trial(self, row: dict) -> None:
        self._add(TRIALS_FILE, row)

    def _add(self, kind: str, row: dict) -> None:
        row = {"search": self.search, **row}
        self._keep(kind, row)
        try:
            self._log.write(json.dumps([kind, row]) + "\n")
            self._log.flush()
        except OSError as exc:  # a cut line is skipped on replay (see _replay)
            raise ResultsWriteError(str(self.log_path), exc) from exc
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Rewrite both Parquet files from every row (atomic rename)."""
        epochs = [self.epochs[t][e] for t in sorted(self.epochs) for e in sorted(self.epochs[t])]
        self._write(EPOCHS_FILE, EPOCHS_SCHEMA, epochs)
        self._write(TRIALS_FILE, TRIALS_SCHEMA, sorted(self.trials.values(), key=lambda r: r["trial_id"]))
        self._last_flush = time.monotonic()

    def _write(self, name: str, schema: pa.Schema, rows: list[dict]) -> None:
        columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
        table = pa.table(columns, schema=schema).replace_schema_metadata(self.metadata)
        final, tmp = f"{self.root}/{name}", f"{self.root}/.{name}.{os.getpid()}.tmp"
        try:
            with self.fs.open_output_stream(tmp) as out:
                pq.write_table(table, out)
            self.fs.move(tmp, final)
        except OSError as exc:  # the previous file stays whole: only the temporary one is lost
            with contextlib.suppress(OSError):
                self.fs.delete_file(tmp)
            raise ResultsWriteError(final, exc) from exc

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with contextlib.suppress(OSError):
                self._log.close()
