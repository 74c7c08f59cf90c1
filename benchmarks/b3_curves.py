"""The tabular surrogate of B3: learning curves of a grid of configurations, computed once.

Every configuration of GRID (per init of the demo: 4 lp + 6 ft + 18 lp_ft = 28) is trained by
the real Trainer on the demo's synthetic task for MAX_EPOCHS main-phase epochs; each epoch's
validation metrics are one row of `benchmarks/data/b3_curves.parquet`. B3 then replays these
curves through the search stack instead of training, so a search costs seconds, not hours.

    .venv/bin/python -m benchmarks.b3_curves      # about 25 minutes on 2 cores; rewrites the table
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.b3_replay import HYPER
from benchmarks.common import machine, versions
from fundus_search.data_io import prepare_images
from fundus_search.search.demo.weights import make_demo_weights
from fundus_search.search.engine.trial import DatasetInfo, TrialConfig, make_trainer
from fundus_search.search.study.config import Config, load_config
from fundus_search.search.study.space import trial_seed

ROOT = Path(__file__).resolve().parent.parent
TABLE = Path(__file__).parent / "data" / "b3_curves.parquet"
DEMO_CONFIG = ROOT / "search" / "configs" / "demo.yaml"
MAX_EPOCHS = 12
WEIGHT_DECAY = 1e-4

# The grid per init: every combination of the listed values of the strategy's parameters.
GRID: dict[str, dict[str, list]] = {
    "lp": {"lp_lr": [1e-4, 1e-3, 1e-2, 1e-1]},
    "ft": {"ft_lr": [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]},
    "lp_ft": {"lp_lr": [1e-3, 1e-2, 1e-1], "ft_lr": [1e-5, 1e-4, 1e-3], "lp_epochs": [2, 8]},
}
TINY_GRID: dict[str, dict[str, list]] = {"lp": {"lp_lr": [1e-3, 1e-1]}, "ft": {"ft_lr": [1e-4, 1e-3]}}
SCHEMA = pa.schema(
    [
        ("config_id", pa.int32()),
        ("init", pa.string()),
        ("strategy", pa.string()),
        ("lp_lr", pa.float64()),
        ("ft_lr", pa.float64()),
        ("lp_epochs", pa.int32()),
        ("epoch", pa.int32()),
        ("val_average", pa.float64()),
        ("epoch_seconds", pa.float64()),
    ]
)


def grid_points(inits: list[str], grid: dict[str, dict[str, list]]) -> list[dict]:
    """Every (init, strategy, hyperparameters) of the grid, parameters that do not apply as None."""
    points = []
    for init in inits:
        for strategy, values in grid.items():
            for combo in itertools.product(*values.values()):
                fixed = {"init": init, "strategy": strategy, **{k: None for k in HYPER}}
                points.append({**fixed, **dict(zip(values, combo, strict=True))})
    return points


def tiny_config(cache_dir: Path) -> Config:
    """Seconds-long stand-in of the demo for `--tiny`: random init only, 32 px, 48 images."""
    return Config.model_validate(
        {
            "name": "b3-tiny",
            "data": {
                "source": "synthetic",
                "synthetic": {"n": 48, "size": 32},
                "image_size": 32,
                "folds": 3,
                "crop_foreground": False,
                "cache_dir": str(cache_dir),
            },
            "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
            "search": {"space": {"batch_size": [16]}},
        }
    )


def build_table(path: Path, *, tiny: bool = False) -> pa.Table:
    """Train every grid point for max_epochs and write the curves to `path` (Parquet)."""
    if tiny:
        config, grid, max_epochs = tiny_config(path.parent / "cache"), TINY_GRID, 3
    else:
        make_demo_weights(ROOT / ".cache" / "demo-weights")  # what `make run` builds; cached
        config, grid, max_epochs = load_config(DEMO_CONFIG), GRID, MAX_EPOCHS
    torch.set_num_threads(2)
    spec = config.data.to_spec()
    cache = prepare_images(spec)
    info = DatasetInfo.of(cache, spec.resolved_cache_dir())
    rows, start = [], time.perf_counter()
    points = grid_points(list(config.inits), grid)
    for config_id, point in enumerate(points):
        params = {
            **point,
            "weight_decay": WEIGHT_DECAY,
            "batch_size": config.search.space.batch_size[0],
            "seed": trial_seed(0, config_id),
            "fold": config.data.fold,
            "max_epochs": max_epochs,
        }
        trainer, _ = make_trainer(config, TrialConfig.of(params), cache.images, info)
        for metrics in trainer.epochs():
            rows.append(
                {
                    "config_id": config_id,
                    **point,
                    "epoch": metrics["epoch"],
                    "val_average": metrics["val_average"],
                    "epoch_seconds": metrics["epoch_seconds"],
                }
            )
        print(
            f"[{config_id + 1}/{len(points)}] {point['init']}/{point['strategy']} "
            f"{ {k: point[k] for k in HYPER if point[k] is not None} }: best val_average "
            f"{max(r['val_average'] for r in rows if r['config_id'] == config_id):.3f} "
            f"({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    meta = {
        "max_epochs": max_epochs,
        "weight_decay": WEIGHT_DECAY,
        "grid": grid,
        "inits": list(config.inits),
        "config": config.model_dump(mode="json"),
        "seconds": round(time.perf_counter() - start, 1),
        "machine": machine(),
        "versions": versions(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    table = pa.Table.from_pylist(rows, schema=SCHEMA).replace_schema_metadata({"b3": json.dumps(meta)})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
    return table


def read_table(path: Path = TABLE) -> tuple[pa.Table, dict]:
    """The curves and the recipe they were computed with."""
    if not path.exists():
        raise SystemExit(
            f"{path}: no curve table; compute it with `.venv/bin/python -m benchmarks.b3_curves` "
            f"(about 25 minutes on 2 cores)"
        )
    table = pq.read_table(path)
    return table, json.loads(table.schema.metadata[b"b3"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TABLE)
    args = parser.parse_args()
    table = build_table(args.out)
    print(f"{args.out}: {table.num_rows} rows")
