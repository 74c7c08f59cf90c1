"""fundus-search: hyperparameter search for transferring pretrained models to fundus images.

The package's rooms keep the design's top-level folders: `fundus_search.search` is `search/`,
`fundus_search.models` is `models/`, `fundus_search.data_io` is `data_io/` and
`fundus_search.results` is `results/` (pyproject.toml maps them with setuptools' `package-dir`).
This folder holds the bottom layer that every room imports: the vocabulary, the challenge's
metrics and the paired statistics.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

# A source checkout (an editable install, or a Ray job's copied working directory) has the rooms
# beside this folder rather than inside it; look for them there.
_checkout = Path(__file__).resolve().parent.parent
if not (Path(__file__).parent / "search").is_dir() and (_checkout / "search" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 (a package's __path__)

try:
    __version__ = metadata.version("fundus-search")
except metadata.PackageNotFoundError:  # a copied checkout that was never installed
    __version__ = "0+unknown"
