"""`fundus-search demo-weights`: offline stand-ins for ImageNet and FLAIR weights, for the demo.

Two ResNet-18s pretrained for about a minute on the CPU:
- a generic stand-in for ImageNet: supervised on synthetic natural-image-like pictures
  (shapes, textures, colours; no fundus), saved as a torchvision state dict;
- a domain stand-in for FLAIR: supervised on a separate synthetic fundus corpus labelled with
  lesions and anatomy (never the hypertensive-retinopathy label), saved in FLAIR's key layout.
Both load through the real weight sources. They are stand-ins, not the real weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from data_io.shapes import generate_shapes_corpus
from data_io.synthetic import generate_pretraining_corpus
from models import InitSpec, build_feature_net
from models.pretrain import pretrain, save_flair_checkpoint
from models.weights import file_sha256

IMAGENET_FILE, FLAIR_FILE, MANIFEST_FILE = "imagenet_standin_resnet18.pth", "flair_standin_resnet18.pth", "demo-weights.json"
VERSION = 1  # bump when the recipe changes: cached files are then rebuilt


def add_parser(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-weights", help="pretrain the demo's ImageNet and FLAIR stand-ins (cached)")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--size", type=int, default=64, help="image side, px (the demo's image_size)")
    demo.add_argument("--images", type=int, default=512, help="images per pretraining corpus")
    demo.add_argument("--epochs", type=int, default=10)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(handler=demo_weights_command)


def make_demo_weights(out_dir: Path, *, size: int = 64, images: int = 512, epochs: int = 10, seed: int = 0) -> dict:
    """Pretrain and save both stand-ins unless the same recipe is already in `out_dir`.

    Returns:
        the manifest: recipe, file names, sha256, seconds and losses per stand-in.
    """
    out_dir = Path(out_dir)
    recipe = {"version": VERSION, "size": size, "images": images, "epochs": epochs, "seed": seed}
    manifest_path = out_dir / MANIFEST_FILE
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["recipe"] == recipe and all((out_dir / f).exists() for f in (IMAGENET_FILE, FLAIR_FILE)):
            return {**manifest, "cached": True}
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    corpora = {
        IMAGENET_FILE: lambda: generate_shapes_corpus(images, size, seed=seed + 1000),
        FLAIR_FILE: lambda: generate_pretraining_corpus(images, size, seed=seed + 2000),
    }
    manifest = {"recipe": recipe, "files": {}}
    for name, make_corpus in corpora.items():
        start = time.perf_counter()
        pixels, targets, target_names = make_corpus()
        net = build_feature_net(InitSpec(source="random"), "resnet18", seed=seed)
        losses = pretrain(net, pixels, targets, epochs=epochs, seed=seed)
        path = out_dir / name
        if name == FLAIR_FILE:
            save_flair_checkpoint(net, path, seed=seed)
        else:
            torch.save(net.backbone.state_dict(), path)
        manifest["files"][name] = {"sha256": file_sha256(path), "seconds": round(time.perf_counter() - start, 1),
                                   "losses": [round(x, 4) for x in losses], "targets": list(target_names)}
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return {**manifest, "cached": False}


def demo_weights_command(args: argparse.Namespace) -> int:
    manifest = make_demo_weights(args.out_dir, size=args.size, images=args.images, epochs=args.epochs, seed=args.seed)
    for name, info in manifest["files"].items():
        state = "cached" if manifest["cached"] else f"pretrained in {info['seconds']} s, loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}"
        print(f"{args.out_dir / name}: {state}")
    return 0
