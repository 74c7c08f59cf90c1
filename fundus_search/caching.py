"""Build a cached file once, whatever the number of processes asking at the same time: the one
rule of the decoded-image cache, the frozen-feature cache and the demo's stand-in weights."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from filelock import FileLock


def build_once(lock: Path, built: Callable[[], bool], build: Callable[[], None]) -> bool:
    """Run `build` unless `built()` already holds, under the file lock `lock`.

    The first process builds; the others wait on the lock, see `built()` hold and build
    nothing. `build` must make `built()` true only once its files are whole (write them under a
    temporary name, rename the last one into place), so a reader never sees half a cache.

    Returns:
        whether this call built it.
    """
    if built():
        return False
    Path(lock).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock)):
        if built():  # another process built it while this one waited
            return False
        build()
        return True
