"""Errors of the command line that are not input-file errors, and argument checks."""

import argparse


class UsageError(ValueError):
    """A command-line argument is wrong; the message says which and what to do."""


def number_above(minimum: float, kind: type = float, *, inclusive: bool = False):
    """An argparse `type`: a number of `kind` above `minimum` (or equal, with `inclusive`)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'} (got {text!r})")
        if value < minimum or (value == minimum and not inclusive):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum} (got {text})")
        return value

    return parse
