"""An evaluation's answer, from its Parquet files: the cross-validated init x strategy table and
the paired comparisons. Every metric here is recomputed from `predictions.parquet`.

`runs.parquet` has one row per configuration x repeat x fold x seed (split "cv") and per
configuration x seed on the held-out test split (split "test"); `predictions.parquet` one row per scored
image per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from fundus_search.metrics import classification_metrics, predict
from fundus_search.results.layout import EvaluationFolder, SearchFolder, write_atomic
from fundus_search.results.query import ResultsError, read_parquet
from fundus_search.results.store import EVALUATION_TABLES, current_table
from fundus_search.results.tables import describe_params
from fundus_search.statistics import (
    BOOTSTRAP_ASSUMES,
    CALIBRATED_PROTOCOLS,
    TTEST_ASSUMES,
    bayesian_correlated_ttest,
    benjamini_hochberg,
    bootstrap_spread,
    corrected_cv_ttest,
    holm,
)
from fundus_search.vocabulary import (
    AUC,
    AVERAGE,
    CHALLENGE_METRICS,
    COMPARISONS_FILE,
    COMPLETED,
    CV,
    EVALUATION_DIR,
    EVALUATION_FILE,
    FT,
    INIT,
    LP,
    LP_FT,
    NORM_FT,
    PARTIAL_FT,
    PREDICTIONS_FILE,
    REPEAT,
    RUNS_FILE,
    STRATEGIES,
    STRATEGY,
    TEST,
    held_out,
)

PRIMARY, SECONDARY = "primary", "secondary"  # the declared question (Holm) and the rest (Benjamini-Hochberg)
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
    search = SearchFolder.open(path)  # or FolderError: not a search folder
    if not (search.path / (name or EVALUATION_DIR) / EVALUATION_FILE).is_file():
        raise ResultsError(
            f"{path}: no evaluation {name or EVALUATION_DIR!r} here; run "
            f"`fundus-search evaluate {path}{f' --name {name}' if name else ''}` first"
        )
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
        raise ResultsError(
            f"{Path(folder) / name}: not readable ({str(exc).splitlines()[0][:200]}); "
            f"continue the evaluation with `fundus-search resume {folder}`"
        ) from None


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
            repeat = f"repeat {run[REPEAT]} " if run.get(REPEAT) else ""
            where = (
                f"{repeat}fold {run['fold']} seed {run['seed']}" if run["split"] == CV else f"test seed {run['seed']}"
            )
            missing.setdefault(run["config_id"], []).append(where)
    return Progress(
        planned=meta.runs,
        finished=len(done),
        failed=failed,
        missing=tuple(f"{config}: {', '.join(where)}" for config, where in missing.items()),
    )


def run_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """Every run's metrics recomputed from its predictions: one row per run_id, with
    `single_class`: the run predicted one class for every image it scored (a degenerate model)."""
    rows = {}
    for run, p in predictions.groupby("run_id"):
        probs = p["prob_positive"].to_numpy()
        rows[run] = {
            **classification_metrics(p["label"].to_numpy(), probs),
            "single_class": len(np.unique(predict(probs))) == 1,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("run_id").reset_index()


def _scored(runs: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """The finished runs with their metrics recomputed from their predictions (runs without
    predictions drop out: a missing run is never scored as a negative)."""
    recomputed = run_metrics(predictions)
    scored = runs.drop(columns=[c for c in recomputed.columns if c != "run_id"], errors="ignore")
    scored = scored.merge(recomputed, on="run_id")
    if REPEAT not in scored:  # evaluations written before repeats
        scored[REPEAT] = 0
    scored[REPEAT] = scored[REPEAT].where(scored["split"] == CV)
    return scored


def per_fold(cv: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """One row per (repeat, fold): `columns` averaged over the seeds of that fold."""
    return cv.groupby([REPEAT, "fold"])[columns].mean()


def evaluation_table(runs: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """One row per evaluated configuration: kappa, F1, specificity and average as mean and std
    over the (repeat, fold) pairs (seeds averaged within a fold, std with ddof=1), the average's
    corrected 95% interval, the out-of-fold AUC pooled over folds (each image once per repeat
    and seed; mean over those), runs that predicted one class for every image, the search-fold
    score the configuration was chosen by and the optimism (search score minus the
    cross-validated average), and, when a test split exists, the same metrics on it as mean and
    std over seeds."""
    if runs.empty or predictions.empty:
        return pd.DataFrame()
    scored = _scored(runs, predictions)
    rows = []
    for config_id, group in scored.groupby("config_id", sort=False):
        first = group.iloc[0]
        row = {
            "config_id": config_id,
            INIT: first[INIT],
            STRATEGY: first[STRATEGY],
            "rank": int(first["rank"]),
            "config": describe_params(first),
            "epochs": int(first["epochs"]),
            "search_score": first["search_score"],
        }
        cv = group[group["split"] == CV]
        if len(cv):
            folds = per_fold(cv, list(CHALLENGE_METRICS))
            for m in CHALLENGE_METRICS:
                row[f"{m}_mean"], row[f"{m}_std"] = folds[m].mean(), folds[m].std(ddof=1)
            interval = corrected_cv_ttest(
                folds[AVERAGE].to_numpy(), n_train=cv["n_train"].mean(), n_test=cv["n_scored"].mean()
            )
            row[f"{AVERAGE}_ci_low"], row[f"{AVERAGE}_ci_high"] = interval.ci_low, interval.ci_high
            row["oof_auc"] = _pooled_auc(predictions[predictions["run_id"].isin(cv["run_id"])])
            row["folds"], row["repeats"], row["seeds"] = (
                cv["fold"].nunique(),
                cv[REPEAT].nunique(),
                cv["seed"].nunique(),
            )
            row["runs"], row["single_class_runs"] = len(cv), int(cv["single_class"].sum())
            row["optimism"] = row["search_score"] - row[f"{AVERAGE}_mean"]
        test = group[group["split"] == TEST]
        if len(test):
            for m in (*CHALLENGE_METRICS, AUC):
                row[f"{held_out(m)}_mean"], row[f"{held_out(m)}_std"] = test[m].mean(), test[m].std(ddof=1)
            row["test_seeds"], row["test_single_class_runs"] = len(test), int(test["single_class"].sum())
        rows.append(row)
    return pd.DataFrame(rows)


def _pooled_auc(predictions: pd.DataFrame) -> float:
    """AUC of all out-of-fold predictions of one repeat and seed at once, averaged over those."""
    if REPEAT not in predictions:
        predictions = predictions.assign(**{REPEAT: 0})
    per_pass = [
        classification_metrics(p["label"].to_numpy(), p["prob_positive"].to_numpy())[AUC]
        for _, p in predictions.groupby([predictions[REPEAT].fillna(0), "seed"])
    ]
    return float(np.mean(per_pass))


@dataclass(frozen=True)
class Planned:
    """One comparison of two cells: `a` minus `b` (init names under strategy `within`, or
    strategy names under init `within`); written `within: a - b`, e.g. `lp: flair - imagenet`."""

    within: str
    a: str
    b: str

    @property
    def key(self) -> str:
        return f"{self.within}: {self.a} - {self.b}"

    def cells(self, strategies: set[str]) -> tuple[tuple[str, str], tuple[str, str]]:
        """(init, strategy) of A and of B."""
        if self.within in strategies:
            return (self.a, self.within), (self.b, self.within)
        return (self.within, self.a), (self.within, self.b)

    @classmethod
    def parse(cls, text: str) -> Planned:
        """`lp: flair - imagenet` or `flair: lp_ft - ft`.

        Raises:
            ValueError: not of that form.
        """
        within, sep, rest = text.partition(":")
        a, dash, b = rest.partition(" - ")
        if not sep or not dash or not all(x.strip() for x in (within, a, b)):
            raise ValueError(
                f"a comparison is written 'STRATEGY: INIT_A - INIT_B' or 'INIT: STRATEGY_A - "
                f"STRATEGY_B', e.g. 'lp: flair - imagenet' (got {text!r})"
            )
        return cls(within.strip(), a.strip(), b.strip())


def _source_order(inits, sources: dict[str, str]) -> list[str]:
    """Inits in the order of their weight sources (flair, torchvision, random), then by name."""
    rank = {s: i for i, s in enumerate(SOURCE_ORDER)}
    return sorted(inits, key=lambda i: (rank.get(sources.get(i, "random"), len(SOURCE_ORDER)), i))


def default_primary(inits, strategies, sources: dict[str, str]) -> list[Planned]:
    """The primary question by default: every pair of pretrained inits (any source but `random`)
    under each strategy, e.g. FLAIR vs ImageNet under LP, FT and LP-FT; with fewer than two
    pretrained inits, every pair of inits."""
    order = _source_order(inits, sources)
    pretrained = [i for i in order if sources.get(i) != "random"]
    pool = pretrained if len(pretrained) >= 2 else order
    return [Planned(s, a, b) for s in strategies for a, b in combinations(pool, 2)]


# Within an init, each other strategy against fine-tuning (LP-FT first, as the seed paper asks).
_AGAINST_FT = (LP_FT, LP, PARTIAL_FT, NORM_FT)


def planned_comparisons(
    cells: list[tuple[str, str]], sources: dict[str, str], primary: list[Planned]
) -> list[tuple[str, Planned]]:
    """(family, comparison) for every comparison the study makes: the primary ones first, then,
    as secondary, every other pair of inits under each strategy (inits in the order of their
    weight sources: flair, torchvision, random) and, under each init, LP-FT, LP, partial and
    norm-only fine-tuning each against FT.
    A comparison is made only when both of its cells were evaluated."""
    present = set(cells)
    strategies = [s for s in STRATEGIES if any(c[1] == s for c in cells)]
    order = _source_order({i for i, _ in cells}, sources)
    secondary = [
        Planned(s, a, b) for s in strategies for a, b in combinations([i for i in order if (i, s) in present], 2)
    ]
    secondary += [Planned(i, a, FT) for i in order for a in _AGAINST_FT if (i, a) in present and (i, FT) in present]
    primary_pairs = {(p.within, frozenset((p.a, p.b))) for p in primary}
    plans = [(PRIMARY, p) for p in primary]
    plans += [(SECONDARY, p) for p in secondary if (p.within, frozenset((p.a, p.b))) not in primary_pairs]
    return [(family, p) for family, p in plans if all(c in present for c in p.cells(set(STRATEGIES)))]


def paired_comparisons(
    runs: pd.DataFrame,
    predictions: pd.DataFrame,
    sources: dict[str, str],
    *,
    primary: list[Planned],
    rope: float = 0.01,
    resamples: int = 2000,
    seed: int = 0,
    protocol: tuple[int, int, int] | None = None,
) -> pd.DataFrame:
    """The study's comparisons of each cell's rank-1 configuration, on the challenge average.

    Cross-validated: the corrected repeated k-fold t-test and the Bayesian correlated t-test
    (with `rope`) over the (repeat, fold) differences both arms share, seeds averaged within a
    fold. The primary family's p-values are Holm-adjusted and its intervals simultaneous
    (Bonferroni, 1 - 0.05/m); the secondary family gets Benjamini-Hochberg q-values. On the
    test split: the difference and its spread over test images, descriptive, no p-value.

    Args:
        protocol: (k, repeats, seeds) of the evaluation, every fold scored; `calibrated` is
            True only for one in statistics.CALIBRATED_PROTOCOLS.
    """
    if runs.empty or predictions.empty:
        return pd.DataFrame()
    scored = _scored(runs, predictions)
    top = scored[scored["rank"] == 1]
    cells = sorted(set(zip(top[INIT], top[STRATEGY], strict=True)))
    plans = planned_comparisons(cells, sources, primary)
    m = sum(family == PRIMARY for family, _ in plans)
    rows = []
    for family, plan in plans:
        a, b = (top[(top[INIT] == c[0]) & (top[STRATEGY] == c[1])] for c in plan.cells(set(STRATEGIES)))
        common = {
            "family": family,
            "comparison": plan.key,
            "within": plan.within,
            "name_a": plan.a,
            "name_b": plan.b,
            "a": a["config_id"].iloc[0],
            "b": b["config_id"].iloc[0],
            "metric": AVERAGE,
            "rope": rope,
            "calibrated": protocol in CALIBRATED_PROTOCOLS,
        }
        confidence = 1 - 0.05 / m if family == PRIMARY else 0.95
        rows.append(_compare_cv(a, b, common, confidence))
        test = _compare_test(a, b, predictions, common, resamples, seed)
        if test:
            rows.append(test)
    out = pd.DataFrame(rows)
    if out.empty:  # a single cell: nothing to compare
        return out
    for family, adjust, name in ((PRIMARY, holm, "holm"), (SECONDARY, benjamini_hochberg, "bh")):
        chosen = (out["family"] == family) & (out["split"] == CV)
        out.loc[chosen, "p_adjusted"] = adjust(out.loc[chosen, "p_value"].to_numpy())
        out.loc[chosen, "correction"] = name
    return out


def _flags(*arms: pd.DataFrame) -> str | None:
    """`imagenet-lp-1 predicts one class in 3 of 6 runs; ...` for the arms that have such runs."""
    flagged = [
        f"{arm['config_id'].iloc[0]} predicts one class in {int(arm['single_class'].sum())} of {len(arm)} runs"
        for arm in arms
        if arm["single_class"].any()
    ]
    return "; ".join(flagged) or None


def _compare_cv(a: pd.DataFrame, b: pd.DataFrame, common: dict, confidence: float) -> dict:
    a, b = a[a["split"] == CV], b[b["split"] == CV]
    paired = a.merge(b, on=[REPEAT, "fold", "seed"], suffixes=("_a", "_b"))  # runs both arms finished
    folds = paired.groupby([REPEAT, "fold"])[[f"{AVERAGE}_a", f"{AVERAGE}_b"]].mean()
    test = corrected_cv_ttest(
        (folds[f"{AVERAGE}_a"] - folds[f"{AVERAGE}_b"]).to_numpy(),
        n_train=paired["n_train_a"].mean() if len(paired) else 1.0,
        n_test=paired["n_scored_a"].mean() if len(paired) else 1.0,
        confidence=confidence,
    )
    better, equal, worse = bayesian_correlated_ttest(test, common["rope"])
    flags = _flags(a, b)
    return {
        **common,
        "split": CV,
        "method": "corrected repeated-CV t-test",
        "difference": test.difference,
        "ci_low": test.ci_low,
        "ci_high": test.ci_high,
        "confidence": confidence,
        "p_value": test.p_value,
        "p_a_better": better,
        "p_equivalent": equal,
        "p_b_better": worse,
        "n": test.n,
        "repeats": paired[REPEAT].nunique(),
        "folds": paired["fold"].nunique(),
        "seeds": paired["seed"].nunique(),
        "reason": test.reason,
        "flags": flags,
        "assumes": TTEST_ASSUMES,
    }


def _compare_test(
    a: pd.DataFrame, b: pd.DataFrame, predictions: pd.DataFrame, common: dict, resamples: int, seed: int
) -> dict | None:
    a, b = a[a["split"] == TEST], b[b["split"] == TEST]
    if not len(a) or not len(b):
        return None
    y, probs_a, probs_b = _aligned_predictions(predictions, a["run_id"], b["run_id"])
    spread = bootstrap_spread(y, probs_a, probs_b, resamples=resamples, seed=seed)
    flags = _flags(a, b)
    return {
        **common,
        "split": TEST,
        "method": "image bootstrap (descriptive)",
        "difference": spread.difference,
        "ci_low": spread.ci_low,
        "ci_high": spread.ci_high,
        "confidence": 0.95,
        "p_value": np.nan,
        "n": spread.n,
        "seeds": len(probs_a),
        "reason": "descriptive: test images resampled, models held fixed",
        "flags": flags,
        "assumes": BOOTSTRAP_ASSUMES,
    }


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
