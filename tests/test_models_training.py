"""LP, FT and LP-FT learn, resume exactly, and share one feature extraction; challenge metrics are right."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from data_io import DataSpec, SyntheticSpec, fold_indices, prepare_images
from models import (InitSpec, Trainer, TrainSettings, build_feature_net, classification_metrics,
                    load_or_extract_features)
from models.metrics import cpu_seconds_per_image
from models.transfer import upload_uint8
from search.cli import main


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = DataSpec(source="synthetic", synthetic=SyntheticSpec(n=240, size=48, seed=0, difficulty=0.3),
                    image_size=48, cache_dir=tmp_path_factory.mktemp("cache"))
    cache = prepare_images(spec)
    train_idx, val_idx = fold_indices(cache.labels, cache.groups, folds=3, fold=0, seed=0)
    return cache, train_idx, val_idx


def make_trainer(dataset, checkpoint, strategy: str, counter: list | None = None, feature_dir=None,
                 **overrides) -> Trainer:
    cache, train_idx, val_idx = dataset
    init = InitSpec(source="flair", path=checkpoint)
    settings = TrainSettings(**{"strategy": strategy, "max_epochs": 4, "lp_lr": 1e-3, "ft_lr": 3e-4, "lp_epochs": 3,
                                "batch_size": 16, "seed": 0, **overrides})

    def build_net():
        if counter is not None:
            counter.append(1)
        return build_feature_net(init, "resnet18")

    def features():
        folder = feature_dir or cache.path.parent.parent
        return load_or_extract_features("k-" + checkpoint.name, folder, build_net, cache.images)

    return Trainer(settings, images=cache.images, labels=cache.labels, train_idx=train_idx, val_idx=val_idx,
                   build_net=build_net, load_features=features)


def val_only(rows: list[dict]) -> list[dict]:
    """Per-epoch results without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]


# L-BFGS with C = 1 overfits 512 standardised features of 160 images (0.42 here); C = 0.01 gives 0.56
@pytest.mark.parametrize("strategy,overrides", [("lp", {}), ("lp", {"lp_solver": "lbfgs", "lp_c": 0.01}), ("ft", {}),
                                                ("lp_ft", {})],
                         ids=["lp", "lp-lbfgs", "ft", "lp_ft"])
def test_strategy_beats_the_majority_baseline(strategy, overrides, dataset, pretrained_flair):
    cache, _, val_idx = dataset
    baseline = classification_metrics(cache.labels[val_idx], np.zeros(len(val_idx)))["average"]  # all negative
    assert baseline == pytest.approx(1 / 3)
    rows = list(make_trainer(dataset, pretrained_flair, strategy, **overrides).epochs())
    assert len(rows) == (1 if overrides else 4)
    best = max(r["val_average"] for r in rows)
    assert best > baseline + 0.1, f"{strategy}: best val_average {best:.3f} vs majority baseline {baseline:.3f}"
    assert {"val_kappa", "val_f1", "val_specificity", "val_auc", "val_accuracy", "train_loss", "epoch_seconds",
            "images_per_second"} <= rows[0].keys()
    assert ("lp_val_average" in rows[0]) == (strategy == "lp_ft")
    assert all("lp_val_average" not in r for r in rows[1:])


@pytest.mark.parametrize("strategy", ["lp", "ft", "lp_ft"])
def test_resume_continues_bit_for_bit(strategy, dataset, pretrained_flair, tmp_path):
    torch.set_num_threads(1)  # same kernels, same order, same bits
    straight = list(make_trainer(dataset, pretrained_flair, strategy, max_epochs=3).epochs())
    first = make_trainer(dataset, pretrained_flair, strategy, max_epochs=3)
    interrupted = []
    for row in first.epochs():
        interrupted.append(row)
        if row["epoch"] == 1:
            torch.save(first.state_dict(), tmp_path / "state.pt")
            break
    resumed = make_trainer(dataset, pretrained_flair, strategy, max_epochs=3)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    interrupted.extend(resumed.epochs())
    assert [r["epoch"] for r in interrupted] == [1, 2, 3]
    assert val_only(interrupted) == val_only(straight)


def test_two_trainers_on_one_init_extract_features_once(dataset, pretrained_flair, tmp_path):
    builds = []
    for _ in range(2):
        list(make_trainer(dataset, pretrained_flair, "lp", counter=builds, feature_dir=tmp_path, max_epochs=1).epochs())
    assert len(builds) == 1, "the second LP trial re-extracted features"


def test_concurrent_feature_requests_extract_once(dataset, pretrained_flair, tmp_path):
    cache = dataset[0]
    builds, results = [], []

    def build():
        builds.append(1)
        return build_feature_net(InitSpec(source="flair", path=pretrained_flair), "resnet18")

    def worker():
        results.append(load_or_extract_features("concurrent", tmp_path, build, cache.images[:40]))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and np.array_equal(results[0], results[1]) and results[0].shape == (40, 512)


def test_lbfgs_head_reproduces_scikit_learn_probabilities(dataset, pretrained_flair):
    from sklearn.linear_model import LogisticRegression
    trainer = make_trainer(dataset, pretrained_flair, "lp", lp_solver="lbfgs", lp_c=0.5)
    list(trainer.epochs())
    cache, train_idx, val_idx = dataset
    feats = trainer.features.numpy()
    mean, std = feats[train_idx].mean(0), feats[train_idx].std(0)
    norm = lambda x: (x - mean) / np.sqrt(std**2 + 1e-5)  # BatchNorm1d eval: eps 1e-5
    sk = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(norm(feats[train_idx]), cache.labels[train_idx])
    with torch.no_grad():
        ours = torch.softmax(trainer.head.eval()(trainer.features[val_idx]), 1)[:, 1].numpy()
    # L-BFGS stops at a tolerance; float32 vs float64 inputs move it by ~1e-3, a wrong head by ~0.1
    assert np.abs(ours - sk.predict_proba(norm(feats[val_idx]))[:, 1]).max() < 5e-3


# ---- metrics ----

def _from_confusion(tn, fp, fn, tp):
    y = np.array([0] * (tn + fp) + [1] * (fn + tp))
    p = np.array([0.2] * tn + [0.8] * fp + [0.2] * fn + [0.8] * tp)
    return classification_metrics(y, p)


def test_metrics_match_hand_computed_values():
    m = _from_confusion(tn=40, fp=10, fn=5, tp=45)
    # po = 85/100; pe = (50*55 + 50*45)/100^2 = 0.5; kappa = (0.85 - 0.5) / 0.5
    assert m["kappa"] == pytest.approx(0.7)
    assert m["f1"] == pytest.approx(2 * 45 / (2 * 45 + 10 + 5))
    assert m["specificity"] == pytest.approx(40 / 50)
    assert m["sensitivity"] == pytest.approx(45 / 50)
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["average"] == pytest.approx((0.7 + 90 / 105 + 0.8) / 3)
    # two score levels: positives above negatives 45*40 times, tied 45*10 + 5*40 times, of 50*50 pairs
    assert m["auc"] == pytest.approx((45 * 40 + 0.5 * (45 * 10 + 5 * 40)) / 2500)


def test_metrics_with_single_class_predictions_are_defined():
    all_negative = _from_confusion(tn=30, fp=0, fn=20, tp=0)
    assert all_negative["kappa"] == 0 and all_negative["f1"] == 0 and all_negative["specificity"] == 1
    assert all_negative["average"] == pytest.approx(1 / 3)
    all_positive = _from_confusion(tn=0, fp=30, fn=0, tp=20)
    assert all_positive["specificity"] == 0 and all_positive["f1"] == pytest.approx(40 / 70)
    one_class_truth = classification_metrics(np.zeros(5), np.zeros(5))
    assert one_class_truth["kappa"] == 0 and np.isnan(one_class_truth["auc"]) and one_class_truth["specificity"] == 1


def test_cpu_inference_time_is_measured():
    net = build_feature_net(InitSpec(source="random"), "resnet18")
    assert 0 < cpu_seconds_per_image(net, 32, repeats=3) < 10


# ---- the train command ----

def test_train_command_prints_a_line_per_epoch(pretrained_flair, write_config, capsys):
    config = write_config({"data": {"source": "synthetic", "synthetic": {"n": 60, "size": 32}, "image_size": 32,
                                    "folds": 3},
                           "model": {"backbone": "resnet18",
                                     "inits": {"flair": {"source": "flair", "path": str(pretrained_flair)}}},
                           "search": {"max_epochs": 2}})
    rc = main(["train", str(config), "--init", "flair", "--strategy", "lp_ft", "--lp-lr", "1e-3", "--ft-lr", "1e-4",
               "--lp-epochs", "2"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "val_average" in lines[0] and "LP warm-up" in lines[0]
    assert main(["train", str(config), "--init", "flair", "--strategy", "ft"]) == 2
    assert "--strategy ft needs --ft-lr" in capsys.readouterr().err
    assert main(["train", str(config), "--init", "imagenet", "--strategy", "lp", "--lp-lr", "1e-3"]) == 2
    assert "--init: 'imagenet' is not in model.inits (flair)" in capsys.readouterr().err


def test_missing_weights_exit_2_with_one_line(write_config, capsys, tmp_path):
    config = write_config({"data": {"source": "synthetic", "synthetic": {"n": 40, "size": 32}, "image_size": 32, "folds": 2},
                           "model": {"backbone": "resnet18",
                                     "inits": {"flair": {"source": "flair", "path": str(tmp_path / "missing.pth")}}}})
    rc = main(["train", str(config), "--init", "flair", "--strategy", "lp", "--lp-lr", "1e-3"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.inits.flair.path: no such file" in err and len(err.strip().splitlines()) == 1


def test_upload_uint8_copies_a_read_only_memmap_exactly(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")  # read-only, like the image cache
    uploaded = upload_uint8(mapped, torch.device("cpu"), chunk=128)
    assert uploaded.dtype == torch.uint8 and torch.equal(uploaded, torch.from_numpy(array))


# ---- edge cases ----

def test_batches_never_hold_a_single_row():
    from models.transfer import batch_slices
    assert [(s.start, s.stop) for s in batch_slices(17, 8)] == [(0, 8), (8, 17)]
    assert [(s.start, s.stop) for s in batch_slices(16, 8)] == [(0, 8), (8, 16)]
    assert [(s.start, s.stop) for s in batch_slices(1, 8)] == [(0, 1)]
    assert all(s.stop - s.start >= 2 for n in range(2, 200) for b in (2, 4, 8, 71) for s in batch_slices(n, b))


@pytest.mark.parametrize("strategy", ["lp", "ft", "lp_ft"])
def test_a_training_set_one_row_past_a_batch_multiple_trains(strategy, dataset, pretrained_flair):
    _, train_idx, _ = dataset
    batch_size = 53
    assert len(train_idx) % batch_size == 1, "the case under test: a remainder of one row"
    rows = list(make_trainer(dataset, pretrained_flair, strategy, max_epochs=1, lp_epochs=1, batch_size=batch_size).epochs())
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])


def test_linear_probe_standardises_with_the_exact_training_statistics(dataset, pretrained_flair):
    _, train_idx, _ = dataset
    trainer = make_trainer(dataset, pretrained_flair, "lp", max_epochs=2)
    list(trainer.epochs())
    train = trainer.features[torch.as_tensor(train_idx)]
    assert torch.allclose(trainer.head.norm.running_mean, train.mean(0), atol=1e-5)
    assert torch.allclose(trainer.head.norm.running_var, train.var(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_folds_count_groups_not_images():
    from data_io import FoldError
    labels = np.array([0] * 10 + [1] * 10)
    groups = [f"n{i}" for i in range(10)] + ["a"] * 5 + ["b"] * 5  # class 1: 10 images, 2 file names
    with pytest.raises(FoldError, match="class 1 has only 2 groups"):
        fold_indices(labels, groups, folds=3, fold=0, seed=0)


def test_an_exact_tie_is_predicted_positive_everywhere():
    from models.metrics import THRESHOLD, predict
    assert THRESHOLD == 0.5 and predict(np.array([0.5, 0.4999]))[0] == 1 and predict(np.array([0.4999]))[0] == 0
    m = classification_metrics(np.array([1, 0]), np.array([0.5, 0.2]))
    assert m["sensitivity"] == 1 and m["specificity"] == 1


@pytest.mark.parametrize("flags,message", [
    (["--lp-lr", "-1"], "argument --lp-lr: must be > 0 (got -1)"),
    (["--epochs", "0"], "argument --epochs: must be >= 1 (got 0)"),
    (["--batch-size", "0"], "argument --batch-size: must be >= 2 (got 0)"),
    (["--lp-lr", "fast"], "argument --lp-lr: expected a number (got 'fast')"),
])
def test_train_command_refuses_bad_numbers_in_one_line(flags, message, write_config, capsys):
    config = write_config({"data": {"source": "synthetic", "synthetic": {"n": 40, "size": 32}, "image_size": 32,
                                    "folds": 2}, "model": {"backbone": "resnet18"}})
    assert main(["train", str(config), "--init", "random", "--strategy", "lp", "--lp-lr", "1e-3", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
