"""Offline stand-ins for ImageNet and FLAIR weights, for the demo (`fundus-search demo-weights`).

Two ResNet-18s pretrained in about a minute on the CPU:
- a generic stand-in for ImageNet: supervised on synthetic natural-image-like pictures
  (shapes, textures, colours; no fundus) with ImageNet mean/std input normalisation, saved as
  a torchvision state dict (the torchvision source normalises the same way);
- a domain stand-in for FLAIR: like FLAIR's vision encoder, it starts from the ImageNet
  weights and is then trained on fundus images, here a synthetic corpus labelled with the
  hypertensive-retinopathy signs drawn in it (never the diagnosis), on [0, 1] inputs, saved
  in FLAIR's key layout. Its features carry those signs by construction: in the demo it is a
  known, built-in positive control (FLAIR should come out ahead of ImageNet).
Both load through the real weight sources. They are stand-ins, not the real weights.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fundus_search.caching import build_once
from fundus_search.models import WEIGHT_SOURCES, FeatureNet, InitSpec, build_feature_net
from fundus_search.models.pretrain import pretrain, save_flair_checkpoint
from fundus_search.models.weights import file_sha256
from fundus_search.results.layout import write_atomic
from fundus_search.search.demo.corpora import generate_pretraining_corpus, generate_shapes_corpus

IMAGENET_FILE, FLAIR_FILE, MANIFEST_FILE = (
    "imagenet_standin_resnet18.pth",
    "flair_standin_resnet18.pth",
    "demo-weights.json",
)
VERSION = 3  # bump when the recipe changes: cached files are then rebuilt (3: FLAIR learns the signs, from ImageNet)


@dataclass(frozen=True)
class StandIn:
    """A stand-in: its pretraining corpus, the weight source that loads it (whose input
    normalisation the pretraining uses), how it is saved for that source, its default corpus
    size and epochs, and the stand-in whose weights it starts from (None: random)."""

    corpus: Callable[[int, int, int], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]  # (n, size, seed)
    source: str
    save: Callable[[FeatureNet, Path, int], object]  # (net, path, seed)
    images: int
    epochs: int
    start_from: str | None = None


STAND_INS: dict[str, StandIn] = {  # in build order: FLAIR starts from the ImageNet stand-in
    IMAGENET_FILE: StandIn(
        lambda n, size, seed: generate_shapes_corpus(n, size, seed=seed + 1000),
        "torchvision",
        lambda net, path, seed: torch.save(net.backbone.state_dict(), path),
        images=192,
        epochs=6,
    ),
    FLAIR_FILE: StandIn(
        lambda n, size, seed: generate_pretraining_corpus(n, size, seed=seed + 2000),
        "flair",
        lambda net, path, seed: save_flair_checkpoint(net, path, seed=seed),
        images=352,
        epochs=8,
        start_from=IMAGENET_FILE,
    ),
}


def _initial_net(stand_in: StandIn, out_dir: Path, seed: int) -> FeatureNet:
    normalize = WEIGHT_SOURCES[stand_in.source].normalize
    if stand_in.start_from is None:
        return build_feature_net(InitSpec(source="random", normalize=normalize), "resnet18", seed=seed)
    start = STAND_INS[stand_in.start_from]
    return build_feature_net(
        InitSpec(source=start.source, path=out_dir / stand_in.start_from, normalize=normalize), "resnet18"
    )


def make_demo_weights(
    out_dir: Path, *, size: int = 32, images: int | None = None, epochs: int | None = None, seed: int = 0
) -> dict:
    """Pretrain and save both stand-ins unless the same recipe is already in `out_dir`.

    Args:
        images, epochs: corpus size and epochs for every stand-in (None: each one's default).

    Returns:
        the manifest: recipe, file names, sha256, seconds and losses per stand-in.
    """
    out_dir = Path(out_dir)
    recipe = {
        "version": VERSION,
        "size": size,
        "seed": seed,
        "stand_ins": {
            name: {"images": images or s.images, "epochs": epochs or s.epochs, "start_from": s.start_from}
            for name, s in STAND_INS.items()
        },
    }
    manifest_path = out_dir / MANIFEST_FILE

    def built() -> bool:
        if not manifest_path.exists():
            return False
        manifest = json.loads(manifest_path.read_text())
        return manifest["recipe"] == recipe and all((out_dir / f).exists() for f in STAND_INS)

    pretrained = build_once(out_dir / f"{MANIFEST_FILE}.lock", built, lambda: _pretrain(out_dir, recipe, size, seed))
    return {**json.loads(manifest_path.read_text()), "cached": not pretrained}


def _pretrain(out_dir: Path, recipe: dict, size: int, seed: int) -> None:
    """Pretrain and save every stand-in, then the manifest (written last: it marks them whole)."""
    manifest = {"recipe": recipe, "files": {}}
    for name, stand_in in STAND_INS.items():
        start = time.perf_counter()
        plan = recipe["stand_ins"][name]
        pixels, targets, target_names = stand_in.corpus(plan["images"], size, seed)
        net = _initial_net(stand_in, out_dir, seed)
        losses = pretrain(net, pixels, targets, epochs=plan["epochs"], seed=seed)
        stand_in.save(net, out_dir / name, seed)
        manifest["files"][name] = {
            "sha256": file_sha256(out_dir / name),
            "seconds": round(time.perf_counter() - start, 1),
            "losses": [round(x, 4) for x in losses],
            "targets": list(target_names),
        }
    write_atomic(out_dir / MANIFEST_FILE, json.dumps(manifest, indent=2))
