"""`fundus-search data check|cache|synth`: look at a dataset before searching on it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from fundus_search.search.cli._args import UsageError, number_above


def add_parsers(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser("data", help="check, cache or synthesise a dataset")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="validate every file and print counts; exit 2 on problems")
    check.add_argument("config", help="search YAML with a data: section")
    check.set_defaults(handler=check_command)
    cache = sub.add_parser("cache", help="build the decoded-image cache and print its path")
    cache.add_argument("config")
    cache.set_defaults(handler=cache_command)
    synth = sub.add_parser("synth", help="write a synthetic dataset in the CGI-HRDC layout")
    synth.add_argument("out_dir", type=Path)
    # defaults (None): data_io.SyntheticSpec's
    synth.add_argument("--n", type=number_above(10, int, inclusive=True), help="number of images")
    synth.add_argument("--size", type=number_above(32, int, inclusive=True), help="image side, px")
    synth.add_argument("--seed", type=int)
    synth.add_argument("--difficulty", type=float, help="0 easy .. 1 hard")
    synth.add_argument("--positive-fraction", type=float)
    synth.add_argument("--task", type=int, choices=(1, 2), default=2)
    synth.set_defaults(handler=synth_command)


def check_command(args: argparse.Namespace) -> int:
    from collections import Counter
    from dataclasses import replace

    import numpy as np

    from fundus_search.data_io import BadFile, BadFilesError, build_manifest, scan_images
    from fundus_search.data_io.manifest import MAX_LISTED_BAD_FILES
    from fundus_search.search.study.config import load_config

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
        print(
            f"size (WxH): min {sizes[:, 1].min()}x{sizes[:, 0].min()}, "
            f"max {sizes[:, 1].max()}x{sizes[:, 0].max()}, most common {common}"
        )
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


def cache_command(args: argparse.Namespace) -> int:
    from fundus_search.search.ops.folders import image_caches
    from fundus_search.search.study.config import load_config

    for cache in image_caches(load_config(args.config)).values():  # one per input size the inits use
        n, s = cache.images.shape[0], cache.images.shape[1]
        print(f"{n} images at {s}x{s} px, {len(cache.meta['excluded'])} excluded")
        print(cache.path)
    return 0


def synth_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from fundus_search.data_io.synthetic import write_cgi_hrdc
    from fundus_search.search.study.config import SyntheticConfig, format_validation_error

    given = {
        "n": args.n,
        "size": args.size,
        "seed": args.seed,
        "difficulty": args.difficulty,
        "positive_fraction": args.positive_fraction,
    }
    try:  # the config's ranges, checked before anything is written
        spec = SyntheticConfig(**{k: v for k, v in given.items() if v is not None}).to_spec()
    except ValidationError as exc:
        message = format_validation_error(exc, prefix="--")  # --positive_fraction -> --positive-fraction
        raise UsageError(re.sub(r"--\w+", lambda flag: flag.group().replace("_", "-"), message)) from None
    root = write_cgi_hrdc(spec, args.out_dir, task=args.task)
    print(f"wrote {spec.n} images ({spec.size} px) in the CGI-HRDC layout under {root.absolute()}")
    return 0
