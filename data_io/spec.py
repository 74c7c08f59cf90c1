"""Typed description of a dataset and its preprocessing, as `data_io` receives it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from fundus_search.data_io.preprocess import Preprocessing

CACHE_ENV = "FUNDUS_SEARCH_CACHE"


def default_cache_dir() -> Path:
    """$FUNDUS_SEARCH_CACHE, else ~/.cache/fundus-search."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fundus-search").absolute()


@dataclass(frozen=True)
class SyntheticSpec:
    """A generated hypertensive-retinopathy dataset (see `data_io.synthetic`).

    Args:
        n: number of images.
        size: image side in px.
        seed: generator seed; the same seed gives the same bytes.
        difficulty: 0 (classes far apart) to 1 (heavily overlapping).
        positive_fraction: share of the positive class.
    """

    n: int = 400
    size: int = 128
    seed: int = 0
    difficulty: float = 0.5
    positive_fraction: float = 0.41  # CGI-HRDC task 2: 292 / 712


@dataclass(frozen=True)
class DataSpec:
    """Where the images are, how to label them, and how to preprocess them. How they are split
    into folds is the search's business (`data_io.folds`, called with the config's data.folds).

    `root` and `csv` are absolute by the time they reach here (the config resolves them).
    """

    source: str = "synthetic"
    root: Path | None = None
    task: int = 1
    csv: Path | None = None
    classes: tuple[str, ...] = ()
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    image_size: int = 512
    crop_foreground: bool = False
    skip_bad: bool = False
    cache_dir: Path | None = None

    @property
    def preprocessing(self) -> Preprocessing:
        return Preprocessing(image_size=self.image_size, crop_foreground=self.crop_foreground)

    def resolved_cache_dir(self) -> Path:
        return Path(self.cache_dir).absolute() if self.cache_dir else default_cache_dir()
