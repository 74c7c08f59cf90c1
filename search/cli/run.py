"""`fundus-search run|resume`: a search from a YAML file, with a summary screen at the end."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.results.layout import SearchFolder
from fundus_search.search.cli._args import UsageError, add_overrides, folder_name, number_above, quiet_optuna
from fundus_search.search.cli.evaluate import add_request_arguments, evaluation_request, summarise_evaluation
from fundus_search.vocabulary import (
    ERROR,
    EVALUATION_DIR,
    EVALUATION_FILE,
    RUNNING,
    TRIALS_FILE,
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser("run", help="run a search from a YAML config")
    run.add_argument("config", type=Path)
    run.add_argument(
        "--name", type=folder_name, help="results folder name under storage.path (default: <name>-<timestamp>)"
    )
    run.add_argument(
        "--num-samples", type=number_above(1, int, inclusive=True, maximum=10_000), help="override search.num_samples"
    )
    run.add_argument("--address", help="Ray cluster: auto, HOST:PORT or ray://...; default: embedded local Ray")
    add_overrides(run)
    run.set_defaults(handler=run_command)
    study = commands.add_parser(
        "study",
        help="the whole study in one go: run the search, evaluate its winners, write the report (one Ray session)",
    )
    study.add_argument("config", type=Path)
    study.add_argument("--name", type=folder_name, help="as for run")
    add_request_arguments(study)  # as for evaluate
    study.add_argument("--address", help="as for run")
    add_overrides(study)
    study.set_defaults(handler=study_command)
    resume = commands.add_parser("resume", help="continue an interrupted search or evaluation")
    resume.add_argument("results", type=Path, help="the search (or evaluation) folder `run` (or `evaluate`) printed")
    resume.add_argument("--address")
    resume.set_defaults(handler=resume_command)


def run_command(args: argparse.Namespace) -> int:
    from fundus_search.search.engine.tuner import start_search

    quiet_optuna()
    folder, _ = start_search(
        args.config, name=args.name, num_samples=args.num_samples, address=args.address, overrides=args.overrides
    )
    return summarise(folder)


def study_command(args: argparse.Namespace) -> int:
    """`run`, then `evaluate` (every fold of --repeats partitions x --seeds), then `report`,
    printing each one's screen. search.json records the evaluation to come, so `resume`
    finishes a killed study."""
    from fundus_search.search.engine.tuner import start_search
    from fundus_search.search.study.config import load_config

    quiet_optuna()
    folds = load_config(args.config, args.overrides).data.folds  # a bad --folds is an error now, not after the search
    if outside := [f for f in args.folds or () if f >= folds]:
        raise UsageError(f"--folds: {outside} not in the config's {folds}-fold split (0..{folds - 1})")
    request = evaluation_request(args)
    folder, _ = start_search(
        args.config,
        name=args.name,
        address=args.address,
        study={"request": request.__dict__, "evaluation": EVALUATION_DIR},
        overrides=args.overrides,
    )
    searched = summarise(folder)
    return max(searched, _finish_study(folder, address=args.address))


def _finish_study(search: SearchFolder, *, address: str | None) -> int:
    """The evaluation and the report of a study whose search has finished: started, or resumed
    where a killed study left it."""
    from fundus_search.search.evaluate.retrain import EvaluationRequest, resume_evaluation, start_evaluation

    study, search_dir = search.study, search.path
    folder = search_dir / study["evaluation"]
    if folder.exists():
        evaluated = summarise_evaluation(resume_evaluation(folder, address=address))
    else:
        evaluated = summarise_evaluation(
            start_evaluation(
                search_dir, EvaluationRequest.from_json(study["request"]), name=study["evaluation"], address=address
            )
        )
    _report(search_dir, study["evaluation"])
    return evaluated


def _report(search_dir: Path, evaluation: str) -> None:
    from fundus_search.results.report import write_report

    report = write_report(search_dir, evaluation=evaluation)
    print(f"\nreport:      {report}  (open it in a browser; no network needed)")


def resume_command(args: argparse.Namespace) -> int:
    """Continue a search, an evaluation, or a whole study, whichever the folder is."""
    from fundus_search.results.layout import EvaluationFolder, SearchFolder

    quiet_optuna()
    if (args.results / EVALUATION_FILE).is_file():  # an evaluation folder; otherwise a search's, or an error
        from fundus_search.search.evaluate.retrain import resume_evaluation

        folder = resume_evaluation(args.results, address=args.address)
        evaluated = summarise_evaluation(folder)
        study = EvaluationFolder.open(folder).search
        if study.study and study.study["evaluation"] == folder.name:  # the study's own evaluation: its report too
            _report(study.path, folder.name)
        return evaluated
    from fundus_search.search.engine.tuner import resume_search, search_ended

    folder = SearchFolder.open(args.results)
    if not (folder.study and folder.remote is None and search_ended(folder)):  # else: only the study's rest is left
        folder, _ = resume_search(args.results, address=args.address)
    searched = summarise(folder)
    if folder.study:
        return max(searched, _finish_study(folder, address=args.address))
    return searched


def summarise(folder: SearchFolder) -> int:
    """The ending screen: table, best config, where the files are, how to look at them.

    Returns:
        0, or 1 when trials failed or the search stopped before `num_samples`.

    Raises:
        UsageError: every trial failed (one line: the first error and where the others are).
    """
    from fundus_search.results import best_configs, init_strategy_table, load_trials
    from fundus_search.results.tables import best_columns, format_best, format_table, format_winners
    from fundus_search.search.cli.query import tensorboard_command

    trials = load_trials([folder.results])
    metric, mode = folder.ranking
    planned = folder.num_samples
    finished = trials[trials["status"] != RUNNING]
    failed = trials[trials["status"] == ERROR]
    if len(failed) and len(failed) == len(trials):
        raise UsageError(
            f"all {len(trials)} trials failed; the first: {failed['error'].iloc[0]}; every error is in "
            f"the error column of {folder.trials_file} and in trial_*/error.txt"
        )
    table = init_strategy_table(trials, metric=metric, mode=mode)
    print()
    print(format_table(table, metric))
    print(format_winners(table, trials, metric))
    top = best_configs(trials, metric=metric, mode=mode, top=1)
    if len(top):
        print("\nbest configuration:")
        print(format_best(top[best_columns(top, metric)]))
    print(f"\nresults:     {folder.trials_file}")
    print(f"             {folder.epochs_file}")
    print(f"tensorboard: {tensorboard_command([folder.path])}")
    print(f"query:       fundus-search best {folder.results} --top 5")
    if len(failed):
        print(f"\n{len(failed)} of {len(trials)} trials failed (column error of {TRIALS_FILE}):")
        for r in failed.head(10).itertuples():
            print(f"  #{r.optuna_number} {r.init:<9} {r.strategy:<6} {r.error}")
    if len(finished) < planned:
        print(f"\nstopped after {len(finished)} of {planned} trials; continue with: fundus-search resume {folder.path}")
        return 1
    return 1 if len(failed) else 0
