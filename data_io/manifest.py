"""Dataset manifests: which files, which labels, which groups, checked before any compute."""

from __future__ import annotations

import ast
import csv
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fundus_search.data_io.cgi_hrdc import CGI_HRDC_CLASSES, CGI_HRDC_TASKS, GROUNDTRUTHS, IMAGES
from fundus_search.data_io.spec import DataSpec
from fundus_search.data_io.synthetic import ensure_synthetic_dataset
from fundus_search.vocabulary import UserError

MAX_LISTED_BAD_FILES = 20


class ManifestError(UserError):
    """The dataset cannot be read as configured; the message says what to fix."""


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


class BadFilesError(ManifestError):
    """Some files are unusable; all of them are listed (up to MAX_LISTED_BAD_FILES)."""

    def __init__(self, bad: list[BadFile]):
        self.bad = bad
        listed = "; ".join(f"{b.path} ({b.reason})" for b in bad[:MAX_LISTED_BAD_FILES])
        more = f"; and {len(bad) - MAX_LISTED_BAD_FILES} more" if len(bad) > MAX_LISTED_BAD_FILES else ""
        super().__init__(
            f"data: {len(bad)} bad file(s): {listed}{more}; fix or remove them, or set data.skip_bad: true"
        )


@dataclass
class Manifest:
    """Rows of (path relative to root, label index, group) plus what was excluded."""

    root: Path
    classes: tuple[str, ...]
    paths: list[str]
    labels: np.ndarray  # (N,) int64
    groups: list[str]
    excluded: list[BadFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def absolute(self, i: int) -> Path:
        return self.root / self.paths[i]

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts, strict=True)}

    def without(self, bad: list[BadFile]) -> Manifest:
        """A copy without the given files, which are recorded as excluded."""
        drop = {b.path for b in bad}
        keep = [i for i, p in enumerate(self.paths) if p not in drop]
        return Manifest(
            root=self.root,
            classes=self.classes,
            paths=[self.paths[i] for i in keep],
            labels=self.labels[keep],
            groups=[self.groups[i] for i in keep],
            excluded=self.excluded + list(bad),
        )


# A row as a source parses it: relative path, label index (None when unknown), why it is
# bad (None when fine), group (None: the file name).
_Row = tuple[str, "int | None", "str | None", "str | None"]


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise ManifestError(f"data.csv: no such file {path}; fix the path")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in required if c not in columns]
            if missing:
                raise ManifestError(f"data.csv: {path} lacks column(s) {missing} (has {columns}); add them")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"data.csv: {path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x}); save it as UTF-8"
        ) from None
    except csv.Error as exc:
        raise ManifestError(f"data.csv: {path} is not a readable CSV ({exc})") from None


def _cgi_hrdc_rows(spec: DataSpec) -> tuple[Path, tuple[str, ...], list[_Row]]:
    folder, label_file, column = CGI_HRDC_TASKS[spec.task]
    task_root = spec.root / folder
    image_dir = task_root.joinpath(*IMAGES)
    if not image_dir.is_dir():
        raise ManifestError(f"data.root: no folder {image_dir}; point data.root at the folder holding '{folder}/'")
    if not any(image_dir.iterdir()):
        raise ManifestError(f"data.root: no images in {image_dir}; put the training PNGs there")
    rows: list[_Row] = []
    for row in _read_csv(task_root / GROUNDTRUTHS / label_file, ("Image", column)):
        name = row["Image"] if Path(row["Image"]).suffix else row["Image"] + ".png"
        label = {"0": 0, "1": 1}.get(row[column])
        reason = None if label is not None else f"unknown label {row[column]!r}, expected 0 or 1"
        rows.append((str(Path(*IMAGES, name)), label, reason, None))
    return task_root, CGI_HRDC_CLASSES[spec.task], rows


def _flair_csv_rows(spec: DataSpec) -> tuple[Path, tuple[str, ...], list[_Row]]:
    classes = spec.classes
    rows: list[_Row] = []
    for row in _read_csv(spec.csv, ("image", "categories")):
        try:
            categories = ast.literal_eval(row["categories"])
        except (ValueError, SyntaxError):
            categories = None
        if not isinstance(categories, (list, tuple)) or len(categories) != 1:
            rows.append((row["image"], None, f"categories {row['categories']!r} is not a one-item list", None))
        elif categories[0] not in classes:
            rows.append((row["image"], None, f"unknown label {categories[0]!r}, expected one of {list(classes)}", None))
        else:
            rows.append((row["image"], classes.index(categories[0]), None, None))
    return spec.root, classes, rows


def _generic_csv_rows(spec: DataSpec) -> tuple[Path, tuple[str, ...], list[_Row]]:
    classes = spec.classes
    rows: list[_Row] = []
    for row in _read_csv(spec.csv, ("path", "label")):
        raw = row["label"]
        if raw in classes:
            label = classes.index(raw)
        elif raw.isdigit() and int(raw) < len(classes):
            label = int(raw)
        else:
            label = None
        reason = None if label is not None else f"unknown label {raw!r}, expected one of {list(classes)} or an index"
        rows.append((row["path"], label, reason, row.get("group") or None))
    return spec.root, classes, rows


def _synthetic_rows(spec: DataSpec) -> tuple[Path, tuple[str, ...], list[_Row]]:
    root = ensure_synthetic_dataset(spec.synthetic, spec.resolved_cache_dir() / "synthetic")
    return _cgi_hrdc_rows(DataSpec(source="cgi-hrdc", root=root, task=2))


# The open set of sources: add one here with a function returning (root, classes, rows).
SOURCES: dict[str, Callable[[DataSpec], tuple[Path, tuple[str, ...], list[_Row]]]] = {
    "cgi-hrdc": _cgi_hrdc_rows,
    "flair-csv": _flair_csv_rows,
    "csv": _generic_csv_rows,
    "synthetic": _synthetic_rows,
}


_LINKED_OUT = "under a symlink that leads outside data.root: "


def _file_problem(root: Path, relpath: str) -> str | None:
    full = (root / relpath).resolve()
    if not full.is_relative_to(root.resolve()):
        link = _escaping_link(root, relpath)
        return _LINKED_OUT + link if link else "path escapes data.root"
    if not full.is_file():
        return "no such file"
    if full.stat().st_size == 0:
        return "empty file"
    return None


def _escaping_link(root: Path, relpath: str) -> str | None:
    """The first symlink on `relpath` that leads outside `root`, as `link -> target`. Links that
    stay inside the root are followed like folders."""
    inside, here = root.resolve(), root
    for part in Path(relpath).parts:
        here = here / part
        if here.is_symlink() and not here.resolve().is_relative_to(inside):
            return f"{here.relative_to(root)} -> {os.readlink(here)}"
    return None


def _linked_out_error(bad: list[BadFile]) -> ManifestError | None:
    """One line per symlink that leads files outside the root, not one entry per file."""
    links = Counter(b.reason.removeprefix(_LINKED_OUT) for b in bad if b.reason.startswith(_LINKED_OUT))
    if not links:
        return None
    lines = "\n".join(f"  {link}  ({n} files)" for link, n in links.items())
    return ManifestError(
        f"data.root: {sum(links.values())} listed files lie under symlinks that lead outside it, which "
        f"are not followed:\n{lines}\nset data.root to the folder they lead to, or copy the files under data.root"
    )


def build_manifest(spec: DataSpec) -> Manifest:
    """Read the labels of `spec.source` and check every file exists and lies inside the root.

    Decoding is checked later, in the same parallel pass that fills the image cache.

    Raises:
        ManifestError: the root, label file or a column is missing, fewer than two classes
            remain, or there is nothing to read.
        BadFilesError: some rows are bad and `spec.skip_bad` is false.
    """
    if spec.source not in SOURCES:
        raise ManifestError(f"data.source: unknown {spec.source!r}; choose one of {sorted(SOURCES)}")
    if spec.root is not None and not spec.root.is_dir() and spec.source != "synthetic":
        raise ManifestError(f"data.root: no such folder {spec.root}; fix the path")
    root, classes, rows = SOURCES[spec.source](spec)
    if not rows:
        raise ManifestError(f"data: no images listed under {root}; check data.root and the label file")
    paths, labels, groups, bad, seen = [], [], [], [], set()
    for relpath, label, reason, group in rows:
        reason = reason or _file_problem(root, relpath)
        if reason is None and relpath in seen:
            reason = "duplicate path"
        seen.add(relpath)
        if reason:
            bad.append(BadFile(relpath, reason))
            continue
        paths.append(relpath)
        labels.append(label)
        groups.append(group or Path(relpath).name)
    if bad and (not spec.skip_bad or not paths):
        raise _linked_out_error(bad) or BadFilesError(bad)
    manifest = Manifest(root, tuple(classes), paths, np.asarray(labels, dtype=np.int64), groups, bad)
    check_classes(manifest)
    return manifest


def check_classes(manifest: Manifest) -> None:
    """Raise ManifestError unless at least two classes have images."""
    present = [name for name, n in manifest.class_counts().items() if n > 0]
    if len(present) < 2:
        raise ManifestError(
            f"data: only class(es) {present} present in {len(manifest)} images; "
            f"a classifier needs at least two classes of {list(manifest.classes)}"
        )
