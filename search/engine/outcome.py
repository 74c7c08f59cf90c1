"""How a trial ended, derived from its last report (so it survives a driver restart)."""

from __future__ import annotations

from fundus_search.vocabulary import COMPLETED, ERROR, STOPPED_EARLY


def trial_status(last_result: dict | None, *, error: bool) -> str:
    """`error`, `completed` (ran every planned main-phase epoch) or `stopped_early` (by the scheduler)."""
    if error:
        return ERROR
    if last_result and last_result.get("epoch", 0) >= last_result.get("epochs_planned", float("inf")):
        return COMPLETED
    return STOPPED_EARLY
