"""A bundle's network as ONNX, for runtimes without PyTorch: uint8 RGB images in, P(positive) out,
checked against PyTorch before it is kept."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fundus_search.data_io import to_float
from fundus_search.models.bundle import Bundle
from fundus_search.vocabulary import UserError

TOLERANCE = 1e-4  # max |P(positive)| difference between onnxruntime and PyTorch
ONNX_FILE = "model.onnx"


class ExportError(UserError):
    """An export cannot be made or does not reproduce the bundle; the message says which."""


class _Probability(nn.Module):
    """(B, S, S, 3) uint8 RGB, preprocessed as the bundle says -> (B,) P(positive)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.classifier(to_float(image)), dim=1)[:, 1]


def export_onnx(bundle: Bundle, output: str | Path, *, samples: int = 4, seed: int = 0) -> float:
    """Write `output` with torch.export's ONNX exporter (`dynamo=True`, a dynamic batch), then
    score `samples` random images with onnxruntime and with PyTorch.

    Returns:
        the largest difference in P(positive).

    Raises:
        ExportError: the ONNX packages are missing, or onnxruntime differs by more than
            TOLERANCE (the file is then removed).
    """
    try:
        import onnxruntime
        import onnxscript  # noqa: F401 (the exporter's own dependency)
    except ImportError as exc:
        raise ExportError(
            f"export --format onnx: needs onnx, onnxruntime and onnxscript ({exc.name} is missing); "
            "pip install 'fundus-search[export]'"
        ) from None
    output = Path(output)
    size = bundle.preprocessing.image_size
    model = _Probability(bundle.classifier).eval()
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines say nothing to a user
        logging.getLogger(name).setLevel(logging.WARNING)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter's own progress lines
        program = torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=["image"],
            output_names=["prob_positive"],
            dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            verbose=False,
        )
    program.save(str(tmp))
    images = np.random.default_rng(seed).integers(0, 256, (samples, size, size, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    ours = session.run(None, {"image": images})[0]
    with torch.no_grad():
        reference = model(torch.from_numpy(images)).numpy()
    difference = float(np.abs(ours - reference).max())
    if not difference <= TOLERANCE:
        tmp.unlink()
        raise ExportError(
            f"{output}: onnxruntime differs from PyTorch by {difference:.2g} in P(positive) (> {TOLERANCE}); "
            "not written"
        )
    tmp.replace(output)
    return difference
