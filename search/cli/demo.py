"""`fundus-search demo-weights`: pretrain the demo's offline ImageNet and FLAIR stand-ins (cached)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.search.cli._args import number_above


def add_parsers(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo-weights", help="pretrain the demo's ImageNet and FLAIR stand-ins (cached)")
    demo.add_argument("out_dir", type=Path)
    # defaults (None): search.demo.weights.make_demo_weights's
    demo.add_argument(
        "--size", type=number_above(32, int, inclusive=True), help="image side, px (the demo's image_size)"
    )
    demo.add_argument(
        "--images",
        type=number_above(8, int, inclusive=True),
        help="images in each pretraining corpus (default: each stand-in's own)",
    )
    demo.add_argument("--epochs", type=number_above(1, int, inclusive=True), help="default: each stand-in's own")
    demo.add_argument("--seed", type=int)
    demo.set_defaults(handler=demo_weights_command)


def demo_weights_command(args: argparse.Namespace) -> int:
    from fundus_search.search.demo.weights import make_demo_weights

    given = {"size": args.size, "images": args.images, "epochs": args.epochs, "seed": args.seed}
    manifest = make_demo_weights(args.out_dir, **{k: v for k, v in given.items() if v is not None})
    for name, info in manifest["files"].items():
        state = (
            "cached"
            if manifest["cached"]
            else (f"pretrained in {info['seconds']} s, loss {info['losses'][0]:.3f} -> {info['losses'][-1]:.3f}")
        )
        print(f"{args.out_dir / name}: {state}")
    return 0
