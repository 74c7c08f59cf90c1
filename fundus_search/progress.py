"""Progress of a slow step: a bar on a terminal; in a log (Ray Jobs, nohup, SLURM) a line now and then.

A bar redrawn with carriage returns is noise in a log file and invisible until the step ends, so
where stderr is not a terminal the step says how far it is every `every_s` seconds instead
(`$FUNDUS_SEARCH_PROGRESS_S`, default 30) and once more when it ends.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm


def progress_interval() -> float:
    """Seconds between progress lines in a log: $FUNDUS_SEARCH_PROGRESS_S, default 30."""
    try:
        return max(0.0, float(os.environ.get("FUNDUS_SEARCH_PROGRESS_S", 30)))
    except ValueError:
        return 30.0


class Progress:
    """`with Progress(n, "decode") as p: ... p.update(k)`: a tqdm bar, or periodic lines.

    Args:
        total: units of work.
        desc: what the step is, first on each line (`image cache 7734a83d: decode`).
        stream: where bar and lines go (stderr).
    """

    def __init__(self, total: int, desc: str, *, unit: str = "img", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total, self.desc, self.unit = total, desc, unit
        self.every_s = progress_interval()
        self.done, self.said, self.reported = 0, False, 0
        self.start = self.last = time.monotonic()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not self.terminal, file=self.stream)

    def update(self, n: int = 1) -> None:
        self.done = min(self.total, self.done + n)
        self.bar.update(n)
        if not self.terminal and time.monotonic() - self.last >= self.every_s:
            self._line()

    def _line(self) -> None:
        seconds = time.monotonic() - self.start
        print(f"{self.desc}: {self.done} of {self.total} {self.unit} ({seconds:.0f} s)", file=self.stream, flush=True)
        self.last, self.said, self.reported = time.monotonic(), True, self.done

    def close(self) -> None:
        self.bar.close()
        if self.said and self.reported != self.done:
            self._line()  # the end of a step that reported along the way

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
