"""Score a CGI-HRDC submission zip the way the challenge does: its `model.py` runs in an
interpreter of its own (challenge_harness.py), one `predict(cv2.imread(path, 1))` per labelled
image; the challenge's metrics come from those classes, beside the CPU seconds each took.

Scoring a submission runs its code: score only zips you trust, as the challenge's own servers do.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from fundus_search.metrics import decision_metrics
from fundus_search.vocabulary import EVALUATION_FILE, TEST, UserError

HARNESS = Path(__file__).with_name("challenge_harness.py")
MAX_UNPACKED_BYTES = 8 << 30  # a submission holds one network; more is a zip bomb
log = logging.getLogger(__name__)


class SubmissionError(UserError):
    """The zip or the labelled images cannot be scored; the message says which and why."""


@dataclass(frozen=True)
class SubmissionScore:
    """What scoring found.

    Attributes:
        rows: one per image: path, label, predicted (NaN when it failed), error, cpu_seconds, wall_seconds.
        metrics: the challenge's metrics on the images that got a class (fundus_search.metrics).
        load_cpu_seconds: CPU seconds of import and `load`.
    """

    rows: pd.DataFrame
    metrics: dict[str, float]
    load_cpu_seconds: float

    @property
    def failed(self) -> pd.DataFrame:
        return self.rows[self.rows["error"].notna()]


def labelled_images(data: Path, *, task: int) -> tuple[list[Path], np.ndarray]:
    """The images and 0/1 labels of `data`: an evaluation folder (its held-out test split), a
    folder in the CGI-HRDC layout (`task` 1 or 2), or a CSV with `path` (or `image`) and `label`
    (0 or 1) columns, paths relative to the CSV's folder.

    Raises:
        SubmissionError, ManifestError: no such data, a missing column, a label that is not 0 or 1.
    """
    if (data / EVALUATION_FILE).is_file():
        return _test_split(data)
    if data.is_dir():
        from fundus_search.data_io import DataSpec, build_manifest

        manifest = build_manifest(DataSpec(source="cgi-hrdc", root=data.absolute(), task=task))
        return [manifest.absolute(i) for i in range(len(manifest))], manifest.labels
    if data.suffix.lower() != ".csv" or not data.is_file():
        raise SubmissionError(f"{data}: neither a CGI-HRDC data folder nor a CSV of path,label rows")
    try:
        with data.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise SubmissionError(f"{data}: cannot read it as a CSV ({exc})") from None
    column = next((c for c in ("path", "image") if rows and c in rows[0]), None)
    if column is None or "label" not in rows[0]:
        raise SubmissionError(f"{data}: needs a `path` (or `image`) and a `label` column, and at least one row")
    paths, labels = [], []
    for number, row in enumerate(rows, start=2):
        if row["label"].strip() not in ("0", "1"):
            raise SubmissionError(f"{data}: line {number}: label {row['label']!r}; expected 0 or 1")
        path = Path(row[column])
        paths.append(path if path.is_absolute() else data.parent / path)
        labels.append(int(row["label"]))
    return paths, np.asarray(labels, dtype=np.int64)


def _test_split(folder: Path) -> tuple[list[Path], np.ndarray]:
    """The test-split images of an evaluation, as its predictions name them, under its search's data root."""
    from fundus_search.data_io import build_manifest
    from fundus_search.results.answer import load_evaluation
    from fundus_search.results.layout import EvaluationFolder
    from fundus_search.search.study.config import load_config

    evaluation = EvaluationFolder.open(folder)
    _, predictions = load_evaluation(evaluation.path)
    test = predictions[predictions["split"] == TEST].drop_duplicates("row").sort_values("row")
    if test.empty:
        raise SubmissionError(f"{folder}: this evaluation scored no test split (data.test_fraction is 0)")
    root = build_manifest(load_config(evaluation.search.config_file).data.to_spec()).root
    return [root / image for image in test["image"]], test["label"].to_numpy(dtype=np.int64)


def unpack(archive: Path, into: Path) -> Path:
    """Extract a submission zip into `into`, refusing what could write outside it (absolute
    names, `..`, links) or fill the disk; returns the folder that holds model.py.

    Raises:
        SubmissionError: not a zip, an unsafe member, too large, or no model.py.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (OSError, zipfile.BadZipFile) as exc:
        raise SubmissionError(f"{archive}: not a readable zip ({exc})") from None
    with zf:
        members = zf.infolist()
        for member in members:
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or "\\" in member.filename:
                raise SubmissionError(f"{archive}: member {member.filename!r} would land outside the submission")
            if stat.S_ISLNK(member.external_attr >> 16):
                raise SubmissionError(f"{archive}: member {member.filename!r} is a link; a submission holds files")
        if sum(m.file_size for m in members) > MAX_UNPACKED_BYTES:
            raise SubmissionError(f"{archive}: unpacks to more than {MAX_UNPACKED_BYTES >> 30} GiB")
        models = sorted((m.filename for m in members if PurePosixPath(m.filename).name == "model.py"), key=len)
        if not models:
            raise SubmissionError(f"{archive}: no model.py; the challenge imports model.py from the zip")
        zf.extractall(into)
    return into / PurePosixPath(models[0]).parent


def score_submission(
    archive: Path, paths: list[Path], labels: np.ndarray, *, progress: Callable[[int], None] | None = None
) -> SubmissionScore:
    """Unpack `archive`, run its model.py on every image in a child interpreter (`python -I`:
    no user site, no PYTHONPATH), and score its classes against `labels`.

    Args:
        progress: called with the number of images done so far, now and then.

    Raises:
        SubmissionError: the zip is unusable, or its model.py does not import or load.
    """
    if importlib.util.find_spec("cv2") is None:
        raise SubmissionError("score-submission: needs OpenCV (cv2), as the challenge does; "
                              "pip install 'fundus-search[export]'")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="fundus-search-submission-") as tmp:
        folder = unpack(archive, Path(tmp) / "submission")
        images, results, errors = Path(tmp) / "images.json", Path(tmp) / "results.jsonl", Path(tmp) / "stderr.txt"
        images.write_text(json.dumps([str(Path(p).absolute()) for p in paths]), encoding="utf-8")
        with errors.open("w") as stderr:
            child = subprocess.Popen(
                [sys.executable, "-I", str(HARNESS), str(folder), str(images), str(results)],
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
            while child.poll() is None:
                time.sleep(0.5)
                if progress is not None and results.exists():
                    progress(max(0, len(results.read_text(encoding="utf-8").splitlines()) - 1))
        if child.returncode != 0:
            lines = errors.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            reason = lines[-1] if lines else f"exit status {child.returncode}"
            raise SubmissionError(f"{archive}: {reason}")
        lines = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    for row in lines[1:]:
        if "error" not in row and row["predicted"] not in (0, 1):
            row["error"] = f"predict returned {row['predicted']}, not 0 or 1"
        if "error" in row:
            row["predicted"] = None
    columns = ["path", "predicted", "error", "cpu_seconds", "wall_seconds"]
    rows = pd.DataFrame(lines[1:], columns=columns).astype({"predicted": "Int64", "error": object})
    rows.insert(1, "label", np.asarray(labels, dtype=np.int64))
    scored = rows[rows["error"].isna()]
    metrics = decision_metrics(scored["label"].to_numpy(), scored["predicted"].to_numpy()) if len(scored) else {}
    return SubmissionScore(rows, metrics, float(lines[0]["load_cpu_seconds"]))
