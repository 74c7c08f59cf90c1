"""`fundus-search report`: one self-contained HTML page per study (no Ray, no torch)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parsers(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser("report", help="write one self-contained HTML page: the answer, the plots, "
                                                "the provenance")
    report.add_argument("results", type=Path, help="a search folder (its evaluation, if any, is included)")
    report.add_argument("-o", "--output", type=Path, help="the HTML file (default: <search>/report.html)")
    report.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    from results.report import write_report

    out = write_report(args.results, args.output)
    print(f"report: {out.absolute()}")
    print(f"open:   file://{out.absolute()}  (self-contained: no network needed)")
    return 0
