"""The report's figures, drawn with matplotlib's Agg backend from the Parquet files, returned as
PNG bytes (the report inlines them). One function per figure; each takes plain DataFrames."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from fundus_search.direction import Direction  # noqa: E402
from fundus_search.metrics import classification_metrics, predict  # noqa: E402
from fundus_search.results.query import cell_winners  # noqa: E402
from fundus_search.vocabulary import COMPLETED, INIT, RATES, STOPPED_EARLY, STRATEGIES, STRATEGY  # noqa: E402

_STRATEGY_ORDER = STRATEGIES
_WIDTH = 10  # inches: the report's column at 100 dpi


def png(figure: plt.Figure) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def _cells(frame: pd.DataFrame) -> list[tuple[str, str]]:
    strategies = [s for s in _STRATEGY_ORDER if s in set(frame[STRATEGY])]
    return [
        (i, s)
        for i in sorted(set(frame[INIT]))
        for s in strategies
        if ((frame[INIT] == i) & (frame[STRATEGY] == s)).any()
    ]


def forest_plot(comparisons: pd.DataFrame) -> bytes:
    """Each cross-validated difference (A - B) with its interval, the primary question first
    (simultaneous intervals) then the secondary; the zero line marks no difference."""
    cv = comparisons[(comparisons["split"] == "cv") & comparisons["ci_low"].notna()]
    rows = cv.iloc[::-1].reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(_WIDTH, 0.35 * len(rows) + 1.2))
    colors = {"primary": "tab:blue", "secondary": "tab:gray"}
    for y, r in rows.iterrows():
        ax.errorbar(
            r["difference"],
            y,
            xerr=[[r["difference"] - r["ci_low"]], [r["ci_high"] - r["difference"]]],
            fmt="o",
            color=colors.get(r["family"], "gray"),
            capsize=3,
        )
    ax.axvline(0, color="black", lw=1)
    ax.set_yticks(range(len(rows)), list(rows["comparison"]))
    ax.set_xlabel(f"difference in {cv['metric'].iloc[0] if len(cv) else 'average'} (A - B), cross-validated")
    for family, color in colors.items():
        ax.plot(
            [], [], "o", color=color, label=f"{family}" + (" (simultaneous 95%)" if family == "primary" else " (95%)")
        )
    ax.legend(loc="lower right", fontsize=8)
    return png(fig)


def roc_curves(predictions: pd.DataFrame, runs: pd.DataFrame) -> bytes:
    """Out-of-fold ROC curve of each cell's best configuration (all seeds' predictions pooled)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    for config_id, p in _winner_predictions(predictions, runs):
        fpr, tpr, _ = roc_curve(p["label"], p["prob_positive"])
        auc = np.mean([classification_metrics(s["label"], s["prob_positive"])["auc"] for _, s in p.groupby("seed")])
        ax.plot(fpr, tpr, label=f"{config_id.rsplit('-', 1)[0]} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title="out-of-fold ROC")
    ax.legend(fontsize=7, loc="lower right")
    return png(fig)


def _winner_predictions(predictions: pd.DataFrame, runs: pd.DataFrame):
    cv = predictions[predictions["split"] == "cv"]
    for config_id in runs.loc[runs["rank"] == 1].sort_values([INIT, STRATEGY])["config_id"].unique():
        yield config_id, cv[cv["config_id"] == config_id]


def confusion_matrices(predictions: pd.DataFrame, runs: pd.DataFrame) -> bytes:
    """Each cell's best configuration at the challenge's decision rule (P >= 0.5), out of fold,
    counts summed over seeds."""
    winners = list(_winner_predictions(predictions, runs))
    cols = min(3, len(winners))
    rows = int(np.ceil(len(winners) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3 * rows), squeeze=False)
    for ax, (config_id, p) in zip(axes.flat, winners, strict=False):
        pred = predict(p["prob_positive"])
        counts = np.array([[np.sum((p["label"] == t) & (pred == q)) for q in (0, 1)] for t in (0, 1)])
        ax.imshow(counts, cmap="Blues", vmin=0)
        for (t, q), n in np.ndenumerate(counts):
            ax.text(q, t, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
        ax.set(
            xticks=[0, 1],
            yticks=[0, 1],
            xticklabels=["pred -", "pred +"],
            yticklabels=["true -", "true +"],
            title=config_id.rsplit("-", 1)[0],
        )
    for ax in list(axes.flat)[len(winners) :]:
        ax.axis("off")
    fig.tight_layout()
    return png(fig)


def best_so_far(trials: pd.DataFrame, epochs: pd.DataFrame, column: str, metric: str, mode: str) -> bytes:
    """The search metric's best so far, against trials finished and against training epochs
    spent, for each cell and overall."""
    done = trials[trials["status"].isin([COMPLETED, STOPPED_EARLY])].sort_values("optuna_number")
    spent = epochs.groupby("trial_id")["epoch"].max().reindex(done["trial_id"]).fillna(0).to_numpy()
    fig, (by_trial, by_epoch) = plt.subplots(1, 2, figsize=(_WIDTH, 3.6), sharey=True)
    for label, mask in [("overall", np.ones(len(done), bool))] + [
        (f"{i}/{s}", ((done[INIT] == i) & (done[STRATEGY] == s)).to_numpy()) for i, s in _cells(done)
    ]:
        values = np.where(mask, done[column].to_numpy(dtype=float), np.nan)
        curve = Direction(mode).running_best(values)
        style = {"color": "black", "lw": 2} if label == "overall" else {"lw": 1}
        by_trial.step(np.arange(1, len(done) + 1), curve, where="post", label=label, **style)
        by_epoch.step(np.cumsum(spent), curve, where="post", **style)
    by_trial.set(xlabel="trials finished", ylabel=f"best {metric} so far")
    by_epoch.set(xlabel="training epochs spent")
    by_trial.legend(fontsize=7)
    return png(fig)


def learning_curves(trials: pd.DataFrame, epochs: pd.DataFrame, metric: str, mode: str) -> bytes:
    """Every trial's metric by epoch, one panel per cell: stopped-early trials faded, the
    cell's winner highlighted."""
    cells = _cells(trials)
    cols = min(3, len(cells))
    rows = int(np.ceil(len(cells) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(_WIDTH, 2.8 * rows), squeeze=False, sharey=True)
    column = f"best_{metric}"
    for ax, (init, strategy) in zip(axes.flat, cells, strict=False):
        cell = trials[(trials[INIT] == init) & (trials[STRATEGY] == strategy) & trials[column].notna()]
        winners = cell_winners(cell, column, mode)["trial_id"]  # never an errored trial
        winner = winners.iloc[0] if len(winners) else None
        for t in cell.itertuples():
            curve = epochs[epochs["trial_id"] == t.trial_id].sort_values("epoch")
            if t.trial_id == winner:
                ax.plot(curve["epoch"], curve[metric], color="tab:red", lw=2, zorder=3, label="winner")
            else:
                ax.plot(
                    curve["epoch"],
                    curve[metric],
                    color="tab:blue",
                    lw=1,
                    alpha=0.3 if t.status == STOPPED_EARLY else 0.8,
                )
        ax.set(title=f"{init} / {strategy} ({len(cell)} trials)", xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in list(axes.flat)[len(cells) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel(metric)
    fig.tight_layout()
    return png(fig)


def asha_survival(trials: pd.DataFrame, rungs: list[int]) -> bytes:
    """How many trials of each cell reached each ASHA rung (epochs), of those that started."""
    cells = _cells(trials)
    fig, ax = plt.subplots(figsize=(_WIDTH, 3.2))
    width = 0.8 / max(1, len(rungs))
    for k, rung in enumerate(rungs):
        counts = [
            int(((trials[INIT] == i) & (trials[STRATEGY] == s) & (trials["epochs_run"] >= rung)).sum())
            for i, s in cells
        ]
        ax.bar(np.arange(len(cells)) + k * width, counts, width, label=f"reached epoch {rung}")
    ax.set_xticks(np.arange(len(cells)) + width * (len(rungs) - 1) / 2, [f"{i}/{s}" for i, s in cells], fontsize=8)
    ax.set_ylabel("trials")
    ax.legend(fontsize=7)
    return png(fig)


def parameter_scatter(trials: pd.DataFrame, column: str, metric: str, strategy: str, params: list[str]) -> bytes:
    """The metric of every trial of `strategy` against each parameter it searched, by init."""
    rows = trials[(trials[STRATEGY] == strategy) & trials[column].notna()]
    fig, axes = plt.subplots(1, len(params), figsize=(_WIDTH, 3), squeeze=False, sharey=True)
    for ax, param in zip(axes.flat, params, strict=False):
        for init, group in rows.groupby(INIT):
            ax.scatter(group[param], group[column], s=14, label=init)
        if param in RATES:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # decades only: minor labels collide
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(param)
    axes[0, 0].set_ylabel(metric)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(strategy)
    fig.tight_layout()
    return png(fig)


def importance_bars(importances: dict[str, float], title: str) -> bytes:
    """Optuna's parameter importances (they sum to 1)."""
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1))
    ax.barh(names, [importances[n] for n in names], color="tab:green")
    ax.set(xlabel="importance", title=title, xlim=(0, 1))
    return png(fig)
