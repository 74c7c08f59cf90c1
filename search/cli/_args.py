"""What the command modules share: the usage error, number checks for argparse, quiet notices."""

from __future__ import annotations

import argparse
import logging
import math

from fundus_search.vocabulary import UserError, check_name


class UsageError(UserError):
    """A command-line argument is wrong; the message names the flag and what to do."""


def number_above(minimum: float, kind: type = float, *, inclusive: bool = False, maximum: float | None = None):
    """An argparse `type`: a finite number of `kind` above `minimum` (or equal, with
    `inclusive`), and at most `maximum` when given."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} (got {text!r})"
            ) from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number (got {text})")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum} (got {text})")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum} (got {text})")
        return value

    return parse


def folder_name(text: str) -> str:
    """An argparse `type` for --name: see vocabulary.check_name."""
    try:
        return check_name(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def quiet_optuna() -> None:
    """Optuna logs "A new study created ..." at INFO; the search prints its own progress."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
