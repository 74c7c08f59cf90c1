"""`fundus-search predict`: score image files with a model bundle, by the bundle's own
preprocessing, into a CSV or Parquet file."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path

from fundus_search.search.cli._args import UsageError, number_above

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
log = logging.getLogger(__name__)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="score images with a model bundle (train --output)")
    predict.add_argument("bundle", type=Path, help="a model bundle folder")
    predict.add_argument("inputs", type=Path, nargs="+", help="image files, folders of them, or CSV manifests")
    predict.add_argument("--output", "-o", type=Path, help="a .csv or .parquet file (default: CSV on stdout)")
    predict.add_argument("--batch-size", type=number_above(1, int, inclusive=True), default=32)
    predict.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    predict.set_defaults(handler=predict_command)


def image_paths(inputs: list[Path]) -> list[Path]:
    """Files as given, a folder's images (recursively, sorted), a CSV's `path` or `image` column
    (or its first), relative to the CSV's folder."""
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif item.suffix.lower() == ".csv" and item.is_file():
            with item.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if not rows:
                raise UsageError(f"{item}: no rows; list one image per row under a `path` column")
            column = next((c for c in ("path", "image", "Image", "file") if c in rows[0]), next(iter(rows[0])))
            paths += [Path(p) if Path(p).is_absolute() else item.parent / p for p in (r[column] for r in rows)]
        elif item.exists():
            paths.append(item)
        else:
            raise UsageError(f"{item}: no such file or folder")
    if not paths:
        raise UsageError(f"{', '.join(map(str, inputs))}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def predict_command(args: argparse.Namespace) -> int:
    import numpy as np
    import pandas as pd

    from fundus_search.data_io import preprocess_file
    from fundus_search.models.bundle import load_bundle
    from fundus_search.progress import Progress
    from fundus_search.results.layout import write_atomic

    if args.output is not None and args.output.suffix.lower() not in (".csv", ".parquet"):
        raise UsageError(f"--output: {args.output} is neither .csv nor .parquet; name the file by its format")
    bundle = load_bundle(args.bundle)
    paths = image_paths(args.inputs)
    rows, skipped = [], 0
    progress = Progress(len(paths), "predict")
    for start in range(0, len(paths), args.batch_size):
        batch, names = [], []
        for path in paths[start : start + args.batch_size]:
            try:
                batch.append(preprocess_file(path, bundle.preprocessing))
                names.append(path)
            except (OSError, ValueError) as exc:  # Pillow's errors for a file that does not decode
                skipped += 1
                print(f"error: {path}: does not decode ({type(exc).__name__}: {exc}); skipped", file=sys.stderr)
        if batch:
            probs = bundle.prob_positive(np.stack(batch), device=args.device)
            threshold = bundle.meta["decision"]["threshold"]
            rows += [
                {"path": str(p), "prob_positive": float(q), "class": bundle.classes[int(q >= threshold)]}
                for p, q in zip(names, probs, strict=True)
            ]
        progress.update(min(args.batch_size, len(paths) - start))
    progress.close()
    table = pd.DataFrame(rows, columns=["path", "prob_positive", "class"])
    if args.output is None:
        sys.stdout.write(table.to_csv(index=False))
    else:  # whole or not at all
        data = table.to_csv(index=False) if args.output.suffix.lower() == ".csv" else _parquet_bytes(table)
        try:
            write_atomic(args.output, data)
        except OSError as exc:
            raise UsageError(f"--output: cannot write {args.output} ({exc.strerror or exc})") from None
    where = f" into {args.output}" if args.output else ""
    print(f"scored {len(rows)} of {len(paths)} images{where}; {skipped} skipped", file=sys.stderr)
    return 1 if skipped else 0


def _parquet_bytes(table) -> bytes:
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    return buffer.getvalue()
