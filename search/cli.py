"""`fundus-search` command line: parses arguments, runs a command, turns expected errors into one line."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from data_io import FoldError, ManifestError
from models import WeightsError

from results import ResultsError

from . import data_commands, demo_weights, results_commands, search_commands, submit, train_command
from .config import ConfigError, format_validation_error
from .errors import UsageError

EXIT_USAGE = 2  # usage and input errors, as argparse uses

# Expected user mistakes: one line on stderr and exit 2. Anything else is a bug: traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ManifestError, FoldError, WeightsError, UsageError,
                                                     ResultsError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fundus-search",
        description="Hyperparameter search for transferring pretrained models to fundus images.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    data_commands.add_parser(commands)
    train_command.add_parser(commands)
    search_commands.add_parsers(commands)
    results_commands.add_parsers(commands)
    demo_weights.add_parser(commands)
    submit.add_parsers(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if not args.debug else logging.DEBUG,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except _USER_ERRORS as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationError as exc:
        if args.debug:
            raise
        print(f"error: {format_validation_error(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
