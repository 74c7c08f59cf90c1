"""LP, FT and LP-FT learn, resume exactly, and share one feature extraction; challenge metrics are right."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fundus_search.data_io import DataSpec, SyntheticSpec, fold_indices, prepare_images
from fundus_search.metrics import classification_metrics
from fundus_search.models import (
    WEIGHT_SOURCES,
    InitSpec,
    Trainer,
    TrainSettings,
    build_feature_net,
    load_or_extract_features,
)
from fundus_search.models.inference import cpu_ms_per_image
from fundus_search.models.transfer import upload_uint8

# Tests that train (seconds each) are slow; the batching, upload and fold rules are quick.


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    spec = DataSpec(
        source="synthetic",
        synthetic=SyntheticSpec(n=240, size=48, seed=0, difficulty=0.3),
        image_size=48,
        cache_dir=tmp_path_factory.mktemp("cache"),
    )
    cache = prepare_images(spec)
    train_idx, val_idx = fold_indices(cache.labels, cache.groups, folds=3, fold=0, seed=0)
    return cache, train_idx, val_idx


def make_trainer(
    dataset, checkpoint, strategy: str, counter: list | None = None, feature_dir=None, **overrides
) -> Trainer:
    cache, train_idx, val_idx = dataset
    init = InitSpec(source="flair", path=checkpoint)
    settings = TrainSettings(
        **{
            "strategy": strategy,
            "max_epochs": 4,
            "lp_lr": 1e-3,
            "ft_lr": 3e-4,
            "lp_epochs": 3,
            "batch_size": 16,
            "seed": 0,
            **overrides,
        }
    )

    def build_net():
        if counter is not None:
            counter.append(1)
        return build_feature_net(init, "resnet18")

    def features():
        folder = feature_dir or cache.path.parent.parent
        return load_or_extract_features("k-" + checkpoint.name, folder, build_net, cache.images)

    return Trainer(
        settings,
        images=cache.images,
        labels=cache.labels,
        train_idx=train_idx,
        val_idx=val_idx,
        build_net=build_net,
        load_features=features,
    )


def val_only(rows: list[dict]) -> list[dict]:
    """Per-epoch results without wall-clock fields."""
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "images_per_second")} for r in rows]


# L-BFGS with C = 1 overfits 512 standardised features of 160 images (0.42 here); C = 0.01 gives 0.56
@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy,overrides",
    [("lp", {}), ("lp", {"lp_solver": "lbfgs", "lp_c": 0.01}), ("ft", {}), ("lp_ft", {})],
    ids=["lp", "lp-lbfgs", "ft", "lp_ft"],
)
def test_strategy_beats_the_majority_baseline(strategy, overrides, dataset, pretrained_flair):
    cache, _, val_idx = dataset
    baseline = classification_metrics(cache.labels[val_idx], np.zeros(len(val_idx)))["average"]  # all negative
    assert baseline == pytest.approx(1 / 3)
    rows = list(make_trainer(dataset, pretrained_flair, strategy, **overrides).epochs())
    assert len(rows) == (1 if overrides else 4)
    best = max(r["val_average"] for r in rows)
    assert best > baseline + 0.1, f"{strategy}: best val_average {best:.3f} vs majority baseline {baseline:.3f}"
    assert {
        "val_kappa",
        "val_f1",
        "val_specificity",
        "val_auc",
        "val_accuracy",
        "train_loss",
        "epoch_seconds",
        "images_per_second",
    } <= rows[0].keys()
    assert ("lp_val_average" in rows[0]) == (strategy == "lp_ft")
    assert all("lp_val_average" not in r for r in rows[1:])


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lp", "ft", "lp_ft"])
def test_resume_continues_bit_for_bit(strategy, dataset, pretrained_flair, tmp_path):
    torch.set_num_threads(1)  # same kernels, same order, same bits
    cache, train_idx, val_idx = dataset
    dataset = cache, train_idx[:48], val_idx[:32]  # fewer rows: the same code path, a quarter of the time
    straight = list(make_trainer(dataset, pretrained_flair, strategy, max_epochs=2).epochs())
    first = make_trainer(dataset, pretrained_flair, strategy, max_epochs=2)
    interrupted = []
    for row in first.epochs():
        interrupted.append(row)
        if row["epoch"] == 1:
            torch.save(first.state_dict(), tmp_path / "state.pt")
            break
    resumed = make_trainer(dataset, pretrained_flair, strategy, max_epochs=2)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    interrupted.extend(resumed.epochs())
    assert [r["epoch"] for r in interrupted] == [1, 2]
    assert val_only(interrupted) == val_only(straight)


@pytest.mark.slow
def test_two_trainers_on_one_init_extract_features_once(dataset, pretrained_flair, tmp_path):
    builds = []
    for _ in range(2):
        list(make_trainer(dataset, pretrained_flair, "lp", counter=builds, feature_dir=tmp_path, max_epochs=1).epochs())
    assert len(builds) == 1, "the second LP trial re-extracted features"


@pytest.mark.slow
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


@pytest.mark.slow
def test_lbfgs_head_reproduces_scikit_learn_probabilities(dataset, pretrained_flair):
    from sklearn.linear_model import LogisticRegression

    trainer = make_trainer(dataset, pretrained_flair, "lp", lp_solver="lbfgs", lp_c=0.5)
    list(trainer.epochs())
    cache, train_idx, val_idx = dataset
    feats = trainer.features.numpy()
    mean, std = feats[train_idx].mean(0), feats[train_idx].std(0)

    def norm(x):  # BatchNorm1d in eval: eps 1e-5
        return (x - mean) / np.sqrt(std**2 + 1e-5)

    sk = LogisticRegression(C=0.5, class_weight="balanced", max_iter=2000).fit(
        norm(feats[train_idx]), cache.labels[train_idx]
    )
    with torch.no_grad():
        ours = torch.softmax(trainer.head.eval()(trainer.features[val_idx]), 1)[:, 1].numpy()
    # L-BFGS stops at a tolerance; float32 vs float64 inputs move it by ~1e-3, a wrong head by ~0.1
    assert np.abs(ours - sk.predict_proba(norm(feats[val_idx]))[:, 1]).max() < 5e-3


# ---- metrics ----


@pytest.mark.slow
def test_cpu_inference_time_grows_with_the_image():
    from fundus_search.data_io import Preprocessing
    from fundus_search.models import Classifier
    from fundus_search.models.backbones import Head

    net = build_feature_net(InitSpec(source="random"), "resnet18")
    classifier = Classifier(net, Head(net.feature_dim, 2))
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    small, large = (
        cpu_ms_per_image(classifier, image, Preprocessing(image_size=size), threads=1, repeats=3) for size in (32, 160)
    )
    assert 0 < small < large, (small, large)  # 25x the pixels: never faster, whatever the machine's load


# ---- the train command ----


def test_upload_uint8_copies_a_read_only_memmap_exactly(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, (300, 8, 8, 3), dtype=np.uint8)
    np.save(tmp_path / "images.npy", array)
    mapped = np.load(tmp_path / "images.npy", mmap_mode="r")  # read-only, like the image cache
    uploaded = upload_uint8(mapped, torch.device("cpu"), chunk=128)
    assert uploaded.dtype == torch.uint8 and torch.equal(uploaded, torch.from_numpy(array))


# ---- edge cases ----


def test_batches_never_hold_a_single_row():
    from fundus_search.models.transfer import batch_slices

    assert [(s.start, s.stop) for s in batch_slices(17, 8)] == [(0, 8), (8, 17)]
    assert [(s.start, s.stop) for s in batch_slices(16, 8)] == [(0, 8), (8, 16)]
    assert [(s.start, s.stop) for s in batch_slices(1, 8)] == [(0, 1)]
    assert all(s.stop - s.start >= 2 for n in range(2, 200) for b in (2, 4, 8, 71) for s in batch_slices(n, b))


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["lp", "ft", "lp_ft"])
def test_a_training_set_one_row_past_a_batch_multiple_trains(strategy, dataset, pretrained_flair):
    _, train_idx, _ = dataset
    batch_size = 53
    assert len(train_idx) % batch_size == 1, "the case under test: a remainder of one row"
    rows = list(
        make_trainer(dataset, pretrained_flair, strategy, max_epochs=1, lp_epochs=1, batch_size=batch_size).epochs()
    )
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"])


@pytest.mark.slow
def test_linear_probe_standardises_with_the_exact_training_statistics(dataset, pretrained_flair):
    _, train_idx, _ = dataset
    trainer = make_trainer(dataset, pretrained_flair, "lp", max_epochs=2)
    list(trainer.epochs())
    train = trainer.features[torch.as_tensor(train_idx)]
    assert torch.allclose(trainer.head.norm.running_mean, train.mean(0), atol=1e-5)
    assert torch.allclose(trainer.head.norm.running_var, train.var(0, unbiased=False), rtol=1e-4, atol=1e-6)


def test_folds_count_groups_not_images():
    from fundus_search.data_io import FoldError

    labels = np.array([0] * 10 + [1] * 10)
    groups = [f"n{i}" for i in range(10)] + ["a"] * 5 + ["b"] * 5  # class 1: 10 images, 2 file names
    with pytest.raises(FoldError, match="class 1 has only 2 groups"):
        fold_indices(labels, groups, folds=3, fold=0, seed=0)


# ---- every weight source x every strategy ----


@pytest.fixture(scope="module")
def source_inits(tmp_path_factory, pretrained_flair) -> dict[str, tuple[InitSpec, str]]:
    """One init and its architecture per registered weight source: torchvision's from a saved
    ResNet-18 state dict, the foundation-model sources from tiny ViTs in their published layouts."""
    import timm
    import torchvision
    from safetensors.torch import save_file

    from fundus_search.models.weights import RETFOUND_OPTIONS
    from tests.test_models_foundation import DINOV2, VIT, dinov2_teacher_file, pretrained, retfound_file

    folder = tmp_path_factory.mktemp("sources")
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), folder / "resnet18.pth")
    save_file(timm.create_model(VIT, pretrained=False, img_size=32).state_dict(), str(folder / "vit.safetensors"))
    inits = {
        "torchvision": (InitSpec(source="torchvision", path=folder / "resnet18.pth"), "resnet18"),
        "flair": (InitSpec(source="flair", path=pretrained_flair), "resnet18"),
        "random": (InitSpec(source="random"), "resnet18"),
        "retfound": (InitSpec(source="retfound", path=retfound_file(folder, pretrained(VIT, **RETFOUND_OPTIONS))), VIT),
        "dinov2": (InitSpec(source="dinov2", path=dinov2_teacher_file(folder, pretrained(DINOV2))[0]), DINOV2),
        "timm": (InitSpec(source="timm", path=folder / "vit.safetensors"), VIT),
    }
    assert set(inits) == set(WEIGHT_SOURCES) == {s for s, _ in SOURCE_STRATEGY}, "a new source needs an entry here"
    return inits


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    spec = DataSpec(
        source="synthetic",
        synthetic=SyntheticSpec(n=40, size=32, seed=1),
        image_size=32,
        cache_dir=tmp_path_factory.mktemp("small"),
    )
    cache = prepare_images(spec)
    return cache, *fold_indices(cache.labels, cache.groups, folds=2, fold=0, seed=0)


def test_the_strategy_registry_covers_the_vocabulary():
    from fundus_search.strategy import TRANSFER_STRATEGIES
    from fundus_search.vocabulary import STRATEGIES

    assert tuple(TRANSFER_STRATEGIES) == STRATEGIES


# Every ResNet source under every seed-paper strategy; the ViT sources (whose loading
# tests/test_models_foundation.py checks) under LP and FT.
SOURCE_STRATEGY = [(s, t) for s in ("flair", "random", "torchvision") for t in ("lp", "ft", "lp_ft")] + [
    (s, t) for s in ("dinov2", "retfound", "timm") for t in ("lp", "ft")
]


@pytest.mark.slow
@pytest.mark.parametrize("source,strategy", SOURCE_STRATEGY)
def test_every_source_and_strategy_trains_an_epoch_touching_only_what_it_should(
    source, strategy, source_inits, small_dataset
):
    from fundus_search.models import extract_features

    cache, train_idx, val_idx = small_dataset
    (init, arch), built = source_inits[source], []

    def build_net():
        built.append(build_feature_net(init, arch, seed=0, image_size=32))
        return built[-1]

    reference = {k: v.clone() for k, v in build_feature_net(init, arch, seed=0, image_size=32).named_parameters()}
    settings = TrainSettings(strategy=strategy, max_epochs=1, lp_lr=1e-2, ft_lr=1e-3, lp_epochs=1, batch_size=8)
    trainer = Trainer(
        settings,
        images=cache.images,
        labels=cache.labels,
        train_idx=train_idx,
        val_idx=val_idx,
        build_net=build_net,
        load_features=lambda: extract_features(build_net(), cache.images),
    )
    rows = list(trainer.epochs())
    assert len(rows) == 1 and np.isfinite(rows[0]["train_loss"]) and 0 <= rows[0]["val_average"] <= 1
    assert built[0].normalize.name == WEIGHT_SOURCES[source].normalize
    changed = [net for net in built if any(not torch.equal(p, reference[k]) for k, p in net.named_parameters())]
    if strategy == "lp":
        assert trainer.model is None and not changed, "linear probing changed the backbone"
    else:
        assert changed == [trainer.model.features], "fine-tuning left the backbone as it was"
