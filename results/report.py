"""`fundus-search report`: one self-contained HTML page per study, from the Parquet files and the
Optuna study alone (no Ray, no torch): the answer, the diagnostics, how the search got there,
what matters, and the provenance. Figures are inlined PNGs; nothing is fetched to view it."""

from __future__ import annotations

import base64
import functools
import html
import json
import warnings
from datetime import datetime
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from fundus_search.results import figures
from fundus_search.results.answer import (
    evaluation_progress,
    evaluation_table,
    find_evaluation,
    load_comparisons,
    load_evaluation,
)
from fundus_search.results.layout import EvaluationFolder, FolderError, SearchFolder, write_atomic
from fundus_search.results.query import ResultsError, load_epochs, load_trials
from fundus_search.results.tables import (
    GRID_CAPTION,
    cpu_sentence,
    evaluation_caption,
    evaluation_frame,
    grid_frame,
    protocol_sentence,
    secondary_frame,
    test_split_sentences,
    verdict_sentences,
)
from fundus_search.strategy import TRANSFER_STRATEGIES
from fundus_search.vocabulary import (
    EVALUATION_DIR,
    INIT,
    STRATEGIES,
    STRATEGY,
    UserError,
    best,
)

SECTIONS = {
    "answer": "The answer",
    "diagnostics": "Out-of-fold diagnostics",
    "search": "How the search got there",
    "parameters": "What matters",
    "provenance": "Provenance",
}
_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1300px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
table.data { border-collapse: collapse; font-size: .8em; margin: .5em 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; white-space: nowrap; }
table.data th { background: #f4f4f4; white-space: normal; } .wide { overflow-x: auto; }
figure { margin: 1em 0; } img { max-width: 100%; }
figcaption, .note { color: #555; font-size: .9em; } pre { background: #f7f7f7; padding: .8em; overflow-x: auto; }
.verdict { background: #eef5ff; border-left: 4px solid #2a6ebb; padding: .2em 1em; }
.verdict li { margin: .3em 0; } .header { font-size: 1.05em; }
table.data { max-width: 100%; } table.grid td { text-align: left; }
.missing { background: #fff6e0; border-left: 4px solid #e0a000; padding: .6em 1em; }
nav a { margin-right: 1em; }
@media print { nav { display: none; } figure, table { page-break-inside: avoid; } body { max-width: none; } }
"""


class ReportError(UserError):
    """The report cannot be written where asked; the message says why."""


def write_report(search_dir: str | Path, out: str | Path | None = None, *, evaluation: str | None = None) -> Path:
    """Write the report of the search at `search_dir` (and of its evaluation, if any).

    Reads only; the one file written is the report, through a temporary file and a rename (a
    symlink planted at its name is replaced, never followed).

    Args:
        out: the HTML file; default `<search>/report.html`. Its folder must exist.
        evaluation: the evaluation folder's name (`evaluate --name`); default `evaluation`,
            shown when there is one that belongs to this search.

    Raises:
        ResultsError: `search_dir` is not a search or has no trials, or the named evaluation
            does not exist.
        FolderError: the evaluation belongs to another search.
        ReportError: the output folder does not exist.
    """
    search = SearchFolder.open(search_dir)
    out = Path(out) if out else search.report_file
    if not out.parent.is_dir():
        raise ReportError(f"-o: no folder {out.parent}; create it or write the report elsewhere")
    trials = load_trials([search.path]) if Path(search.trials_file).is_file() else pd.DataFrame()
    if trials.empty:
        raise ResultsError(f"{search.path}: the search has no trials yet; run or resume it first")
    study = Study(search, trials, evaluation)
    search_dir = search.path
    body = "\n".join(section(study) for section in (_answer, _diagnostics, _search, _parameters, _provenance))
    nav = " ".join(f'<a href="#{key}">{title}</a>' for key, title in SECTIONS.items())
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(study.name)}: "
        f"fundus-search report</title><style>{_CSS}</style></head><body><h1>{html.escape(study.name)}</h1>"
        f"<p class='note'>fundus-search report, written {datetime.now():%Y-%m-%d %H:%M} from "
        f"{html.escape(str(search_dir.absolute()))}</p>{header(study)}<nav>{nav}</nav>{body}</body></html>"
    )
    try:
        return write_atomic(out, page)
    except OSError as exc:
        raise ReportError(f"{out}: cannot write ({exc.strerror or exc}); write the report elsewhere with -o") from None


class Study:
    """What the report reads: the search's files, the facts it fixed when it started, and its
    evaluation, if any (never its config)."""

    def __init__(self, search: SearchFolder, trials: pd.DataFrame, evaluation: str | None = None):
        folder = search.path
        self.search, self.folder, self.trials = search, folder, trials
        self.epochs = load_epochs([folder])
        self.name, self.facts = search.name, search.facts  # facts: None in folders of older versions
        self.metric, self.mode = search.ranking
        self.metadata = {
            k.decode().removeprefix("fundus_search."): v.decode()
            for k, v in (pq.read_schema(search.trials_file).metadata or {}).items()
            if k.startswith(b"fundus_search.")
        }
        self.foreign = None  # why the default evaluation folder is not shown, if it is not
        if evaluation is not None:
            self.evaluation = find_evaluation(folder, evaluation)
            self.progress = evaluation_progress(self.evaluation)
            return
        try:
            self.evaluation = find_evaluation(folder, EVALUATION_DIR)
        except FolderError as exc:  # another search's evaluation, copied in: never shown as this one's answer
            self.evaluation, self.foreign = None, str(exc)
        except ResultsError:
            self.evaluation = None
        self.progress = evaluation_progress(self.evaluation) if self.evaluation else None

    @functools.cached_property
    def evaluated(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(runs, predictions, table) of the evaluation, read once for every section."""
        runs, predictions = load_evaluation(self.evaluation)
        return runs, predictions, evaluation_table(runs, predictions)


def _section(key: str, content: str) -> str:
    return f'<section id="{key}"><h2>{SECTIONS[key]}</h2>{content}</section>'


def _figure(image: bytes, caption: str) -> str:
    data = base64.b64encode(image).decode()
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _table(frame: pd.DataFrame) -> str:
    """Headers wrap; a table still wider than the page scrolls on its own, not the page."""
    return f'<div class="wide">{frame.to_html(index=False, classes="data", border=0, escape=True, na_rep="-")}</div>'


def _missing(what: str, command: str) -> str:
    return f'<p class="missing">{html.escape(what)}: run <code>{html.escape(command)}</code> to produce it.</p>'


def _answer(study: Study) -> str:
    if study.evaluation is None:
        foreign = f"<p class='missing'>{html.escape(study.foreign)}</p>" if study.foreign else ""
        return _section(
            "answer",
            foreign
            + _missing(
                "No evaluation of this search yet (the verdict, the cross-validated table, the comparisons)",
                f"fundus-search evaluate {study.folder}",
            ),
        )
    _, _, table = study.evaluated
    evaluation = EvaluationFolder.open(study.evaluation)
    comparisons = load_comparisons(study.evaluation)
    parts = []
    if not study.progress.complete:
        parts.append(
            f"<p class='missing'><strong>Incomplete evaluation: {html.escape(study.progress.sentence())}"
            "</strong>. The table holds the finished runs only; the comparisons use only folds and seeds "
            f"both arms finished. Continue with <code>fundus-search resume {html.escape(str(study.evaluation))}"
            "</code>.</p>"
        )
    if table.empty:
        return _section("answer", "".join(parts) + "<p>No run of the evaluation has finished yet.</p>")
    verdict = verdict_sentences(comparisons)
    if verdict:
        parts.append(
            "<div class='verdict'><h3>Verdict</h3><ul>"
            + "".join(f"<li>{html.escape(v)}</li>" for v in verdict)
            + "</ul><p class='note'>The primary question, declared in evaluation.json before any run: "
            "Holm-adjusted p-values and simultaneous 95% intervals (Bonferroni) of the corrected "
            "repeated-CV t-test; P(better) from the Bayesian correlated t-test with its region of "
            "practical equivalence.</p></div>"
        )
    elif comparisons.empty and not study.progress.complete:
        parts.append("<p>No verdict yet: the comparisons are computed when the evaluation finishes.</p>")
    else:
        parts.append("<p>No verdict: the primary comparisons need two evaluated cells sharing folds.</p>")
    grid = grid_frame(table)
    if not grid.empty:
        parts.append(
            f"<p class='note'>{html.escape(GRID_CAPTION)}.</p>"
            + grid.to_html(classes="data grid", border=0, escape=True)
        )
    secondary = secondary_frame(comparisons)
    if not secondary.empty:
        parts.append(
            "<h3>Secondary comparisons</h3><p class='note'>Exploratory: Benjamini-Hochberg q-values "
            "over this family.</p>" + _table(secondary)
        )
    test = test_split_sentences(comparisons)
    if test:
        parts.append(
            "<h3>Held-out test split</h3><p class='note'>Descriptive: spread over its images for these "
            "trained models, no test.</p><ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in test) + "</ul>"
        )
    frame = evaluation_frame(table)
    parts += [
        "<h3>All metrics</h3>",
        f"<p class='note'>{html.escape(evaluation_caption(table))}.</p>",
        _table(frame.drop(columns=["configuration"])),
        "<p class='note'>Configurations: "
        + "; ".join(html.escape(f"{r[INIT]} {r['strategy']}: {r['configuration']}") for _, r in frame.iterrows())
        + "</p>",
    ]
    cpu = cpu_sentence(evaluation.cpu_ms_per_image)
    if cpu:
        parts.append(f"<p class='note'>{html.escape(cpu)}.</p>")
    if not _cv_rows(comparisons).empty:
        parts.append(_figure(figures.forest_plot(comparisons), "Cross-validated differences (forest plot)"))
    return _section("answer", "".join(parts))


def _cv_rows(comparisons: pd.DataFrame) -> pd.DataFrame:
    if comparisons.empty or "ci_low" not in comparisons:
        return pd.DataFrame()
    return comparisons[(comparisons["split"] == "cv") & comparisons["ci_low"].notna()]


def header(study: Study) -> str:
    """Dataset, task and protocol: what the page is about, under its title."""
    dataset = study.facts.dataset if study.facts else "not recorded (a search of an older version)"
    text = f"Dataset: {dataset}; metric: {study.metric} ({study.mode})"
    if study.evaluation is not None:
        _, _, table = study.evaluated
        protocol = EvaluationFolder.open(study.evaluation).protocol
        if not table.empty:
            text += f"; protocol: {protocol_sentence(protocol, table)}"
    return f"<p class='header'>{html.escape(text)}</p>"


def _diagnostics(study: Study) -> str:
    if study.evaluation is None:
        return _section(
            "diagnostics",
            _missing(
                "ROC curves and confusion matrices come from the evaluation's out-of-fold predictions",
                f"fundus-search evaluate {study.folder}",
            ),
        )
    runs, predictions, _ = study.evaluated
    if runs.empty:
        return _section("diagnostics", "<p>No run of the evaluation has finished yet.</p>")
    return _section(
        "diagnostics",
        _figure(
            figures.roc_curves(predictions, runs), "Out-of-fold ROC of each cell's configuration (AUC: mean over seeds)"
        )
        + _figure(
            figures.confusion_matrices(predictions, runs),
            "Confusion matrices at P(positive) >= 0.5, out of fold, counts summed over seeds",
        ),
    )


def _search(study: Study) -> str:
    column = best(study.metric)
    parts = [
        _figure(
            figures.best_so_far(study.trials, study.epochs, column, study.metric, study.mode),
            f"Best {study.metric} so far, by trials finished and by training epochs spent",
        ),
        _figure(
            figures.learning_curves(study.trials, study.epochs, study.metric, study.mode),
            "Every trial's learning curve by cell: faded = stopped early by ASHA, red = the cell's winner",
        ),
    ]
    rungs = study.facts.rungs if study.facts else None
    if rungs:
        parts.append(
            _figure(figures.asha_survival(study.trials, list(rungs)), "Trials of each cell reaching each ASHA rung")
        )
    elif rungs is None:
        parts.append("<p class='note'>ASHA's rungs are not recorded in this search's search.json.</p>")
    else:
        parts.append("<p class='note'>No early stopping (FIFO scheduler): every trial ran its epochs.</p>")
    return _section("search", "".join(parts))


def _searched(study: Study) -> dict[str, tuple[str, ...]]:
    """Each searched strategy's hyperparameters, as the search recorded them (older searches:
    the AdamW rule, over the strategies their trials ran)."""
    if study.facts:
        return study.facts.params
    return {s: TRANSFER_STRATEGIES[s].params() for s in STRATEGIES if (study.trials[STRATEGY] == s).any()}


def _parameters(study: Study) -> str:
    column, parts = best(study.metric), []
    for strategy, params in _searched(study).items():
        searched = [p for p in params if study.trials.loc[study.trials[STRATEGY] == strategy, p].nunique() > 1]
        if searched and (study.trials[STRATEGY] == strategy).sum() >= 2:
            parts.append(
                _figure(
                    figures.parameter_scatter(study.trials, column, study.metric, strategy, searched),
                    f"{study.metric} of every {strategy} trial against each searched parameter",
                )
            )
    parts.append(_importances(study))
    return _section("parameters", "".join(parts))


def _importances(study: Study) -> str:
    """Optuna's parameter importances (its default evaluator), on the search's own study: over all
    completed trials, and per strategy over the parameters that strategy searches."""
    import optuna

    path = study.search.study_file
    if not path.is_file():
        return "<p class='note'>No Optuna study in this folder: no parameter importances.</p>"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:  # read-only: the report never writes the study, nor creates Optuna's tables in an empty file
        storage = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true", skip_table_creation=True)
        stored = optuna.load_study(study_name=study.name, storage=storage)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's and Optuna's errors alike: the rest of the report stands
        where, kind = html.escape(str(path)), html.escape(type(exc).__name__)
        return f"<p class='note'>Cannot read the Optuna study in {where} ({kind}): no parameter importances.</p>"
    complete = stored.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    groups = {"all strategies": complete}
    for strategy in _searched(study):
        groups[strategy] = [t for t in complete if t.params.get(STRATEGY, strategy) == strategy]
    parts = []
    for title, trials in groups.items():
        importances = _importance(trials, stored.direction)
        if isinstance(importances, str):
            parts.append(
                f"<p class='note'>Parameter importances ({html.escape(title)}): {html.escape(importances)}.</p>"
            )
        else:
            parts.append(
                _figure(
                    figures.importance_bars(importances, f"importances: {title}"),
                    f"Optuna parameter importances, {title} ({len(trials)} completed trials)",
                )
            )
    return "".join(parts)


def _importance(trials: list, direction) -> dict[str, float] | str:
    import optuna

    if len(trials) < 3:
        return f"too few completed trials to compute them ({len(trials)}; at least 3)"
    shared = set.intersection(*(set(t.params) for t in trials))
    varied = sorted(p for p in shared if len({str(t.params[p]) for t in trials}) > 1)
    if not varied:
        return "no parameter varied across these completed trials"
    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.importance.get_param_importances(study, params=varied)
        except (RuntimeError, ValueError) as exc:
            return f"Optuna could not compute them ({exc})"


def _provenance(study: Study) -> str:
    trials, meta = study.trials, study.metadata
    by_status = trials["status"].value_counts().to_dict()
    gpu_hours = float((trials["wall_seconds"].fillna(0) * trials["gpus"].fillna(0)).sum() / 3600)
    span = _wall_seconds(study.epochs)
    facts = {
        "search": study.name,
        "folder": str(study.folder.absolute()),
        "git commit": meta.get("git_commit", "unknown"),
        "dataset fingerprint": meta.get("dataset_fingerprint", "-"),
        "machine": meta.get("machine", "not recorded"),
        "trials": f"{len(trials)} ({', '.join(f'{n} {s}' for s, n in by_status.items())})",
        "epochs trained": str(len(study.epochs)),
        "search wall time": f"{span / 60:.1f} min" if span else "-",
        "GPU-hours": f"{gpu_hours:.2f}" if gpu_hours else "none recorded (CPU or no GPU share)",
    }
    weights = trials.groupby(INIT)["weights_id"].agg(lambda ids: _weights_text(ids.dropna().unique()))
    versions = json.loads(meta["versions"]) if "versions" in meta else {}
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
    rows += "".join(f"<tr><th>weights: {html.escape(i)}</th><td>{html.escape(w)}</td></tr>" for i, w in weights.items())
    rows += "".join(f"<tr><th>{html.escape(p)}</th><td>{html.escape(str(v))}</td></tr>" for p, v in versions.items())
    stored = study.search.config_file
    config = meta.get("config") or (stored.read_text(encoding="utf-8") if stored.is_file() else "not recorded")
    return _section(
        "provenance", f"<table class='data'>{rows}</table><h3>Resolved config</h3><pre>{html.escape(config)}</pre>"
    )


def _weights_text(ids) -> str:
    if len(ids) and all(str(i).startswith("random-") for i in ids):
        return "random initialisation, seeded per trial"
    return ", ".join(f"sha256 {i}" for i in ids) or "-"


def _wall_seconds(epochs: pd.DataFrame) -> float | None:
    """From the first trial's start to the last report, from the epoch rows' timestamps."""
    stamped = epochs.dropna(subset=["timestamp", "time_total_s"])
    if stamped.empty:
        return None
    return float(stamped["timestamp"].max() - (stamped["timestamp"] - stamped["time_total_s"]).min())
