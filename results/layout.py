"""The folders a study writes, and the only two ways anything is written into them.

A search folder holds `search.json` (its name, planned trials, and what `study` will do after
it); an evaluation folder, always a folder of its search, holds `evaluation.json` (what was
asked, every planned run). Neither stores a path: a folder knows where it is, so a copied or
moved folder is whole and never points back at its original.

Writes: a whole file is written to a fresh temporary file beside it and renamed into place
(`write_atomic`), so a reader never sees half a file and a symlink planted at the name is
replaced, never followed; a log is appended only to a regular file, never through a symlink
(`open_append`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from fundus_search.vocabulary import (
    COMPARISONS_FILE,
    CONFIG_FILE,
    EPOCHS_FILE,
    EVALUATION_DIR,
    EVALUATION_FILE,
    PREDICTIONS_FILE,
    REPORT_FILE,
    ROW_LOG,
    RUNS_FILE,
    SEARCH_FILE,
    STUDY_FILE,
    TENSORBOARD_DIR,
    TRIALS_FILE,
    UserError,
)


def trial_folder(trial_id: str) -> str:
    """The folder of Ray Tune trial `trial_id` in its search or evaluation folder (short; the
    readable names live in TensorBoard and Parquet)."""
    return f"trial_{trial_id}"


class FolderError(UserError):
    """A path is not the search or evaluation folder it was given as; the message says what to pass."""


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    Raises:
        OSError: the folder cannot be written (the previous file, if any, is left whole).
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def open_append(path: str | Path):
    """A text file opened for appending; created if missing, never followed if a symlink.

    Raises:
        OSError: `path` is a symlink (ELOOP) or cannot be opened.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    return os.fdopen(fd, "a", encoding="utf-8")


@dataclass(frozen=True)
class SearchFacts:
    """What a search fixed when it started, derived from its config (`Config.facts()`) and kept
    in search.json, so that the report and the tables never read the config.

    Attributes:
        metric, mode: what ranks trials (search.metric, search.mode).
        max_epochs: main-phase epochs of a trial (search.max_epochs).
        rungs: ASHA's rung epochs, max_epochs last; () without early stopping (FIFO).
        params: per searched strategy, the hyperparameters its trials carry (`Strategy.params`).
        dataset: what the images are, in words (`CGI-HRDC task 1`).
    """

    metric: str
    mode: str
    max_epochs: int
    rungs: tuple[int, ...]
    params: dict[str, tuple[str, ...]]
    dataset: str

    @classmethod
    def from_json(cls, meta: object, where: Path) -> SearchFacts:
        """Raises FolderError when `meta` is not what fundus-search writes."""
        try:
            facts = cls(
                metric=_checked(meta["metric"], str),
                mode=_checked(meta["mode"], str),
                max_epochs=_checked(meta["max_epochs"], int),
                rungs=tuple(_checked(r, int) for r in meta["rungs"]),
                params={_checked(s, str): tuple(_checked(p, str) for p in ps) for s, ps in meta["params"].items()},
                dataset=_checked(meta["dataset"], str),
            )
        except (KeyError, TypeError, AttributeError, ValueError):
            raise FolderError(f"{where}: its `facts` are not what fundus-search writes; run the search again") from None
        if facts.mode not in ("max", "min") or facts.max_epochs < 1 or list(facts.rungs) != sorted(set(facts.rungs)):
            raise FolderError(f"{where}: its `facts` are not what fundus-search writes; run the search again")
        return facts


def _checked(value, kind: type):
    if not isinstance(value, kind) or isinstance(value, bool):
        raise TypeError(value)
    return value


@dataclass(frozen=True)
class SearchFolder:
    """One search's folder: the handle every command and the report open it through, after
    Optuna's `load_study` -> `Study`. It knows the layout, and checks once that a path is one.

    Attributes:
        path: the folder (absolute): the config, the Optuna study, TensorBoard, the row log.
        name: the search's name (its Optuna study is named so).
        num_samples: trials planned.
        remote: an `s3://` results location when Ray's experiment and the Parquet files live
            there; None when this folder holds everything.
        study: what `fundus-search study` runs after the search (the evaluation request and its
            folder name), or None for a plain `run`: `resume` finishes it.
        facts: what the search fixed when it started; None in folders of older versions.
    """

    path: Path
    name: str
    num_samples: int
    remote: str | None = None
    study: dict | None = None
    facts: SearchFacts | None = None

    @classmethod
    def new(cls, storage: str, name: str, *, scratch: Path, **fields) -> SearchFolder:
        """The folder a new search `name` will write under `storage.path`: there, or, for an
        `s3://` storage, in `scratch` (this machine's cache) beside its remote results."""
        results = f"{storage.rstrip('/')}/{name}"
        if "://" in results:
            return cls(path=Path(scratch).absolute() / "runs" / name, name=name, remote=results, **fields)
        return cls(path=Path(results).absolute(), name=name, **fields)

    @classmethod
    def open(cls, path: str | Path) -> SearchFolder:
        """Raises FolderError: `path` holds no search.json, or one fundus-search did not write."""
        path = Path(path).absolute()
        meta = _read_json(
            path / SEARCH_FILE,
            f"{path}: not a search folder (no {SEARCH_FILE}); pass the folder `fundus-search run` printed",
        )
        results = meta.get("results")
        # s3:// is the one remote storage a config can name; any other URL (file://...) would be
        # a way for a crafted search.json to point `resume` at someone else's files
        remote = results if isinstance(results, str) and results.startswith("s3://") else None
        facts = meta.get("facts")
        return cls(
            path=path,
            name=str(meta.get("name", path.name)),
            num_samples=int(meta.get("num_samples", 0)),
            remote=remote,
            study=meta.get("study"),
            facts=None if facts is None else SearchFacts.from_json(facts, path / SEARCH_FILE),
        )

    @property
    def ranking(self) -> tuple[str, str]:
        """(metric, mode) that rank this search's trials; folders of versions before `facts`
        ranked by the only ones they could: (val_average, max)."""
        return (self.facts.metric, self.facts.mode) if self.facts else ("val_average", "max")

    @property
    def results(self) -> str:
        """Where Ray's experiment and the Parquet files are: this folder, or the remote location."""
        return self.remote or str(self.path)

    def table(self, name: str) -> str:
        """A Parquet file of the search (`trials.parquet`, `epochs.parquet`), where it lives."""
        return f"{self.results}/{name}"

    @property
    def trials_file(self) -> str:
        return self.table(TRIALS_FILE)

    @property
    def epochs_file(self) -> str:
        return self.table(EPOCHS_FILE)

    @property
    def config_file(self) -> Path:
        """The resolved config the search ran with."""
        return self.path / CONFIG_FILE

    @property
    def study_file(self) -> Path:
        """The Optuna study (SQLite)."""
        return self.path / STUDY_FILE

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / TENSORBOARD_DIR

    @property
    def row_log(self) -> Path:
        """The local log of rows not yet in the remote Parquet files (remote storage only)."""
        return self.path / ROW_LOG

    @property
    def report_file(self) -> Path:
        return self.path / REPORT_FILE

    def write(self) -> None:
        meta = {
            "name": self.name,
            "num_samples": self.num_samples,
            "results": self.remote,
            "study": self.study,
            "facts": None if self.facts is None else asdict(self.facts),
        }
        write_atomic(self.path / SEARCH_FILE, json.dumps(meta, indent=2))

    def evaluation(self, name: str = EVALUATION_DIR) -> EvaluationFolder:
        """The evaluation folder `name` of this search.

        Raises:
            FolderError: there is none, or it belongs to another search.
        """
        folder = EvaluationFolder.open(self.path / name)
        if folder.search_name != self.name:
            raise FolderError(
                f"{folder.path}: an evaluation of search {folder.search_name!r}, not of "
                f"{self.name!r}; evaluate this search with `fundus-search evaluate {self.path}`"
            )
        return folder


@dataclass(frozen=True)
class EvaluationFolder:
    """One evaluation's folder (inside its search's) and its `evaluation.json`.

    Attributes:
        planned: every planned run: run_id, config_id, split, repeat, fold, seed (older folders: empty).
        protocol: the declared question and how it is answered, fixed before any run: folds,
            repeats, seeds, test_images, primary (comparisons `lp: flair - imagenet`), rope.
    """

    path: Path
    name: str
    search_name: str
    request: dict
    runs: int
    cpu_ms_per_image: dict = field(default_factory=dict)
    planned: list = field(default_factory=list)
    protocol: dict = field(default_factory=dict)

    @classmethod
    def open(cls, path: str | Path) -> EvaluationFolder:
        path = Path(path).absolute()
        meta = _read_json(
            path / EVALUATION_FILE,
            f"{path}: not an evaluation folder (no {EVALUATION_FILE}); "
            "pass the folder `fundus-search evaluate` printed",
        )
        # older files stored the search's absolute path: only its last part, the name, is used
        search = Path(str(meta.get("search", path.parent.name))).name
        return cls(
            path=path,
            name=str(meta.get("name", path.name)),
            search_name=search,
            request=meta.get("request") or {},
            runs=int(meta.get("runs", 0)),
            cpu_ms_per_image=meta.get("cpu_ms_per_image") or {},
            planned=meta.get("planned") or [],
            protocol=meta.get("protocol") or {},
        )

    @property
    def search(self) -> SearchFolder:
        """The search this evaluation retrains: always the folder it sits in."""
        return SearchFolder.open(self.path.parent)

    @property
    def runs_file(self) -> Path:
        return self.path / RUNS_FILE

    @property
    def predictions_file(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def comparisons_file(self) -> Path:
        return self.path / COMPARISONS_FILE

    @property
    def epochs_file(self) -> Path:
        return self.path / EPOCHS_FILE

    def write(self) -> None:
        meta = {
            "name": self.name,
            "search": self.search_name,
            "request": self.request,
            "runs": self.runs,
            "protocol": self.protocol,
            "cpu_ms_per_image": self.cpu_ms_per_image,
            "planned": self.planned,
        }
        write_atomic(self.path / EVALUATION_FILE, json.dumps(meta, indent=2, default=list))


def _read_json(path: Path, missing: str) -> dict:
    if not path.is_file():
        raise FolderError(missing)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FolderError(f"{path}: unreadable ({exc}); it is not a file fundus-search wrote") from None
    if not isinstance(meta, dict):
        raise FolderError(f"{path}: not a JSON object; it is not a file fundus-search wrote")
    return meta
