"""`fundus-search best|table|tensorboard`: read searches' results without Ray."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from results import best_configs, find_searches, init_strategy_table, load_trials, metric_column

from .errors import number_above
from .trial import PARAMS

TENSORBOARD_DIR = "tensorboard"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    best = commands.add_parser("best", help="print the best configurations of one or more searches")
    best.add_argument("results", nargs="+", help="search folder(s), or a folder of searches")
    best.add_argument("--top", type=number_above(1, int, inclusive=True), default=5)
    best.add_argument("--metric", default="val_average")
    best.add_argument("--mode", choices=("max", "min"), default="max")
    best.add_argument("--where", help="filter, e.g. \"strategy == 'lp_ft' and best_val_kappa > 0.3\" "
                                      "(comparisons, in, and/or/not; never code)")
    fmt = best.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON records on stdout")
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout")
    best.set_defaults(handler=print_best)
    table = commands.add_parser("table", help="print the init x strategy table (the paper's shape)")
    table.add_argument("results", nargs="+")
    table.add_argument("--metric", default="val_average")
    table.set_defaults(handler=print_table)
    board = commands.add_parser("tensorboard", help="serve the searches' TensorBoard runs on 127.0.0.1")
    board.add_argument("results", nargs="+")
    board.add_argument("--port", type=int, default=6006)
    board.set_defaults(handler=serve_tensorboard)


def best_columns(frame: pd.DataFrame, metric: str) -> list[str]:
    column = metric_column(frame, metric)
    extra = [c for c in ("best_val_kappa", "best_val_f1", "best_val_specificity", "best_val_auc") if c != column]
    return ["search", "trial_id", "status", *PARAMS, column, "best_epoch", *extra, "epochs_run"]


def print_best(args: argparse.Namespace) -> int:
    trials = load_trials(args.results)
    rows = best_configs(trials, metric=args.metric, mode=args.mode, top=args.top, where=args.where)
    rows = rows[best_columns(rows, args.metric)]
    if args.json:
        print(rows.to_json(orient="records", indent=2))
    elif args.csv:
        print(rows.to_csv(index=False), end="")
    else:
        print(format_best(rows))
    return 0


def format_best(rows: pd.DataFrame) -> str:
    shown = rows.drop(columns=["search", "trial_id"]).dropna(axis=1, how="all")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False)


def format_table(table: pd.DataFrame, metric: str = "val_average") -> str:
    """init rows x strategy columns: `0.612 (κ .41 F1 .60 Sp .83) n=4`."""
    column = metric_column(table, metric)

    def cell(r) -> str:
        if pd.isna(r[column]):
            return f"- n={r['trials']}"
        return (f"{r[column]:.3f} (k {r['best_val_kappa']:.2f} F1 {r['best_val_f1']:.2f} "
                f"Sp {r['best_val_specificity']:.2f}) n={r['trials']}")

    grid = table.assign(cell=table.apply(cell, axis=1)).pivot(index="init", columns="strategy", values="cell")
    grid = grid[[s for s in ("lp", "ft", "lp_ft") if s in grid.columns]].fillna("-")
    header = f"best {metric} per init x strategy (kappa, F1, specificity of that trial; n = trials)"
    return header + "\n" + grid.to_string()


def format_winners(table: pd.DataFrame, trials: pd.DataFrame, metric: str = "val_average") -> str:
    """Each cell's winning configuration, one line per cell."""
    column = metric_column(table, metric)
    by_id = trials.set_index(["search", "trial_id"])
    lines = ["each cell's winner:"]
    for r in table.dropna(subset=[column]).itertuples():
        t = by_id.loc[(r.search, r.trial_id)]
        params = " ".join(f"{k}={t[k]:.2g}" for k in ("lp_lr", "ft_lr", "weight_decay") if pd.notna(t[k]))
        warmup = f" lp_epochs={int(t['lp_epochs'])}" if pd.notna(t["lp_epochs"]) else ""
        lines.append(f"  {r.init:<9} {r.strategy:<6} {getattr(r, column):.3f}  #{int(t['optuna_number'])} "
                     f"{params}{warmup} ({t['status']}, epoch {int(t['best_epoch'])})")
    return "\n".join(lines)


def print_table(args: argparse.Namespace) -> int:
    trials = load_trials(args.results)
    table = init_strategy_table(trials, metric=args.metric)
    print(format_table(table, args.metric))
    print(format_winners(table, trials, args.metric))
    return 0


def tensorboard_command(results: list[str | Path]) -> str:
    """The exact command a user can paste to see these searches in TensorBoard."""
    return "fundus-search tensorboard " + " ".join(str(Path(r).absolute()) for r in results)


def serve_tensorboard(args: argparse.Namespace) -> int:
    searches = find_searches(args.results)
    spec = ",".join(f"{p.name}:{p / TENSORBOARD_DIR}" for p in searches)
    url = f"http://127.0.0.1:{args.port}/"
    print(f"TensorBoard for {len(searches)} search(es) at {url} (Ctrl-C to stop)", flush=True)
    command = [sys.executable, "-m", "tensorboard.main", "--logdir_spec", spec, "--host", "127.0.0.1",
               "--port", str(args.port)]
    # Become TensorBoard: stopping this process (Ctrl-C, SIGTERM) stops the server, no orphan.
    os.execv(sys.executable, command)
