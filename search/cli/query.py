"""`fundus-search best|table|tensorboard`: read searches' results without Ray or torch."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from fundus_search.search.cli._args import number_above
from fundus_search.vocabulary import AVERAGE, EVALUATION_FILE, TENSORBOARD_DIR, val


def add_parsers(commands: argparse._SubParsersAction) -> None:
    best = commands.add_parser("best", help="print the best configurations of one or more searches")
    best.add_argument("results", nargs="+", help="search folder(s), or a folder of searches")
    best.add_argument("--top", type=number_above(1, int, inclusive=True), default=5)
    best.add_argument("--metric", default=val(AVERAGE))
    best.add_argument("--mode", choices=("max", "min"), default="max")
    best.add_argument(
        "--where",
        help="filter, e.g. \"strategy == 'lp_ft' and best_val_kappa > 0.3\" (comparisons, in, and/or/not; never code)",
    )
    _add_formats(best)
    best.set_defaults(handler=best_command)
    table = commands.add_parser("table", help="print the init x strategy table (the paper's shape)")
    table.add_argument("results", nargs="+")
    table.add_argument("--metric", default=val(AVERAGE))
    table.add_argument(
        "--evaluation", action="store_true", help="the cross-validated table and comparisons of the search's evaluation"
    )
    _add_formats(table)
    table.set_defaults(handler=table_command)
    board = commands.add_parser("tensorboard", help="serve the searches' TensorBoard runs on 127.0.0.1")
    board.add_argument("results", nargs="+")
    board.add_argument("--port", type=int, default=6006)
    board.set_defaults(handler=tensorboard_serve_command)


def _add_formats(parser: argparse.ArgumentParser) -> None:
    formats = parser.add_mutually_exclusive_group()
    formats.add_argument("--json", action="store_true", help="JSON records on stdout")
    formats.add_argument("--csv", action="store_true", help="CSV on stdout")


def print_frame(frame, args: argparse.Namespace, text: str) -> None:
    """`frame` as JSON records or CSV when asked, else `text`."""
    if args.json:
        print(frame.to_json(orient="records", indent=2))
    elif args.csv:
        print(frame.to_csv(index=False), end="")
    else:
        print(text)


def best_command(args: argparse.Namespace) -> int:
    from fundus_search.results import best_configs, load_trials
    from fundus_search.results.tables import best_columns, format_best

    rows = best_configs(load_trials(args.results), metric=args.metric, mode=args.mode, top=args.top, where=args.where)
    rows = rows[best_columns(rows, args.metric)]
    print_frame(rows, args, format_best(rows))
    return 0


def table_command(args: argparse.Namespace) -> int:
    if args.evaluation:
        return evaluation_table_command(args)
    from fundus_search.results import init_strategy_table, load_trials
    from fundus_search.results.tables import format_table, format_winners

    trials = load_trials(args.results)
    table = init_strategy_table(trials, metric=args.metric)
    print_frame(table, args, format_table(table, args.metric) + "\n" + format_winners(table, trials, args.metric))
    return 0


def evaluation_table_command(args: argparse.Namespace) -> int:
    """The evaluation's answer (verdict, grid, comparisons, table), from its Parquet files; no Ray, no torch. An
    unfinished evaluation says so first: how many runs finished and which are missing."""
    from fundus_search.results.answer import (
        evaluation_progress,
        evaluation_table,
        find_evaluation,
        load_comparisons,
        load_evaluation,
    )
    from fundus_search.results.layout import EvaluationFolder
    from fundus_search.results.tables import format_answer

    for path in args.results:
        folder = find_evaluation(path)
        runs, predictions = load_evaluation(folder)
        progress = evaluation_progress(folder)
        table = evaluation_table(runs, predictions)
        text = format_answer(table, load_comparisons(folder), EvaluationFolder.open(folder))
        if not progress.complete:
            text = f"INCOMPLETE: {progress.sentence(folder)}\n\n{text}"
        print_frame(table, args, text)
    return 0


def tensorboard_command(results: list[str | Path]) -> str:
    """The exact command a user can paste to see these searches in TensorBoard."""
    return "fundus-search tensorboard " + " ".join(str(Path(r).absolute()) for r in results)


def tensorboard_logdirs(searches: list[Path]) -> list[tuple[str, Path]]:
    """(name, folder) of each search's TensorBoard runs, then of each of its evaluations'."""
    runs = [(p.name, p / TENSORBOARD_DIR) for p in searches]
    evaluations = [e.parent for p in searches for e in p.glob(f"*/{EVALUATION_FILE}")]
    return runs + [
        (f"{e.parent.name}/{e.name}", e / TENSORBOARD_DIR) for e in evaluations if (e / TENSORBOARD_DIR).is_dir()
    ]


def tensorboard_serve_command(args: argparse.Namespace) -> int:
    from fundus_search.results import find_searches

    searches = find_searches(args.results)
    spec = ",".join(f"{name}:{folder}" for name, folder in tensorboard_logdirs(searches))
    url = f"http://127.0.0.1:{args.port}/"
    print(f"TensorBoard for {len(searches)} search(es) at {url} (Ctrl-C to stop)", flush=True)
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir_spec",
        spec,
        "--host",
        "127.0.0.1",
        "--port",
        str(args.port),
    ]
    # Become TensorBoard: stopping this process (Ctrl-C, SIGTERM) stops the server, no orphan.
    os.execv(sys.executable, command)
