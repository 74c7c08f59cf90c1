"""`fundus-search export`: a model bundle in a format for other runtimes (ONNX) or for the
CGI-HRDC challenge (a submission zip), and `score-submission`, which scores such a zip the way
the challenge does."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fundus_search.search.cli._args import UsageError

log = logging.getLogger(__name__)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser(
        "export", help="export a model bundle (ONNX, or a CGI-HRDC submission zip), checked against the bundle"
    )
    export.add_argument("bundle", type=Path, help="a model bundle folder")
    export.add_argument("--format", choices=("onnx", "challenge"), default="onnx")
    export.add_argument(
        "--output", "-o", type=Path, help="the file (default: model.onnx or submission.zip in the bundle)"
    )
    export.set_defaults(handler=export_command)

    score = commands.add_parser(
        "score-submission", help="score a CGI-HRDC submission zip as the challenge does (runs its model.py)"
    )
    score.add_argument("zip", type=Path, help="a submission zip with model.py (export --format challenge)")
    score.add_argument(
        "data", type=Path, help="an evaluation folder (its test split), a CGI-HRDC data folder, or a path,label CSV"
    )
    score.add_argument("--task", type=int, choices=(1, 2), default=2, help="the CGI-HRDC task of a data folder")
    score.add_argument("--output", "-o", type=Path, help="a CSV of each image's class and CPU seconds")
    score.set_defaults(handler=score_submission_command)


def export_command(args: argparse.Namespace) -> int:
    from fundus_search.models.bundle import load_bundle
    from fundus_search.models.export import CHALLENGE_FILE, ONNX_FILE, export_challenge, export_onnx

    bundle = load_bundle(args.bundle)
    size = bundle.preprocessing.image_size
    if args.format == "onnx":
        output = args.output or bundle.path / ONNX_FILE
        difference = export_onnx(bundle, output)
        print(f"onnx:  {output.absolute()}  (uint8 RGB (batch, {size}, {size}, 3) in, P(positive) out)")
        print(f"check: onnxruntime vs PyTorch on 4 images, max |P difference| {difference:.1e}")
        return 0
    output = args.output or bundle.path / CHALLENGE_FILE
    difference = export_challenge(bundle, output)
    print(f"challenge: {output.absolute()}  (model.py: class model, predict(cv2.imread(path, 1)) -> 0 or 1)")
    print(f"check:     model.py on 4 BGR images vs the bundle, max |P difference| {difference:.1e}")
    print(f"score it:  fundus-search score-submission {output} DATA")
    return 0


def score_submission_command(args: argparse.Namespace) -> int:
    from fundus_search.progress import Progress
    from fundus_search.search.evaluate.submission import labelled_images, score_submission

    if not args.zip.is_file():
        raise UsageError(f"{args.zip}: no such file; pass the zip `export --format challenge` wrote")
    if args.output is not None and args.output.suffix.lower() != ".csv":
        raise UsageError(f"--output: {args.output} is not a .csv file")
    paths, labels = labelled_images(args.data, task=args.task)
    with Progress(len(paths), "score-submission") as progress:
        result = score_submission(args.zip, paths, labels, progress=lambda done: progress.update(done - progress.done))
    for row in result.failed.itertuples():
        print(f"error: {row.path}: {row.error}; not scored", file=sys.stderr)
    scored = result.rows[result.rows["error"].isna()]
    if args.output is not None:
        from fundus_search.results.layout import write_atomic

        write_atomic(args.output, result.rows.to_csv(index=False))
    print(f"submission: {args.zip}  (import and load: {result.load_cpu_seconds:.1f} CPU s)")
    print(f"scored:     {len(scored)} of {len(paths)} images of {args.data}")
    if result.metrics:
        m = result.metrics
        main = "  ".join(f"{k} {m[k]:.4f}" for k in ("kappa", "f1", "specificity", "average"))
        print(f"challenge:  {main}  (accuracy {m['accuracy']:.4f}, sensitivity {m['sensitivity']:.4f})")
        print(f"CPU:        {scored['cpu_seconds'].median():.3f} s per image (process time of predict, median; "
              f"mean {scored['cpu_seconds'].mean():.3f}), wall {scored['wall_seconds'].median():.3f} s")  # fmt: skip
    if args.output is not None:
        print(f"per image:  {args.output}")
    return 1 if len(result.failed) else 0
