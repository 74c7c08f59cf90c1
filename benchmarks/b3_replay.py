"""What B3's trial workers import: the stored curves and the trainable replaying them.

Kept apart from the benchmark driver so that a worker imports Ray Tune only, not torch.
"""

from __future__ import annotations

import math
from collections import defaultdict

from ray import tune

HYPER = ("lp_lr", "ft_lr", "lp_epochs")


class Curves:
    """The stored curves by grid point, and the nearest grid point of a trial's parameters.

    Args:
        rows: the curve table as dicts: config_id, init, strategy, HYPER, epoch, val_average,
            epoch_seconds (what that epoch cost when the table was computed).
    """

    def __init__(self, rows: list[dict]):
        self.points: dict[int, dict] = {}
        self.values: dict[int, list[float]] = defaultdict(list)
        self.seconds: dict[int, list[float]] = defaultdict(list)
        for row in sorted(rows, key=lambda r: (r["config_id"], r["epoch"])):
            self.points.setdefault(row["config_id"], {k: row[k] for k in ("init", "strategy", *HYPER)})
            self.values[row["config_id"]].append(row["val_average"])
            self.seconds[row["config_id"]].append(row["epoch_seconds"])
        self.cells: dict[tuple, list[int]] = defaultdict(list)
        for config_id, point in self.points.items():
            self.cells[(point["init"], point["strategy"])].append(config_id)

    def nearest(self, params: dict) -> int:
        """The grid point of params' cell closest to params, in summed |log ratio|."""

        def distance(config_id: int) -> float:
            point = self.points[config_id]
            return sum(abs(math.log(params[k]) - math.log(point[k])) for k in HYPER if point[k] is not None)

        return min(self.cells[(params["init"], params["strategy"])], key=distance)

    def best(self, config_id: int) -> float:
        return max(self.values[config_id])

    @property
    def grid_best(self) -> float:
        return max(self.best(c) for c in self.points)

    @property
    def grid_epochs(self) -> int:
        return sum(len(v) for v in self.values.values())

    @property
    def grid_seconds(self) -> float:
        return sum(sum(v) for v in self.seconds.values())


def replay_trial(params: dict, *, curves: Curves) -> None:
    """The trainable: report the stored curve of the nearest grid point, one epoch at a time."""
    config_id = curves.nearest(params)
    curve = curves.values[config_id]
    for epoch, value in enumerate(curve, start=1):
        tune.report({"epoch": epoch, "val_average": value, "epochs_planned": len(curve), "config_id": config_id})
