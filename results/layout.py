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
from dataclasses import dataclass, field
from pathlib import Path

from fundus_search.vocabulary import EVALUATION_DIR, EVALUATION_FILE, SEARCH_FILE, UserError


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
class SearchFolder:
    """One search's folder and its `search.json`.

    Attributes:
        path: the folder (absolute).
        name: the search's name (its Optuna study is named so).
        num_samples: trials planned.
        remote: an `s3://` results location when Ray's experiment and the Parquet files live
            there; None when this folder holds everything.
        study: what `fundus-search study` runs after the search (the evaluation request and its
            folder name), or None for a plain `run`: `resume` finishes it.
    """

    path: Path
    name: str
    num_samples: int
    remote: str | None = None
    study: dict | None = None

    @classmethod
    def open(cls, path: str | Path) -> SearchFolder:
        path = Path(path).absolute()
        meta = _read_json(
            path / SEARCH_FILE,
            f"{path}: not a search folder (no {SEARCH_FILE}); pass the folder `fundus-search run` printed",
        )
        results = meta.get("results")
        # s3:// is the one remote storage a config can name; any other URL (file://...) would be
        # a way for a crafted search.json to point `resume` at someone else's files
        remote = results if isinstance(results, str) and results.startswith("s3://") else None
        return cls(
            path=path,
            name=str(meta.get("name", path.name)),
            num_samples=int(meta.get("num_samples", 0)),
            remote=remote,
            study=meta.get("study"),
        )

    @property
    def results(self) -> str:
        """Where Ray's experiment and the Parquet files are: this folder, or the remote location."""
        return self.remote or str(self.path)

    def write(self) -> None:
        meta = {"name": self.name, "num_samples": self.num_samples, "results": self.remote, "study": self.study}
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
