"""`fundus-search` command line: builds the parser from the command registry, runs a command,
turns expected errors into one line on stderr."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import importlib
import logging
import os
import sys

from fundus_search.search.cli import COMMAND_MODULES
from fundus_search.vocabulary import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (exit 2), like every other input error."""

    def error(self, message: str):
        self.exit(UserError.exit_code, f"error: {self.prog}: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fundus-search", description="Hyperparameter search for transferring pretrained models to fundus images."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors, and Ray's notices")
    parser.add_argument("--version", action="version", version=f"fundus-search {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{name}").add_parsers(commands)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fundus-search")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "(not installed)"


def quiet_third_party_notices() -> None:
    """Drop notices that say nothing new to our users: Ray's reminder that token authentication
    is on (we keep it on), Tune's traceback of each failed trial (its last line is on the
    progress line and in trials.parquet, the whole of it in the trial's error.txt) and Ray's
    traces of trials cut off when a search stops on an error, and Ray's tracebacks of a sync or
    a searcher's write that failed on a full disk (the one error line says so)."""
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(
        lambda record: "Token authentication is enabled" not in record.getMessage()
    )
    logging.getLogger("ray.train._internal.syncer").addFilter(
        lambda record: "No space left on device" not in record.getMessage()
    )
    # Tune logs the traceback of a searcher that failed as a trial stopped; on a full disk (Optuna's
    # SQLite write) the one error line says it, as for any other write
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(
        lambda record: not (record.exc_info and disk_full(record.exc_info[1]))
    )


def disk_full(exc: BaseException) -> str | None:
    """The first line of a disk-full error in `exc`'s chain of causes (Ray's own writes,
    SQLite's), or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "disk is full" in text:
            return text[:300]
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def _token_mode(on: bool):
    """A command that contacts a cluster (as a driver, or over the Jobs API) sends the cluster's
    token only in Ray's token mode: keep authentication on while it runs, then put the
    environment back, so a later command in the same process (tests, notebooks) is unaffected."""
    set_here = on and "RAY_AUTH_MODE" not in os.environ
    if set_here:
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        yield
    finally:
        if set_here:
            os.environ.pop("RAY_AUTH_MODE", None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed as one line
        return int(exc.code or 0)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.debug:
        quiet_third_party_notices()
    try:
        with _token_mode(bool(getattr(args, "address", None))):
            code = int(args.handler(args) or 0)
        sys.stdout.flush()  # a reader gone early (`best --json | head`) is met here, not at exit
        return code
    except UserError as exc:  # expected: one line; anything else is a bug and keeps its traceback
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `best --json | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's own flush at exit would fail again
        return 0
    except Exception as exc:
        full = disk_full(exc)
        if full is None or args.debug:
            raise
        print(
            f"error: no space left on the results disk ({full}); free space, then continue with "
            "`fundus-search resume` on the search (or evaluation) folder",
            file=sys.stderr,
        )
        return 1


def entry_point() -> None:
    """The `fundus-search` executable: `main`, then an exit without the interpreter's last
    garbage collection, a walk over every object torch, Ray and Tune made (a 4-trial `run` on
    2 cores: 6.0 s from its last line to its exit before, 2.7 s after). Ray's own exit handler
    still stops the processes it started."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
