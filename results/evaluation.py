"""An evaluation's answer, from its Parquet files: the cross-validated init x strategy table and
the paired comparisons. Every metric here is recomputed from `predictions.parquet`.

`runs.parquet` has one row per configuration x fold x seed (split "cv") and per configuration
x seed on the held-out test split (split "test"); `predictions.parquet` one row per scored
image per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from vocabulary import (AUC, AVERAGE, CHALLENGE_METRICS, COMPARISONS_FILE, COMPLETED, EVALUATION_DIR, EVALUATION_FILE,
                        FT, INIT, LP, LP_FT, PREDICTIONS_FILE, RUNS_FILE, SEARCH_FILE, STRATEGY, held_out)

from .metrics import classification_metrics
from .layout import EvaluationFolder, SearchFolder, write_atomic
from .query import ResultsError, read_parquet
from .store import EVALUATION_TABLES, current_table
from .statistics import BOOTSTRAP_ASSUMES, TTEST_ASSUMES, corrected_resampled_ttest, paired_bootstrap
from .tables import describe_params

CV, TEST = "cv", "test"  # the two splits a run scores
SOURCE_ORDER = ("flair", "torchvision", "random")  # comparisons read "the first minus the later"


def find_evaluation(path: str | Path, name: str | None = None) -> Path:
    """The evaluation folder at `path`, or the evaluation `name` (default `evaluation`) of the
    search at `path`; it must belong to that search.

    Raises:
        ResultsError: there is no such evaluation.
        FolderError: the folder is an evaluation of another search.
    """
    path = Path(path)
    if name is None and (path / EVALUATION_FILE).is_file():
        return EvaluationFolder.open(path).path
    if not (path / SEARCH_FILE).is_file():
        raise ResultsError(f"{path}: neither a search nor an evaluation folder; pass a folder `fundus-search run` "
                           "or `fundus-search evaluate` printed")
    search = SearchFolder.open(path)
    if not (path / (name or EVALUATION_DIR) / EVALUATION_FILE).is_file():
        raise ResultsError(f"{path}: no evaluation {name or EVALUATION_DIR!r} here; run "
                           f"`fundus-search evaluate {path}{f' --name {name}' if name else ''}` first")
    return search.evaluation(name or EVALUATION_DIR).path


def load_evaluation(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, predictions) of the finished runs of an evaluation folder, as they stand now
    (rows only the row log holds yet included: see results.store.current_table)."""
    runs = _current(folder, RUNS_FILE)
    runs = runs[runs["status"] == COMPLETED]
    predictions = _current(folder, PREDICTIONS_FILE)
    return runs, predictions[predictions["run_id"].isin(runs["run_id"])]


def _current(folder: Path, name: str) -> pd.DataFrame:
    try:
        return current_table(folder, name, EVALUATION_TABLES).to_pandas()
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise ResultsError(f"{Path(folder) / name}: not readable ({str(exc).splitlines()[0][:200]}); "
                           f"continue the evaluation with `fundus-search resume {folder}`") from None


@dataclass(frozen=True)
class Progress:
    """How much of an evaluation has finished: `finished` of `planned` runs; `missing` names
    the others by configuration (e.g. `flair-lp-1: fold 2 seed 0, test seed 1`)."""

    planned: int
    finished: int
    failed: int
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        return self.finished >= self.planned

    def sentence(self, folder: Path | None = None) -> str:
        """`9 of 16 runs finished (2 failed); missing: ...; continue with: fundus-search resume F`."""
        text = f"{self.finished} of {self.planned} runs finished"
        text += f" ({self.failed} failed)" if self.failed else ""
        if self.missing:
            shown = "; ".join(self.missing[:6]) + ("; ..." if len(self.missing) > 6 else "")
            text += f"; missing: {shown}"
        if folder is not None and not self.complete:
            text += f"; continue with: fundus-search resume {folder}"
        return text


def evaluation_progress(folder: Path) -> Progress:
    """Finished, failed and missing runs of the evaluation at `folder` against its plan."""
    meta = EvaluationFolder.open(folder)
    runs = _current(folder, RUNS_FILE)
    done = set(runs.loc[runs["status"] == COMPLETED, "run_id"])
    failed = int((runs["status"] == "error").sum())
    missing: dict[str, list[str]] = {}
    for run in meta.planned:
        if run["run_id"] not in done:
            where = f"fold {run['fold']} seed {run['seed']}" if run["split"] == CV else f"test seed {run['seed']}"
            missing.setdefault(run["config_id"], []).append(where)
    return Progress(planned=meta.runs, finished=len(done), failed=failed,
                    missing=tuple(f"{config}: {', '.join(where)}" for config, where in missing.items()))


def run_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every run's metrics recomputed from its predictions: one row per run_id."""
    rows = {run: classification_metrics(p["label"].to_numpy(), p["prob_positive"].to_numpy())
            for run, p in predictions.groupby("run_id")}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run_id").reset_index()


def evaluation_table(runs: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated configuration: kappa, F1, specificity and average as mean and std
    over folds (seeds averaged within a fold, std with ddof=1), the out-of-fold AUC pooled over
    folds (each image once per seed; mean over seeds), the search-fold score the configuration
    was chosen by and the optimism (search score minus the cross-validated average), and, when
    a test split exists, the same metrics on it as mean and std over seeds."""
    if runs.empty or predictions.empty:
        return pd.DataFrame()
    recomputed = run_metrics(predictions)
    scored = runs.drop(columns=[c for c in recomputed.columns if c != "run_id"], errors="ignore")
    scored = scored.merge(recomputed, on="run_id")
    rows = []
    for config_id, group in scored.groupby("config_id", sort=False):
        first = group.iloc[0]
        row = {"config_id": config_id, INIT: first[INIT], STRATEGY: first[STRATEGY], "rank": int(first["rank"]),
               "config": describe_params(first), "epochs": int(first["epochs"]), "search_score": first["search_score"]}
        cv = group[group["split"] == CV]
        if len(cv):
            per_fold = cv.groupby("fold")[list(CHALLENGE_METRICS)].mean()
            for m in CHALLENGE_METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = per_fold[m].mean(), per_fold[m].std(ddof=1)
            row["oof_auc"] = _pooled_auc(predictions[predictions["run_id"].isin(cv["run_id"])])
            row["folds"], row["seeds"] = cv["fold"].nunique(), cv["seed"].nunique()
            row["optimism"] = row["search_score"] - row[f"{AVERAGE}_mean"]
        test = group[group["split"] == TEST]
        if len(test):
            for m in (*CHALLENGE_METRICS, AUC):
                row[f"{held_out(m)}_mean"], row[f"{held_out(m)}_std"] = test[m].mean(), test[m].std(ddof=1)
            row["test_seeds"] = len(test)
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_auc(predictions: pd.DataFrame) -> float:
    """AUC of all out-of-fold predictions of one seed at once, averaged over seeds."""
    per_seed = [classification_metrics(p["label"].to_numpy(), p["prob_positive"].to_numpy())[AUC]
                for _, p in predictions.groupby("seed")]
    return float(np.mean(per_seed))


def planned_comparisons(cells: list[tuple[str, str]], sources: dict[str, str]) -> list[tuple[str, str, tuple, tuple]]:
    """(label, within, cell A, cell B) for the comparisons the study makes: every pair of inits
    under each strategy (FLAIR vs ImageNet, each pretrained init vs random: inits in the order of
    their weight sources, flair, torchvision, random), and LP-FT vs FT and LP vs FT under each init."""
    present = set(cells)
    order = sorted({i for i, _ in cells}, key=lambda i: (SOURCE_ORDER.index(sources.get(i, "random"))
                                                         if sources.get(i) in SOURCE_ORDER else len(SOURCE_ORDER), i))
    plans = []
    for strategy in (LP, FT, LP_FT):
        for a, b in combinations([i for i in order if (i, strategy) in present], 2):
            plans.append((f"{a} - {b}", strategy, (a, strategy), (b, strategy)))
    for init in order:
        for a, b in ((LP_FT, FT), (LP, FT)):
            if (init, a) in present and (init, b) in present:
                plans.append((f"{a} - {b}", init, (init, a), (init, b)))
    return plans


def paired_comparisons(runs: pd.DataFrame, predictions: pd.DataFrame, sources: dict[str, str], *,
                       resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The planned comparisons of each cell's rank-1 configuration, on the challenge average:
    the corrected resampled t-test over shared (fold, seed) runs and the paired bootstrap over
    out-of-fold images; on the test split, the paired bootstrap over test images."""
    if runs.empty or predictions.empty:
        return pd.DataFrame()
    metrics = runs.drop(columns=list(CHALLENGE_METRICS), errors="ignore").merge(run_metrics(predictions), on="run_id")
    top = metrics[metrics["rank"] == 1]
    cells = sorted(set(zip(top[INIT], top[STRATEGY])))
    rows = []
    for label, within, cell_a, cell_b in planned_comparisons(cells, sources):
        a, b = (top[(top[INIT] == c[0]) & (top[STRATEGY] == c[1])] for c in (cell_a, cell_b))
        common = {"comparison": label, "within": within, "a": a["config_id"].iloc[0], "b": b["config_id"].iloc[0],
                  "metric": AVERAGE}
        rows += _compare_split(a, b, predictions, CV, common, resamples, seed)
        rows += _compare_split(a, b, predictions, TEST, common, resamples, seed)
    return pd.DataFrame(rows)


def _compare_split(a: pd.DataFrame, b: pd.DataFrame, predictions: pd.DataFrame, split: str, common: dict,
                   resamples: int, seed: int) -> list[dict]:
    a, b = a[a["split"] == split], b[b["split"] == split]
    if not len(a) or not len(b):
        return []
    rows = []
    if split == CV:
        paired = a.merge(b, on=["fold", "seed"], suffixes=("_a", "_b"))
        if len(paired) >= 2:
            test = corrected_resampled_ttest(paired[f"{AVERAGE}_a"] - paired[f"{AVERAGE}_b"],
                                             n_train=paired["n_train_a"].mean(), n_test=paired["n_scored_a"].mean())
            rows.append({**common, "split": split, "method": "corrected t-test", **test.__dict__,
                         "folds": paired["fold"].nunique(), "seeds": paired["seed"].nunique(), "assumes": TTEST_ASSUMES})
    y, probs_a, probs_b = _aligned_predictions(predictions, a["run_id"], b["run_id"])
    boot = paired_bootstrap(y, probs_a, probs_b, resamples=resamples, seed=seed)
    rows.append({**common, "split": split, "method": "paired bootstrap", **boot.__dict__,
                 "folds": a["fold"].nunique() if split == CV else 0, "seeds": len(probs_a), "assumes": BOOTSTRAP_ASSUMES})
    return rows


def _aligned_predictions(predictions: pd.DataFrame, runs_a, runs_b) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (N,) and (seeds, N) P(positive) of arms A and B over the images both scored, by row."""
    def table(run_ids) -> pd.DataFrame:
        p = predictions[predictions["run_id"].isin(run_ids)]
        return p.pivot_table(index="row", columns="seed", values="prob_positive")

    a, b = table(runs_a), table(runs_b)
    rows = a.index.intersection(b.index)
    seeds = a.columns.intersection(b.columns)
    labels = predictions.drop_duplicates("row").set_index("row").loc[rows, "label"].to_numpy()
    return labels, a.loc[rows, seeds].to_numpy().T, b.loc[rows, seeds].to_numpy().T


def write_comparisons(folder: Path, comparisons: pd.DataFrame) -> Path:
    return write_atomic(Path(folder) / COMPARISONS_FILE, comparisons.to_parquet(index=False))


def load_comparisons(folder: Path) -> pd.DataFrame:
    path = folder / COMPARISONS_FILE
    return read_parquet(path) if path.is_file() else pd.DataFrame()

