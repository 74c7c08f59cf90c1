"""`fundus-search data check|cache|synth`: look at a dataset before searching on it."""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from data_io import BadFile, BadFilesError, SyntheticSpec, build_manifest, prepare_images, scan_images
from data_io.manifest import MAX_LISTED_BAD_FILES
from data_io.synthetic import write_cgi_hrdc

from .config import load_config


def add_parser(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check, cache or synthesise a dataset")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate every file and print counts; exit 2 on problems")
    check.add_argument("config", help="search YAML with a data: section")
    check.set_defaults(handler=check_dataset)
    cache = sub.add_parser("cache", help="build the decoded-image cache and print its path")
    cache.add_argument("config")
    cache.set_defaults(handler=cache_dataset)
    synth = sub.add_parser("synth", help="write a synthetic dataset in the CGI-HRDC layout")
    synth.add_argument("out_dir", type=Path)
    defaults = SyntheticSpec()
    synth.add_argument("--n", type=int, default=defaults.n, help="number of images")
    synth.add_argument("--size", type=int, default=defaults.size, help="image side, px")
    synth.add_argument("--seed", type=int, default=defaults.seed)
    synth.add_argument("--difficulty", type=float, default=defaults.difficulty, help="0 easy .. 1 hard")
    synth.add_argument("--positive-fraction", type=float, default=defaults.positive_fraction)
    synth.add_argument("--task", type=int, choices=(1, 2), default=2)
    synth.set_defaults(handler=synthesise_dataset)


def check_dataset(args: argparse.Namespace) -> int:
    spec = load_config(args.config).data.to_spec()
    manifest = build_manifest(replace(spec, skip_bad=True))  # collect every problem, then judge
    scanned = scan_images(manifest)
    bad = manifest.excluded + [BadFile(manifest.paths[i], r) for i, r in enumerate(scanned) if isinstance(r, str)]
    sizes = np.array([r for r in scanned if not isinstance(r, str)]).reshape(-1, 2)
    print(f"dataset: {spec.source} at {manifest.root}")
    print(f"images:  {len(manifest) + len(manifest.excluded)} listed, {len(sizes)} readable")
    for name, count in manifest.class_counts().items():
        print(f"  {name:<32} {count}")
    if len(sizes):
        common = Counter(f"{w}x{h}" for h, w in sizes).most_common(3)
        print(f"size (WxH): min {sizes[:, 1].min()}x{sizes[:, 0].min()}, "
              f"max {sizes[:, 1].max()}x{sizes[:, 0].max()}, most common {common}")
    if not bad:
        print("ok: no problems found")
        return 0
    print(f"{len(bad)} bad file(s):")
    for b in bad[:MAX_LISTED_BAD_FILES]:
        print(f"  {b.path}: {b.reason}")
    if spec.skip_bad:
        print("data.skip_bad is true: these files will be excluded and recorded in the cache")
        return 0
    raise BadFilesError(bad)


def cache_dataset(args: argparse.Namespace) -> int:
    cache = prepare_images(load_config(args.config).data.to_spec())
    n, s = cache.images.shape[0], cache.images.shape[1]
    print(f"{n} images at {s}x{s} px, {len(cache.meta['excluded'])} excluded")
    print(cache.path)
    return 0


def synthesise_dataset(args: argparse.Namespace) -> int:
    spec = SyntheticSpec(n=args.n, size=args.size, seed=args.seed, difficulty=args.difficulty,
                         positive_fraction=args.positive_fraction)
    root = write_cgi_hrdc(spec, args.out_dir, task=args.task)
    print(f"wrote {spec.n} images ({spec.size} px) in the CGI-HRDC layout under {root.absolute()}")
    return 0
