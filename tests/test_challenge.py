"""The CGI-HRDC submission: its numpy/OpenCV preprocessing gives fundus-search's pixels exactly,
`export --format challenge` writes a zip whose model.py runs in a fresh interpreter with only
torch, numpy and OpenCV and gives the bundle's probabilities on files read by OpenCV, and
`score-submission` scores such a zip as the challenge does, refusing unusable zips in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fundus_search.data_io import Preprocessing, preprocess_image
from fundus_search.models.bundle import Architecture, load_bundle, save_bundle
from fundus_search.search.cli.main import main

cv2 = pytest.importorskip("cv2")  # the [export] extra, in the dev install


def load_submission_module():
    """models/challenge/model.py, imported as the file it is."""
    import importlib.util

    from fundus_search.models.export import CHALLENGE_MODEL

    spec = importlib.util.spec_from_file_location("challenge_model_under_test", CHALLENGE_MODEL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fundus_like(rng: np.random.Generator, h: int, w: int, *, surround: int = 0, ring: bool = False) -> np.ndarray:
    """A bright disc on a uniform surround, optionally with a surround-coloured hole (a ring)."""
    image = np.full((h, w, 3), surround, np.uint8)
    yy, xx = np.mgrid[:h, :w]
    r2 = (yy - h / 2) ** 2 + (xx - w / 2) ** 2
    disc = r2 < (0.4 * min(h, w)) ** 2
    image[disc] = rng.integers(60, 256, (int(disc.sum()), 3), dtype=np.uint8)
    if ring:
        image[r2 < (0.1 * min(h, w)) ** 2] = surround
    return image


def test_the_submissions_preprocessing_is_fundus_searchs_pixel_for_pixel():
    """Pillow's LANCZOS (down and up, taller and wider than square) and the fundus crop (a hole
    filled, no disc found) reproduced by numpy and OpenCV alone: every pixel equal."""
    submission = load_submission_module()
    rng = np.random.default_rng(0)
    shapes = [(300, 200), (200, 300), (17, 90), (90, 17), (31, 32), (1, 5), (64, 64), (640, 480)]
    for (h, w), size in zip(shapes * 3, [32, 37, 64, 100, 224, 16] * 4, strict=False):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ours = preprocess_image(image, Preprocessing(size))
        np.testing.assert_array_equal(submission.preprocess(image, size, False), ours, err_msg=f"{h}x{w} -> {size}")
    for i, (h, w) in enumerate([(120, 160), (161, 119), (90, 90), (200, 150)]):
        image = fundus_like(rng, h, w, surround=(0, 255, 128, 7)[i], ring=i % 2 == 1)
        for picture in (image, np.full_like(image, 9)):  # a disc; a blank image (no disc: kept whole)
            pre = Preprocessing(48, crop_foreground=True)
            np.testing.assert_array_equal(submission.preprocess(picture, 48, True), preprocess_image(picture, pre))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    """An untrained ResNet-18 bundle (32 px, fundus crop on) and its challenge zip."""
    folder = tmp_path_factory.mktemp("challenge") / "bundle"
    classifier = Architecture("resnet18", "imagenet").build()
    save_bundle(folder, classifier, backbone="resnet18", preprocessing=Preprocessing(32, crop_foreground=True),
                classes=("negative", "positive"), record={"name": "untrained"})  # fmt: skip
    assert main(["export", str(folder), "--format", "challenge"]) == 0
    return folder, folder / "submission.zip"


def image_files(folder: Path, n: int = 6) -> list[Path]:
    rng = np.random.default_rng(3)
    folder.mkdir(exist_ok=True)
    files = []
    for i in range(n):
        files.append(folder / f"{i}.png")
        cv2.imwrite(str(files[-1]), fundus_like(rng, 50 + 9 * i, 70 - 5 * i, ring=i == 2))
    return files


# Run in a fresh `python -I`: the submission's own files may import only the standard library,
# torch, numpy and cv2; fundus-search, Pillow, scipy, torchvision and safetensors may not be
# imported by anyone.
FRESH = r"""
import importlib.abc, importlib.util, json, os, sys
folder, paths = os.path.realpath(sys.argv[1]), json.loads(sys.argv[2])
ALLOWED = set(sys.stdlib_module_names) | {"torch", "numpy", "cv2"}
NOWHERE = {"fundus_search", "PIL", "scipy", "torchvision", "safetensors"}

class OnlyChallengePackages(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top, frame = name.partition(".")[0], sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        importer = os.path.realpath(frame.f_code.co_filename) if frame is not None else ""
        if top in NOWHERE or (importer.startswith(folder + os.sep) and top not in ALLOWED):
            raise ImportError(f"{name} is not available to the submission")
        return None

sys.meta_path.insert(0, OnlyChallengePackages())
spec = importlib.util.spec_from_file_location("model", os.path.join(folder, "model.py"))
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
submission = module.model()
submission.load(folder)
import cv2
images = [cv2.imread(p, 1) for p in paths]
print(json.dumps({"classes": [submission.predict(im) for im in images],
                  "probs": [submission.prob_positive(im) for im in images],
                  "modules": sorted(m.partition(".")[0] for m in sys.modules)}))
"""


@pytest.mark.slow
def test_the_challenge_zip_runs_with_only_torch_numpy_and_cv2_and_gives_the_bundles_answer(exported, tmp_path):
    """model.py in a fresh interpreter, on PNG files read by cv2.imread(path, 1) (BGR): the bundle's
    P(positive) on the same files (read by OpenCV, swapped to RGB, preprocessed by Pillow) within
    1e-6, so the same classes; a submission that skipped the BGR->RGB swap would not agree."""
    folder, archive = exported
    assert sorted(zipfile.ZipFile(archive).namelist()) == ["README.md", "model.pt2", "model.py", "preprocessing.json"]
    unpacked = tmp_path / "submission"
    zipfile.ZipFile(archive).extractall(unpacked)
    files = image_files(tmp_path / "images")
    run = subprocess.run([sys.executable, "-I", "-c", FRESH, str(unpacked), json.dumps([str(f) for f in files])],
                         capture_output=True, text=True, cwd=unpacked, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    theirs = json.loads(run.stdout.strip().splitlines()[-1])
    assert not {"fundus_search", "PIL", "scipy", "torchvision", "safetensors"} & set(theirs["modules"])
    bundle = load_bundle(folder)
    rgb = [cv2.imread(str(f), 1)[:, :, ::-1] for f in files]
    ours = bundle.prob_positive(np.stack([preprocess_image(im, bundle.preprocessing) for im in rgb]))
    assert np.abs(np.asarray(theirs["probs"]) - ours).max() <= 1e-6
    assert theirs["classes"] == [int(p >= 0.5) for p in ours]
    swapped = bundle.prob_positive(np.stack([preprocess_image(im[:, :, ::-1], bundle.preprocessing) for im in rgb]))
    assert np.abs(swapped - ours).max() > 1e-6, "the channel order must matter, or this test cannot fail"


@pytest.mark.slow
def test_the_onnx_export_gives_the_bundles_classes_on_files_read_by_opencv(exported, tmp_path, capsys):
    import onnxruntime

    folder, _ = exported
    assert main(["export", str(folder), "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 0
    bundle = load_bundle(folder)
    pixels = np.stack(
        [preprocess_image(cv2.imread(str(f), 1)[:, :, ::-1], bundle.preprocessing) for f in image_files(tmp_path)]
    )
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    theirs, ours = session.run(None, {"image": pixels})[0], bundle.prob_positive(pixels)
    assert np.abs(theirs - ours).max() <= 1e-4 and ((theirs >= 0.5) == (ours >= 0.5)).all()
    capsys.readouterr()


@pytest.mark.slow
def test_score_submission_scores_each_image_names_the_unreadable_and_writes_a_csv(exported, tmp_path, capsys):
    import pandas as pd

    from fundus_search.metrics import decision_metrics

    folder, archive = exported
    files = image_files(tmp_path / "images", n=4)
    (tmp_path / "images" / "broken.png").write_text("not an image")
    labels = [0, 1, 1, 0, 1]
    names = [f.name for f in files] + ["broken.png"]
    listing = tmp_path / "images" / "labels.csv"
    listing.write_text("path,label\n" + "".join(f"{n},{y}\n" for n, y in zip(names, labels, strict=True)))
    out = tmp_path / "scores.csv"
    assert main(["score-submission", str(archive), str(listing), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert f"error: {tmp_path / 'images' / 'broken.png'}: cv2.imread cannot read it; not scored" in captured.err
    assert "scored:     4 of 5 images" in captured.out and "s per image" in captured.out
    rows = pd.read_csv(out)
    assert rows["path"].tolist() == [str(tmp_path / "images" / n) for n in names]
    bundle = load_bundle(folder)
    expected = [int(p >= 0.5) for p in bundle.prob_positive(np.stack(
        [preprocess_image(cv2.imread(str(f), 1)[:, :, ::-1], bundle.preprocessing) for f in files]))]  # fmt: skip
    assert rows["predicted"].iloc[:4].astype(int).tolist() == expected and rows["predicted"].isna().iloc[4]
    metrics = decision_metrics(np.asarray(labels[:4]), np.asarray(expected))
    assert f"average {metrics['average']:.4f}" in captured.out
    assert (rows["cpu_seconds"].iloc[:4] > 0).all()


def _zip(path: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in members.items():
            archive.writestr(name, text)
    return path


@pytest.mark.parametrize(
    "members,message",
    [
        ({"../evil.py": "x", "model.py": "x"}, "would land outside the submission"),
        ({"weights.bin": "x"}, "no model.py"),
        ({"model.py": "import no_such_package\n"}, "model.py does not load: ModuleNotFoundError"),
        ({"model.py": "class model:\n    def load(self, d):\n        raise RuntimeError('no weights here')\n"},
         "model.py does not load: RuntimeError: no weights here"),
    ],
    ids=["zip-slip", "no-model-py", "import-fails", "load-fails"],
)  # fmt: skip
def test_score_submission_refuses_an_unusable_zip_in_one_line(members, message, tmp_path, capsys):
    image = tmp_path / "0.png"
    cv2.imwrite(str(image), np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "labels.csv").write_text("path,label\n0.png,1\n")
    archive = _zip(tmp_path / "s.zip", members)
    assert main(["score-submission", str(archive), str(tmp_path / "labels.csv")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "evil.py").exists()
    (tmp_path / "labels.csv").write_text("path,label\n0.png,yes\n")
    assert main(["score-submission", str(archive), str(tmp_path / "labels.csv")]) == 2
    assert "label 'yes'; expected 0 or 1" in capsys.readouterr().err
