"""The decoded-image cache: one (N, S, S, 3) uint8 .npy per (dataset fingerprint, preprocessing).

Images are decoded once, in parallel threads (Pillow releases the GIL while decoding and
resizing, and threads need no `if __name__ == "__main__"` guard in the caller's script),
straight into a memory-mapped temporary file that is
renamed into place when complete; the JSON sidecar is written last, so its presence means
the cache is whole. A file lock makes concurrent builders of one key build it once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from fundus_search.caching import build_once
from fundus_search.data_io.manifest import BadFile, BadFilesError, Manifest, check_classes
from fundus_search.data_io.preprocess import Preprocessing, decode_image, preprocess_file
from fundus_search.progress import Progress

log = logging.getLogger(__name__)

CACHE_FORMAT = 3  # bump when the pixels a given Preprocessing produces change (3: resize one axis at a time)
_CHUNK = 16  # images per task handed to a worker thread


@dataclass
class ImageCache:
    """A built cache: the memory-mapped array and what each row is."""

    images: np.ndarray  # (N, S, S, 3) uint8, memory-mapped read-only
    labels: np.ndarray  # (N,) int64
    groups: list[str]
    paths: list[str]
    classes: tuple[str, ...]
    key: str
    path: Path
    meta: dict

    def __len__(self) -> int:
        return len(self.labels)


def fingerprint_manifest(manifest: Manifest) -> str:
    """sha256 over classes and every row's path, label, group, size and file contents."""
    digest = hashlib.sha256(json.dumps(list(manifest.classes)).encode())
    for i, relpath in enumerate(manifest.paths):
        full = manifest.absolute(i)
        with open(full, "rb") as f:
            content = hashlib.file_digest(f, "sha256").hexdigest()
        row = [relpath, int(manifest.labels[i]), manifest.groups[i], full.stat().st_size, content]
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()


def cache_key(fingerprint: str, preprocessing: Preprocessing) -> str:
    payload = json.dumps(
        {"fingerprint": fingerprint, "preprocessing": preprocessing.to_dict(), "format": CACHE_FORMAT}, sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def load_or_build_image_cache(
    manifest: Manifest,
    preprocessing: Preprocessing,
    cache_dir: Path,
    *,
    skip_bad: bool = False,
    num_workers: int | None = None,
) -> ImageCache:
    """Return the cached array for this manifest and preprocessing, building it if needed.

    Args:
        manifest: checked rows (see `build_manifest`).
        preprocessing: image size and crop; part of the key.
        cache_dir: the cache root; the array lives in `cache_dir/images/<key>.npy`.
        skip_bad: exclude files that fail to decode (recorded in the sidecar) instead of failing.
        num_workers: decoding threads; 0 decodes inline; None uses one per core.

    Raises:
        BadFilesError: files fail to decode and `skip_bad` is false. Nothing is written.
    """
    fingerprint = fingerprint_manifest(manifest)
    key = cache_key(fingerprint, preprocessing)
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = folder / f"{key}.json"  # renamed into place last: the cache is whole once it exists
    build_once(
        folder / f"{key}.lock",
        sidecar.exists,
        lambda: _build(manifest, preprocessing, folder, key, fingerprint, skip_bad, num_workers),
    )
    return _load(folder, key)


def _load(folder: Path, key: str) -> ImageCache:
    meta = json.loads((folder / f"{key}.json").read_text())
    images = np.load(folder / f"{key}.npy", mmap_mode="r")
    return ImageCache(
        images=images,
        labels=np.asarray(meta["labels"], dtype=np.int64),
        groups=meta["groups"],
        paths=meta["paths"],
        classes=tuple(meta["classes"]),
        key=key,
        path=folder / f"{key}.npy",
        meta=meta,
    )


def _build(manifest, preprocessing, folder, key, fingerprint, skip_bad, num_workers) -> None:
    start = time.perf_counter()
    tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
    size = preprocessing.image_size
    open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(manifest), size, size, 3)).flush()
    try:
        jobs = [
            (str(tmp), [str(manifest.absolute(i)) for i in chunk], list(chunk), preprocessing)
            for chunk in _chunks(range(len(manifest)))
        ]
        units = [len(job[2]) for job in jobs]
        decoded = _map(_decode_into, jobs, units, num_workers, f"image cache {key}: decoding")
        errors = [err for result in decoded for err in result]
        bad = [BadFile(manifest.paths[i], reason) for i, reason in errors]
        if bad and not skip_bad:
            raise BadFilesError(bad)
        if bad:
            manifest, tmp = _drop_rows(manifest, tmp, bad, [i for i, _ in errors])
            check_classes(manifest)
        os.replace(tmp, folder / f"{key}.npy")
    finally:
        tmp.unlink(missing_ok=True)
    meta = {
        "key": key,
        "fingerprint": fingerprint,
        "preprocessing": preprocessing.to_dict(),
        "root": str(manifest.root),
        "classes": list(manifest.classes),
        "paths": manifest.paths,
        "labels": manifest.labels.tolist(),
        "groups": manifest.groups,
        "excluded": [{"path": b.path, "reason": b.reason} for b in manifest.excluded],
        "shape": [len(manifest), size, size, 3],
        "format": CACHE_FORMAT,
        "build_seconds": round(time.perf_counter() - start, 3),
        "built_at": time.time(),
    }
    tmp_meta = folder / f"{key}.{os.getpid()}.tmp.json"
    tmp_meta.write_text(json.dumps(meta))
    os.replace(tmp_meta, folder / f"{key}.json")
    log.info("image cache %s: %d images decoded in %.1f s", key, len(manifest), meta["build_seconds"])


def _drop_rows(manifest: Manifest, tmp: Path, bad: list[BadFile], rows: list[int]):
    """Copy the good rows of `tmp` into a smaller array; return the new manifest and file."""
    keep = np.setdiff1d(np.arange(len(manifest)), rows)
    src = np.load(tmp, mmap_mode="r")
    smaller = tmp.with_name(tmp.name.replace(".tmp.", ".kept.tmp."))
    dst = open_memmap(smaller, mode="w+", dtype=np.uint8, shape=(len(keep),) + src.shape[1:])
    dst[:] = src[keep]
    dst.flush()
    del src, dst
    tmp.unlink()
    return manifest.without(bad), smaller


def scan_images(manifest: Manifest, *, num_workers: int | None = None) -> list[tuple[int, int] | str]:
    """Decode every file once: (height, width) per row, or the error text where it fails."""
    jobs = [[str(manifest.absolute(i)) for i in chunk] for chunk in _chunks(range(len(manifest)))]
    units = [len(job) for job in jobs]
    return [item for result in _map(_scan, jobs, units, num_workers, "checking images") for item in result]


def _decode_into(job) -> list[tuple[int, str]]:
    """Worker: decode a chunk of files into rows of the memmap; return failures."""
    tmp, files, rows, preprocessing = job
    out = np.load(tmp, mmap_mode="r+")
    errors = []
    for path, row in zip(files, rows, strict=True):
        try:
            out[row] = preprocess_file(path, preprocessing)
        except (OSError, ValueError, SyntaxError) as exc:  # Pillow's decode errors
            errors.append((row, f"does not decode: {exc}"))
    out.flush()
    return errors


def _scan(files: list[str]) -> list[tuple[int, int] | str]:
    results: list[tuple[int, int] | str] = []
    for path in files:
        try:
            results.append(decode_image(path).shape[:2])
        except (OSError, ValueError, SyntaxError) as exc:
            results.append(f"does not decode: {exc}")
    return results


def _chunks(indices: range) -> Iterable[range]:
    return (indices[i : i + _CHUNK] for i in range(0, len(indices), _CHUNK))


def _map(fn: Callable, jobs: list, units: list[int], num_workers: int | None, desc: str) -> list:
    """fn over jobs, in order, in worker threads (inline for 0 workers or a few jobs), its
    progress counted in `units` (images) per job."""
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    results = []
    with Progress(sum(units), desc) as progress:
        if workers <= 1 or len(jobs) < 2:
            for job, n in zip(jobs, units, strict=True):
                results.append(fn(job))
                progress.update(n)
        else:
            with ThreadPoolExecutor(min(workers, len(jobs))) as pool:
                for result, n in zip(pool.map(fn, jobs), units, strict=True):
                    results.append(result)
                    progress.update(n)
    return results
