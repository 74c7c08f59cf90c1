"""`fundus-search report`: one self-contained HTML page per study (no Ray), from its files and its
stored config, validated with the schema `run` uses."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.search.cli._args import folder_name


def add_parsers(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "report", help="write one self-contained HTML page: the answer, the plots, the provenance"
    )
    report.add_argument("results", type=Path, help="a search folder (its evaluation, if any, is included)")
    report.add_argument("-o", "--output", type=Path, help="the HTML file (default: <search>/report.html)")
    report.add_argument(
        "--evaluation",
        type=folder_name,
        metavar="NAME",
        help="the evaluation to show, as named by `evaluate --name` (default: evaluation)",
    )
    report.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    from fundus_search.results.report import write_report
    from fundus_search.search.study.config import load_config
    from fundus_search.vocabulary import CONFIG_FILE

    if (args.results / CONFIG_FILE).is_file():  # the stored config, checked as `run` checks it
        load_config(args.results / CONFIG_FILE)
    out = write_report(args.results, args.output, evaluation=args.evaluation)
    print(f"report: {out.absolute()}")
    print(f"open:   file://{out.absolute()}  (self-contained: no network needed)")
    return 0
