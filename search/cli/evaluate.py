"""`fundus-search evaluate`: retrain each cell's winners on every fold of a repeated k-fold x
seeds; print the verdict, the grid, the comparisons and the table."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.search.cli._args import UsageError, folder_name, number_above, quiet_optuna
from fundus_search.vocabulary import RUNS_FILE


def add_parsers(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "evaluate",
        help="retrain each cell's best configurations on every fold of a "
        "repeated k-fold and compare them (the study's answer)",
    )
    evaluate.add_argument("results", type=Path, help="a finished (or resumed) search folder")
    add_request_arguments(evaluate)
    evaluate.add_argument("--name", type=folder_name, help="evaluation folder inside the search (default: evaluation)")
    evaluate.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://...; default: embedded local Ray")
    evaluate.set_defaults(handler=evaluate_command)


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """What to evaluate (`evaluate` and `study`): --top, --repeats, --seeds, --folds, --epochs."""
    parser.add_argument(
        "--top",
        type=number_above(1, int, inclusive=True, maximum=20),
        default=1,
        help="configurations per init x strategy cell, best first (default 1)",
    )
    parser.add_argument(
        "--repeats",
        type=number_above(1, int, inclusive=True, maximum=20),
        help="partitions of the repeated k-fold, repeat 0 the search's (default: the config's evaluation.repeats, 2)",
    )
    parser.add_argument(
        "--seeds",
        type=number_above(1, int, inclusive=True, maximum=20),
        help="seeds per fold, averaged within the fold (default: evaluation.seeds, 1)",
    )
    parser.add_argument("--folds", type=fold_list, help="comma-separated folds, e.g. 0,2 (default: all)")
    parser.add_argument(
        "--epochs",
        choices=("best", "max"),
        default="best",
        help="epochs per run: the configuration's best epoch in the search, or search.max_epochs",
    )
    parser.add_argument(
        "--keep-models",
        choices=("best", "all", "none"),
        default="best",
        help="final models kept as bundles in <evaluation>/models/: the best cell of the primary question "
        "(default), every configuration, or none (each is the configuration's test-split run, seed 0)",
    )


def evaluation_request(args: argparse.Namespace):
    from fundus_search.search.evaluate.retrain import EvaluationRequest

    return EvaluationRequest(
        top=args.top,
        seeds=args.seeds,
        folds=args.folds,
        epochs=args.epochs,
        repeats=args.repeats,
        keep_models=args.keep_models,
    )


def fold_list(text: str) -> tuple[int, ...]:
    try:
        folds = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fold numbers, e.g. 0,2 (got {text!r})") from None
    if any(f < 0 for f in folds) or len(set(folds)) != len(folds):
        raise argparse.ArgumentTypeError(f"folds are distinct numbers >= 0 (got {text!r})")
    return folds


def evaluate_command(args: argparse.Namespace) -> int:
    from fundus_search.search.evaluate.retrain import start_evaluation

    quiet_optuna()
    folder = start_evaluation(args.results, evaluation_request(args), name=args.name, address=args.address)
    return summarise_evaluation(folder)


def summarise_evaluation(folder: Path) -> int:
    """The ending screen, the answer first: the verdict on the primary question, the grid, the
    secondary comparisons, then the full table and the files.

    Returns:
        0, or 1 when runs failed or did not finish.
    """
    from fundus_search.results.answer import evaluation_progress, evaluation_table, load_comparisons, load_evaluation
    from fundus_search.results.layout import EvaluationFolder
    from fundus_search.results.tables import format_answer

    runs, predictions = load_evaluation(folder)
    progress = evaluation_progress(folder)
    if runs.empty:
        raise UsageError(f"{folder}: no run finished; their errors are in the error column of {RUNS_FILE}")
    print()
    if not progress.complete:
        print(f"INCOMPLETE: {progress.sentence()}\n")
    evaluation = EvaluationFolder.open(folder)
    print(format_answer(evaluation_table(runs, predictions), load_comparisons(folder), evaluation))
    print(f"\nruns:        {evaluation.runs_file}")
    print(f"predictions: {evaluation.predictions_file}")
    print(f"comparisons: {evaluation.comparisons_file}")
    bundles = sorted(evaluation.path.glob("models/*/model.json"))
    for bundle in bundles:
        print(f"model:       {bundle.parent}  (fundus-search predict {bundle.parent} IMAGES...)")
    if not bundles and evaluation.request.get("keep_models") != "none" and not evaluation.protocol.get("test_images"):
        print("model:       none kept: a final model is the run trained on every image outside the test split, and "
              "data.test_fraction is 0; set it (e.g. 0.2) and search again, or `fundus-search train ... --output DIR` "
              "keeps one fold's model")  # fmt: skip
    print(f"again:       fundus-search table {folder} --evaluation")
    if not progress.complete:
        print(f"\n{progress.sentence(folder)}")
        return 1
    return 0
