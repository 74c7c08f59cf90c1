"""A bundle's network for other runtimes, each checked against the bundle before it is kept:

- ONNX, for runtimes without PyTorch: uint8 RGB images in, P(positive) out;
- the CGI-HRDC challenge's submission: a zip of `model.py` (models/challenge/model.py, which
  imports only numpy, torch and OpenCV), the network saved by torch.export, and the
  preprocessing it needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fundus_search.data_io import preprocess_image, to_float
from fundus_search.models.bundle import Bundle
from fundus_search.vocabulary import UserError

TOLERANCE = 1e-4  # max |P(positive)| difference between onnxruntime and PyTorch
CHALLENGE_TOLERANCE = 1e-6  # max |P(positive)| difference between the submission and the bundle
ONNX_FILE, CHALLENGE_FILE = "model.onnx", "submission.zip"
CHALLENGE_MODEL = Path(__file__).with_name("challenge") / "model.py"


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


def export_challenge(bundle: Bundle, output: str | Path, *, samples: int = 4, seed: int = 0) -> float:
    """Write the CGI-HRDC submission zip `output`: `model.py` (class `model`: `load(dir_path)`,
    `predict(cv2.imread(path, 1)) -> 0 or 1`), `model.pt2` (the network by torch.export: uint8 RGB
    (batch, S, S, 3) in, P(positive) out), `preprocessing.json` and a README. Before the zip is
    kept, its model.py scores `samples` random BGR images of assorted sizes and shapes, and must
    give the bundle's P(positive) on the same pixels (by Pillow's preprocessing) within
    CHALLENGE_TOLERANCE.

    Returns:
        the largest difference in P(positive).

    Raises:
        ExportError: OpenCV is missing, or the submission does not reproduce the bundle.
    """
    if importlib.util.find_spec("cv2") is None:
        raise ExportError(
            "export --format challenge: needs OpenCV (cv2) to check the submission; pip install 'fundus-search[export]'"
        )
    output = Path(output)
    with tempfile.TemporaryDirectory(prefix="fundus-search-challenge-") as tmp:
        folder = Path(tmp)
        size = bundle.preprocessing.image_size
        batch = torch.export.Dim("batch")
        program = torch.export.export(
            _Probability(bundle.classifier).eval(),
            (torch.zeros(2, size, size, 3, dtype=torch.uint8),),
            dynamic_shapes={"image": {0: batch}},
        )
        torch.export.save(program, folder / "model.pt2")
        shutil.copyfile(CHALLENGE_MODEL, folder / "model.py")
        decision = bundle.meta["decision"]
        preprocessing = {
            "image_size": size,
            "crop_foreground": bundle.preprocessing.crop_foreground,
            "threshold": decision["threshold"],
            "classes": decision["classes"],
            "input": "BGR uint8 (H, W, 3), as cv2.imread(path, 1) returns it; model.py swaps it to RGB",
            "network": f"model.pt2: uint8 RGB (batch, {size}, {size}, 3) -> P({decision['positive']}) (batch,)",
            "exported_with": {"torch": torch.__version__},
            "bundle_weights_sha256": bundle.meta["weights_sha256"],
        }
        (folder / "preprocessing.json").write_text(json.dumps(preprocessing, indent=2), encoding="utf-8")
        (folder / "README.md").write_text(_challenge_readme(bundle, preprocessing), encoding="utf-8")
        difference = _check_challenge(bundle, folder, samples=samples, seed=seed)
        partial = output.with_name(f".{output.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in ("model.py", "model.pt2", "preprocessing.json", "README.md"):
                archive.write(folder / name, name)
        partial.replace(output)
    return difference


def _check_challenge(bundle: Bundle, folder: Path, *, samples: int, seed: int) -> float:
    """Largest |P(positive)| difference between the submission's model.py (on BGR images) and the
    bundle (on the same images in RGB, preprocessed by Pillow), over random images whose long
    side is sometimes the height, sometimes the width, larger or smaller than the input size."""
    spec = importlib.util.spec_from_file_location("fundus_search_challenge_check", folder / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    submission = module.model()
    submission.load(str(folder))
    rng = np.random.default_rng(seed)
    size = bundle.preprocessing.image_size
    worst = 0.0
    for i in range(samples):
        h, w = (int(v) for v in rng.integers(max(2, size // 2), 3 * size, 2))
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        theirs = submission.prob_positive(np.ascontiguousarray(rgb[:, :, ::-1]))
        ours = float(bundle.prob_positive(preprocess_image(rgb, bundle.preprocessing)[None])[0])
        worst = max(worst, abs(theirs - ours))
        if not abs(theirs - ours) <= CHALLENGE_TOLERANCE:
            raise ExportError(
                f"export --format challenge: model.py gives P {theirs:.6f} where the bundle gives {ours:.6f} "
                f"(image {i}, {h}x{w}); not written"
            )
    return worst


def _challenge_readme(bundle: Bundle, preprocessing: dict) -> str:
    return f"""# CGI-HRDC submission: {bundle.meta.get("name", "fundus-search model")}

Written by `fundus-search export --format challenge` from the bundle at {bundle.path}
(weights sha256 {bundle.meta["weights_sha256"][:12]}...); its model card says what it was trained on.

- `model.py`: `class model` with `load(dir_path)` and `predict(input_image) -> int` (1:
  {preprocessing["classes"][-1]}), where `input_image` is what `cv2.imread(path, 1)` returns (BGR).
  It imports only numpy, torch and OpenCV, and runs on the CPU.
- `model.pt2`: the network, saved by torch.export (torch {torch.__version__}); load it with the same or
  a later torch.
- `preprocessing.json`: input size {preprocessing["image_size"]} px, crop to the fundus:
  {preprocessing["crop_foreground"]}, decision threshold {preprocessing["threshold"]}.

Score it as the challenge does: `fundus-search score-submission THIS.zip DATA`.
"""
