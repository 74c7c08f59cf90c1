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


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """`--set key.path=value`, repeatable: the config with those values, validated like the YAML."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=override,
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set data.image_size=64 --set search.space.ft_lr=[1e-5,1e-3]",
    )


def override(text: str) -> tuple[str, object]:
    """An argparse `type`: `key.path=value`, the value read as YAML (a number, a list, a string)."""
    from fundus_search.search.study.config import ConfigError, parse_yaml_value

    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not all(part.strip() for part in key.split(".")):
        raise argparse.ArgumentTypeError(f"expected KEY.PATH=VALUE, e.g. data.image_size=64 (got {text!r})")
    try:
        return key.strip(), parse_yaml_value(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{key.strip()}: {exc}") from None
