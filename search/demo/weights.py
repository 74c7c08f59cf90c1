"""Offline stand-ins for ImageNet and FLAIR weights, for the demo (`fundus-search demo-weights`).

Two ResNet-18s pretrained for well under a minute on the CPU:
- a generic stand-in for ImageNet: supervised on synthetic natural-image-like pictures
  (shapes, textures, colours; no fundus) with ImageNet mean/std input normalisation, saved as
  a torchvision state dict (the torchvision source normalises the same way);
- a domain stand-in for FLAIR: supervised on a separate synthetic fundus corpus labelled with
  lesions and anatomy (never the hypertensive-retinopathy label), on [0, 1] inputs, saved in
  FLAIR's key layout.
Both load through the real weight sources. They are stand-ins, not the real weights.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import WEIGHT_SOURCES, FeatureNet, InitSpec, build_feature_net
from models.pretrain import pretrain, save_flair_checkpoint
from models.weights import file_sha256

from .corpora import generate_pretraining_corpus, generate_shapes_corpus

IMAGENET_FILE, FLAIR_FILE, MANIFEST_FILE = "imagenet_standin_resnet18.pth", "flair_standin_resnet18.pth", "demo-weights.json"
VERSION = 2  # bump when the recipe changes: cached files are then rebuilt (2: ImageNet stand-in normalised)


@dataclass(frozen=True)
class StandIn:
    """A stand-in: its pretraining corpus, the weight source that loads it (whose input
    normalisation the pretraining uses), and how it is saved for that source."""

    corpus: Callable[[int, int, int], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]  # (n, size, seed)
    source: str
    save: Callable[[FeatureNet, Path, int], object]  # (net, path, seed)


STAND_INS: dict[str, StandIn] = {
    IMAGENET_FILE: StandIn(lambda n, size, seed: generate_shapes_corpus(n, size, seed=seed + 1000), "torchvision",
                           lambda net, path, seed: torch.save(net.backbone.state_dict(), path)),
    FLAIR_FILE: StandIn(lambda n, size, seed: generate_pretraining_corpus(n, size, seed=seed + 2000), "flair",
                        lambda net, path, seed: save_flair_checkpoint(net, path, seed=seed)),
}


def make_demo_weights(out_dir: Path, *, size: int = 32, images: int = 192, epochs: int = 6, seed: int = 0) -> dict:
    """Pretrain and save both stand-ins unless the same recipe is already in `out_dir`.

    Returns:
        the manifest: recipe, file names, sha256, seconds and losses per stand-in.
    """
    out_dir = Path(out_dir)
    recipe = {"version": VERSION, "size": size, "images": images, "epochs": epochs, "seed": seed}
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["recipe"] == recipe and all((out_dir / f).exists() for f in STAND_INS):
            return {**manifest, "cached": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = {"recipe": recipe, "files": {}}
    for name, stand_in in STAND_INS.items():
        start = time.perf_counter()
        pixels, targets, target_names = stand_in.corpus(images, size, seed)
        normalize = WEIGHT_SOURCES[stand_in.source].normalize
        net = build_feature_net(InitSpec(source="random", normalize=normalize), "resnet18", seed=seed)
        losses = pretrain(net, pixels, targets, epochs=epochs, seed=seed)
        stand_in.save(net, out_dir / name, seed)
        manifest["files"][name] = {"sha256": file_sha256(out_dir / name),
                                   "seconds": round(time.perf_counter() - start, 1),
                                   "losses": [round(x, 4) for x in losses], "targets": list(target_names)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return {**manifest, "cached": False}
