"""`fundus-search` command line: parses arguments, runs a command, turns expected errors into one line."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys

from pydantic import ValidationError

from data_io import FoldError, ManifestError
from models import WeightsError

from results import ResultsError, ResultsWriteError

from . import data_commands, demo_weights, results_commands, search_commands, submit, train_command
from .config import ConfigError, format_validation_error
from .errors import UsageError

EXIT_USAGE = 2  # usage and input errors, as argparse uses

# Expected user mistakes: one line on stderr and exit 2. Anything else is a bug: traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ConfigError, ManifestError, FoldError, WeightsError, UsageError,
                                                     ResultsError)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other input error."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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


def quiet_third_party_notices() -> None:
    """Drop notices that say nothing new to our users: Optuna's "a new study created", Ray's
    reminder that token authentication is on (we keep it on), Tune's traceback of each failed
    trial (its last line is on the progress line and in trials.parquet, the whole of it in the
    trial's error.txt) and Ray's traces of trials cut off when a search stops on an error."""
    import optuna

    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage())


def _disk_full(exc: BaseException) -> str | None:
    """The first line of a disk-full error in `exc`'s chain of causes, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "disk is full" in text:
            return text[:300]
        exc = exc.__cause__ or exc.__context__
    return None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO if not args.debug else logging.DEBUG,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.debug:
        quiet_third_party_notices()
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
    except ResultsWriteError as exc:  # mid-run: rows already written stay readable
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # a full disk met outside our own writes (Ray's, SQLite's): still one line
        full = _disk_full(exc)
        if full is None or args.debug:
            raise
        print(f"error: no space left on the results disk ({full}); free space, then continue with "
              "`fundus-search resume`", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
