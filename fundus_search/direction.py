"""Whether a metric is better high or low: the one place `mode: max|min` turns into comparisons,
sort orders and running bests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODES = ("max", "min")


@dataclass(frozen=True)
class Direction:
    """`Direction("max")`: larger is better (the challenge's metrics); `Direction("min")`: smaller
    is better (a loss).

    Raises:
        ValueError: `mode` is neither "max" nor "min".
    """

    mode: str = "max"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode: must be 'max' or 'min' (got {self.mode!r})")

    @property
    def ascending(self) -> bool:
        """The pandas sort order that puts the best first."""
        return self.mode == "min"

    @property
    def sign(self) -> float:
        """+1 or -1: `sign * value` is larger when better."""
        return 1.0 if self.mode == "max" else -1.0

    @property
    def worst(self) -> float:
        """A value every real one beats."""
        return -np.inf if self.mode == "max" else np.inf

    def better(self, value: float, than: float | None) -> bool:
        """Whether `value` beats `than` (anything beats None)."""
        return than is None or (value > than if self.mode == "max" else value < than)

    def best(self, values):
        """The best of `values`."""
        return max(values) if self.mode == "max" else min(values)

    def running_best(self, values: np.ndarray) -> np.ndarray:
        """The best so far at each position; NaN where nothing is yet."""
        accumulate = np.fmax.accumulate if self.mode == "max" else np.fmin.accumulate
        curve = accumulate(np.nan_to_num(np.asarray(values, dtype=float), nan=self.worst))
        return np.where(np.isfinite(curve), curve, np.nan)
