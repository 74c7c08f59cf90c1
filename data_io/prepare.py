"""From a DataSpec to the cached image array: manifest, checks, decode once."""

from __future__ import annotations

from fundus_search.data_io.image_cache import ImageCache, load_or_build_image_cache
from fundus_search.data_io.manifest import build_manifest
from fundus_search.data_io.spec import DataSpec


def prepare_images(spec: DataSpec, *, num_workers: int | None = None) -> ImageCache:
    """Checked, decoded, preprocessed images of `spec`, from the cache when already built.

    Raises:
        ManifestError / BadFilesError: the dataset is unusable as configured; nothing is written.
    """
    manifest = build_manifest(spec)
    return load_or_build_image_cache(
        manifest,
        spec.preprocessing,
        spec.resolved_cache_dir(),
        skip_bad=spec.skip_bad,
        num_workers=num_workers,
    )
