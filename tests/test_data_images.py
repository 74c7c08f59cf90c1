"""Preprocessing geometry, the decoded-image cache, folds, synthetic data and augmentation."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import fundus_search.data_io.image_cache as image_cache
from fundus_search.data_io import (
    Augmentation,
    DataSpec,
    Preprocessing,
    SyntheticSpec,
    augment,
    build_manifest,
    decode_image,
    fold_indices,
    load_or_build_image_cache,
    preprocess_file,
    to_float,
)
from fundus_search.data_io.synthetic import generate_image, generate_labels


def test_resize_keeps_aspect_and_zero_pads_bottom_right(tmp_path):
    img = np.full((200, 300, 3), 200, dtype=np.uint8)  # H=200, W=300
    Image.fromarray(img).save(tmp_path / "a.png")
    out = preprocess_file(tmp_path / "a.png", Preprocessing(image_size=60))
    assert out.shape == (60, 60, 3) and out.dtype == np.uint8
    assert (out[:40] == 200).all(), "content occupies the top 60x40"
    assert (out[40:] == 0).all(), "bottom rows are zero padding"


def fundus_on_a_page(background: tuple[int, int, int]) -> np.ndarray:
    """A 240 x 320 page of `background` colour holding a fundus disc (rows 40..200, cols 80..240,
    dark vessels inside) and a caption below-left of it."""
    from PIL import ImageDraw

    page = np.zeros((240, 320, 3), np.uint8) + np.array(background, np.uint8)
    yy, xx = np.mgrid[0:240, 0:320]
    disc = (yy - 120) ** 2 + (xx - 160) ** 2 <= 80**2
    page[disc] = (190, 80, 35)
    page[disc & (abs(yy - xx + 40) < 3)] = (60, 10, 5)  # a dark vessel across the disc
    image = Image.fromarray(page)
    ImageDraw.Draw(image).text(
        (10, 215), "OD 2019-03-01 patient 17", fill=(0, 0, 0) if sum(background) > 300 else (255, 255, 255)
    )
    return np.asarray(image)


@pytest.mark.parametrize("background", [(0, 0, 0), (255, 255, 255), (128, 128, 128)], ids=["black", "white", "grey"])
def test_crop_finds_the_disc_on_any_surround_and_blackens_the_rest(background, tmp_path):
    Image.fromarray(fundus_on_a_page(background)).save(tmp_path / "page.png")
    out = preprocess_file(tmp_path / "page.png", Preprocessing(image_size=161, crop_foreground=True))
    # the disc's bounding box (161 px) fills the output; outside the disc everything is black
    yy, xx = np.mgrid[0:161, 0:161]
    inside = (yy - 80) ** 2 + (xx - 80) ** 2 <= 76**2
    outside = (yy - 80) ** 2 + (xx - 80) ** 2 >= 82**2
    assert (out[outside] == 0).all(), "page colour or caption left outside the disc"
    assert (out[inside].max(axis=1) > 0).mean() > 0.99, "the disc lost pixels"
    assert abs(int(out[80, 40, 0]) - 190) < 10 and out[0, 0].sum() == 0


def test_crop_warns_and_keeps_the_image_when_no_disc_is_found(tmp_path, caplog):
    Image.fromarray(np.full((50, 60, 3), 90, np.uint8)).save(tmp_path / "flat.png")
    out = preprocess_file(tmp_path / "flat.png", Preprocessing(image_size=60, crop_foreground=True))
    assert (out[:50] == 90).all()
    assert "flat.png: no fundus disc found" in caplog.text


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16"])
def test_every_pixel_format_decodes_to_rgb_uint8(mode, tmp_path):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    img.save(tmp_path / "x.png")
    out = decode_image(tmp_path / "x.png")
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    if mode in ("L", "I;16"):
        assert (out[:, :, 0] == out[:, :, 2]).all()
    if mode == "I;16":
        expected = (np.asarray(img, dtype=np.uint32) >> 8).astype(np.uint8)
        assert np.array_equal(out[:, :, 0], expected)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: displayed as 20 wide, 40 high
    img.save(tmp_path / "r.jpg", exif=exif)
    assert decode_image(tmp_path / "r.jpg").shape == (40, 20, 3)


def test_cache_hit_returns_identical_bytes_without_decoding(cgi_tree, tmp_path, monkeypatch):
    manifest = build_manifest(DataSpec(source="cgi-hrdc", root=cgi_tree, task=2))
    pre = Preprocessing(image_size=32)
    calls = []
    real = image_cache.preprocess_file
    monkeypatch.setattr(image_cache, "preprocess_file", lambda *a: calls.append(1) or real(*a))
    first = load_or_build_image_cache(manifest, pre, tmp_path, num_workers=0)
    assert len(calls) == 24
    second = load_or_build_image_cache(manifest, pre, tmp_path, num_workers=0)
    assert len(calls) == 24, "a cache hit decoded images"
    assert isinstance(second.images, np.memmap)
    assert np.array_equal(np.asarray(first.images), np.asarray(second.images))
    assert second.images.shape == (24, 32, 32, 3) and second.labels.tolist() == manifest.labels.tolist()


def test_changed_file_content_changes_the_key(cgi_tree, tmp_path):
    spec = DataSpec(source="cgi-hrdc", root=cgi_tree, task=2)
    pre = Preprocessing(image_size=32)
    key = load_or_build_image_cache(build_manifest(spec), pre, tmp_path, num_workers=0).key
    path = sorted((cgi_tree / "2-Hypertensive Retinopathy Classification/1-Images/1-Training Set").iterdir())[0]
    Image.fromarray(np.zeros((48, 48, 3), np.uint8) + 7).save(path)
    assert load_or_build_image_cache(build_manifest(spec), pre, tmp_path, num_workers=0).key != key
    other = load_or_build_image_cache(build_manifest(spec), Preprocessing(image_size=40), tmp_path, num_workers=0)
    assert other.key != key


def _build_in_process(root: str, cache: str, out) -> None:
    manifest = build_manifest(DataSpec(source="cgi-hrdc", root=Path(root), task=2))
    result = load_or_build_image_cache(manifest, Preprocessing(image_size=32), Path(cache), num_workers=0)
    out.put((result.key, result.meta["built_at"]))


def test_two_concurrent_builders_yield_one_valid_cache(cgi_tree, tmp_path):
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_process, args=(str(cgi_tree), str(tmp_path), queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results[0] == results[1], "both processes must see the same single build"
    assert len(list((tmp_path / "images").glob("*.npy"))) == 1
    assert not list((tmp_path / "images").glob("*tmp*"))
    assert np.load(next((tmp_path / "images").glob("*.npy"))).shape == (24, 32, 32, 3)


def test_parallel_decode_equals_inline_decode(tmp_path):
    from fundus_search.data_io.synthetic import write_cgi_hrdc

    root = write_cgi_hrdc(SyntheticSpec(n=70, size=32, seed=1), tmp_path / "d")
    manifest = build_manifest(DataSpec(source="cgi-hrdc", root=root, task=2))
    inline = load_or_build_image_cache(manifest, Preprocessing(image_size=32), tmp_path / "a", num_workers=0)
    pooled = load_or_build_image_cache(manifest, Preprocessing(image_size=32), tmp_path / "b", num_workers=2)
    assert np.array_equal(np.asarray(inline.images), np.asarray(pooled.images))


def test_folds_are_stratified_disjoint_grouped_and_deterministic():
    labels = np.array([0] * 60 + [1] * 40)
    groups = [f"img{i // 2}" for i in range(100)]  # pairs of rows share a file name
    seen_val = []
    for fold in range(5):
        train, val = fold_indices(labels, groups, folds=5, fold=fold, seed=7)
        assert set(train).isdisjoint(val) and len(train) + len(val) == 100
        assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
        assert abs(labels[val].mean() - 0.4) < 0.1
        seen_val.extend(val)
        again = fold_indices(labels, groups, folds=5, fold=fold, seed=7)
        assert np.array_equal(again[1], val)
    assert sorted(seen_val) == list(range(100))
    assert not np.array_equal(
        fold_indices(labels, groups, folds=5, fold=0, seed=8)[1],
        fold_indices(labels, groups, folds=5, fold=0, seed=7)[1],
    )


def test_synthetic_generator_is_deterministic_per_seed():
    a = generate_image(np.random.default_rng([4, 2, 0]), 64, positive=True, difficulty=0.5)
    b = generate_image(np.random.default_rng([4, 2, 0]), 64, positive=True, difficulty=0.5)
    c = generate_image(np.random.default_rng([5, 2, 0]), 64, positive=True, difficulty=0.5)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert generate_labels(SyntheticSpec(n=100, positive_fraction=0.3)).sum() == 30
    assert a[0, 0].sum() == 0 and a[32, 32].sum() > 0, "black surround, bright fundus"


def test_synthetic_classes_are_separable_above_chance():
    spec = SyntheticSpec(n=200, size=64, seed=0, difficulty=0.3)
    labels = generate_labels(spec)
    images = np.stack(
        [
            generate_image(np.random.default_rng([0, 2, i]), 64, positive=bool(y), difficulty=0.3)
            for i, y in enumerate(labels)
        ]
    )
    # A deliberately simple classifier: a histogram of the red/green ratio inside the fundus
    # (vessels, haemorrhages and exudates shift it; global brightness does not).
    rgb = images.astype(float) + 1
    ratio, inside = rgb[..., 0] / rgb[..., 1], images[..., 0] > 20
    features = np.stack([np.histogram(ratio[i][inside[i]], bins=24, range=(1, 8))[0] for i in range(len(images))])
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000))
    score = cross_val_score(model, features.astype(float), labels, cv=4, scoring="balanced_accuracy").mean()
    assert score > 0.65, f"balanced accuracy {score:.2f} is not clearly above chance (0.5)"


def test_augmentation_is_reproducible_and_keeps_range():
    batch = to_float(torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8))
    assert batch.shape == (4, 3, 32, 32)
    a = augment(batch, torch.Generator().manual_seed(1))
    b = augment(batch, torch.Generator().manual_seed(1))
    c = augment(batch, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and a.shape == batch.shape


def test_flip_only_augmentation_mirrors_the_image():
    batch = torch.rand(1, 3, 16, 16)
    spec = Augmentation(flip=1.0, rotation_deg=0, scale=0, brightness=0, contrast=0)
    out = augment(batch, torch.Generator().manual_seed(0), spec)
    assert torch.allclose(out, batch.flip(-1), atol=1e-5)


def test_repeated_partitions_differ_and_each_is_stratified_and_grouped():
    labels = np.array([0] * 60 + [1] * 40)
    groups = [f"img{i // 2}" for i in range(100)]
    search_partition = fold_indices(labels, groups, folds=5, fold=0, seed=7)[1]
    assert np.array_equal(fold_indices(labels, groups, folds=5, fold=0, seed=7, repeat=0)[1], search_partition), (
        "repeat 0 is the search's own partition"
    )
    firsts = []
    for repeat in range(3):
        seen = []
        for fold in range(5):
            train, val = fold_indices(labels, groups, folds=5, fold=fold, seed=7, repeat=repeat)
            assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val}), "a group split across a fold"
            assert abs(labels[val].mean() - 0.4) < 0.1
            seen.extend(val)
        assert sorted(seen) == list(range(100))
        firsts.append(tuple(fold_indices(labels, groups, folds=5, fold=0, seed=7, repeat=repeat)[1]))
    assert len(set(firsts)) == 3, "each repeat re-draws the partition"
