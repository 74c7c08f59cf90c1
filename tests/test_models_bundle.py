"""Model bundles: `train --output` writes one, `predict` scores images with it by its own
preprocessing and reproduces what training measured; an altered or foreign folder is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fundus_search.data_io import Preprocessing
from fundus_search.metrics import classification_metrics
from fundus_search.models.bundle import Architecture, BundleError, load_bundle, save_bundle
from fundus_search.search.cli.main import main

CLASSES = ("negative", "positive")


def a_bundle(folder: Path) -> Path:
    """An untrained ResNet-18 classifier saved as a bundle (no training: seconds)."""
    classifier = Architecture("resnet18", "imagenet").build()
    return save_bundle(folder, classifier, backbone="resnet18", preprocessing=Preprocessing(32), classes=CLASSES,
                       record={"name": "untrained"})  # fmt: skip


def test_a_bundle_loads_strictly_and_gives_the_network_it_saved(tmp_path):
    folder = a_bundle(tmp_path / "b")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.json", "model.safetensors"]
    bundle = load_bundle(folder)
    assert bundle.preprocessing == Preprocessing(32) and bundle.classes == CLASSES
    assert bundle.meta["preprocessing"]["normalize"] == [[0.485, 0.456, 0.406], [0.229, 0.224, 0.225]]
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    again = load_bundle(folder).prob_positive(images)
    assert np.array_equal(bundle.prob_positive(images), again)
    with pytest.raises(BundleError, match="already holds a model bundle"):
        a_bundle(folder)


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda f: (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-8] + b"\0" * 8),
         "the weights were altered or swapped"),
        (lambda f: (f / "model.json").write_text("{"), "not a model.json fundus-search wrote"),
        (lambda f: (f / "model.json").unlink(), "not a model bundle"),
    ],
    ids=["altered-weights", "broken-json", "no-json"],
)  # fmt: skip
def test_predict_refuses_a_damaged_bundle_in_one_line(damage, message, tmp_path, capsys):
    folder = a_bundle(tmp_path / "b")
    damage(folder)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(image)
    assert main(["predict", str(folder), str(image)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow
@pytest.mark.parametrize("strategy,flags", [("ft", ["--ft-lr", "1e-3"]), ("lp", ["--lp-lr", "1e-2"])])
def test_predict_with_the_bundle_train_wrote_reproduces_its_validation_scores(strategy, flags, write_config,
                                                                              tmp_path, capsys):  # fmt: skip
    """The bundle of `train --output`, scored by `predict` from the image files, gives the very
    metrics training measured on its validation fold: same preprocessing, same network, same rule."""
    from fundus_search.data_io import prepare_images, split_indices
    from fundus_search.search.study.config import load_config

    config = write_config(
        {
            "data": {"source": "synthetic", "synthetic": {"n": 48, "size": 32}, "image_size": 32, "folds": 3,
                     "cache_dir": str(tmp_path / "cache")},
            "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
            "storage": {"path": str(tmp_path / "runs")},
        }
    )  # fmt: skip
    out = tmp_path / "model"
    argv = ["train", str(config), "--init", "random", "--strategy", strategy, *flags, "--epochs", "2", "--output"]
    assert main([*argv, str(out)]) == 0
    assert f"model:   {out}" in capsys.readouterr().out
    bundle = json.loads((out / "model.json").read_text())
    assert bundle["strategy"] == strategy and bundle["epochs"] == 2 and bundle["init"] == "random"
    assert "## Evaluation" in (out / "README.md").read_text()

    loaded = load_config(config)
    cache = prepare_images(loaded.data.to_spec())
    _, val_idx = split_indices(cache.labels, cache.groups, folds=3, fold=0, seed=0)
    root = Path(cache.meta["root"])
    listing = tmp_path / "val.csv"
    pd.DataFrame({"path": [str(root / cache.paths[i]) for i in val_idx]}).to_csv(listing, index=False)
    assert main(["predict", str(out), str(listing), "--output", str(tmp_path / "p.parquet"), "--batch-size", "5"]) == 0
    scored = pd.read_parquet(tmp_path / "p.parquet")
    assert len(scored) == len(val_idx)
    again = classification_metrics(cache.labels[val_idx], scored["prob_positive"].to_numpy())
    for name, value in bundle["metrics"].items():
        assert again[name] == pytest.approx(value, abs=1e-6), name
    assert set(scored["class"]) <= set(cache.classes)

    assert main([*argv, str(out)]) == 2  # a second train into the same folder: refused before training
    assert "already holds a model bundle" in capsys.readouterr().err


def test_predict_names_each_bad_image_scores_the_rest_and_exits_1(tmp_path, capsys):
    from PIL import Image

    folder = a_bundle(tmp_path / "b")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((50, 40, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    (images / "3.png").write_bytes((images / "0.png").read_bytes()[:60])  # truncated
    (images / "4.png").write_text("not an image")
    assert main(["predict", str(folder), str(images), "--output", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[1].strip() for line in err[:2]] == [str(images / "3.png"), str(images / "4.png")]
    assert err[-1] == f"scored 3 of 5 images into {tmp_path / 'p.csv'}; 2 skipped"
    scored = pd.read_csv(tmp_path / "p.csv")
    assert scored["path"].tolist() == [str(images / f"{i}.png") for i in range(3)]
    assert scored["prob_positive"].between(0, 1).all() and set(scored["class"]) <= set(CLASSES)
    assert main(["predict", str(folder), str(images), "--output", str(tmp_path / "p.txt")]) == 2
    assert "neither .csv nor .parquet" in capsys.readouterr().err


@pytest.mark.slow
def test_the_onnx_export_says_what_it_checked_and_refuses_an_altered_bundle(tmp_path, capsys):
    """`export --format onnx` prints the file and its check (tests/test_challenge.py compares its
    classes with the bundle's on files read by OpenCV); altered weights write nothing."""
    folder = a_bundle(tmp_path / "b")
    assert main(["export", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"onnx:  {folder / 'model.onnx'}") and "max |P difference|" in out
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    assert main(["export", str(folder), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "altered or swapped" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
