"""`fundus-search export`: a model bundle in a format for other runtimes (ONNX)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(commands: argparse._SubParsersAction) -> None:
    export = commands.add_parser("export", help="export a model bundle (ONNX), checked against PyTorch")
    export.add_argument("bundle", type=Path, help="a model bundle folder")
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--output", "-o", type=Path, help="the file (default: model.onnx in the bundle)")
    export.set_defaults(handler=export_command)


def export_command(args: argparse.Namespace) -> int:
    from fundus_search.models.bundle import load_bundle
    from fundus_search.models.export import ONNX_FILE, export_onnx

    bundle = load_bundle(args.bundle)
    output = args.output or bundle.path / ONNX_FILE
    difference = export_onnx(bundle, output)
    print(f"onnx:  {output.absolute()}  (uint8 RGB (batch, {bundle.preprocessing.image_size}, "
          f"{bundle.preprocessing.image_size}, 3) in, P(positive) out)")  # fmt: skip
    print(f"check: onnxruntime vs PyTorch on 4 images, max |P difference| {difference:.1e}")
    return 0
