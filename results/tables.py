"""Plain-text tables of a search for the terminal: best configurations, the init x strategy
table of the seed paper's shape, and each cell's winner."""

from __future__ import annotations

import pandas as pd

from vocabulary import (AUC, AVERAGE, F1, FT, FT_LR, INIT, KAPPA, LP, LP_EPOCHS, LP_FT, LP_LR, PARAMS, SPECIFICITY,
                        STRATEGY, WEIGHT_DECAY, best, held_out, val)

from .query import metric_column

_SHOWN_WITH_BEST = tuple(best(val(m)) for m in (KAPPA, F1, SPECIFICITY, AUC))


def best_columns(frame: pd.DataFrame, metric: str) -> list[str]:
    """The columns `best` shows: identity, parameters, the metric, its epoch, the other metrics."""
    column = metric_column(frame, metric)
    extra = [c for c in _SHOWN_WITH_BEST if c != column]
    return ["search", "trial_id", "status", *PARAMS, column, "best_epoch", *extra, "epochs_run"]


def format_best(rows: pd.DataFrame) -> str:
    shown = rows.drop(columns=["search", "trial_id"]).dropna(axis=1, how="all")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False)


def format_table(table: pd.DataFrame, metric: str = val(AVERAGE)) -> str:
    """init rows x strategy columns: `0.612 (k 0.41 F1 0.60 Sp 0.83) n=4`."""
    column = metric_column(table, metric)

    def cell(r) -> str:
        if pd.isna(r[column]):
            return f"- n={r['trials']}"
        return (f"{r[column]:.3f} (k {r[best(val(KAPPA))]:.2f} F1 {r[best(val(F1))]:.2f} "
                f"Sp {r[best(val(SPECIFICITY))]:.2f}) n={r['trials']}")

    grid = table.assign(cell=table.apply(cell, axis=1)).pivot(index="init", columns="strategy", values="cell")
    grid = grid[[s for s in (LP, FT, LP_FT) if s in grid.columns]].fillna("-")
    header = f"best {metric} per init x strategy (kappa, F1, specificity of that trial; n = trials)"
    return header + "\n" + grid.to_string()


def format_winners(table: pd.DataFrame, trials: pd.DataFrame, metric: str = val(AVERAGE)) -> str:
    """Each cell's winning configuration, one line per cell."""
    column = metric_column(table, metric)
    by_id = trials.set_index(["search", "trial_id"])
    lines = ["each cell's winner:"]
    for r in table.dropna(subset=[column]).itertuples():
        t = by_id.loc[(r.search, r.trial_id)]
        lines.append(f"  {r.init:<9} {r.strategy:<6} {getattr(r, column):.3f}  #{int(t['optuna_number'])} "
                     f"{describe_params(t)} ({t['status']}, epoch {int(t['best_epoch'])})")
    return "\n".join(lines)


def describe_params(row) -> str:
    """`lp_lr=0.001 ft_lr=3e-05 weight_decay=0.0001 lp_epochs=5`, the parameters that apply."""
    rates = " ".join(f"{k}={row[k]:.2g}" for k in (LP_LR, FT_LR, WEIGHT_DECAY) if pd.notna(row[k]))
    return rates + (f" {LP_EPOCHS}={int(row[LP_EPOCHS])}" if pd.notna(row[LP_EPOCHS]) else "")


def _plus_minus(mean: float, std: float, digits: int = 3) -> str:
    return "-" if pd.isna(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}" if pd.notna(std) else f"{mean:.{digits}f}"


def evaluation_frame(table: pd.DataFrame, cpu: dict[str, dict] | None = None) -> pd.DataFrame:
    """The paper's table as text cells: init x strategy rows, challenge metrics as mean ± std
    over folds, the pooled out-of-fold AUC, the search-fold score and the optimism, test-split
    columns when present, CPU ms per image (the terminal and the report show the same cells)."""
    out = pd.DataFrame({INIT: table[INIT], "strategy": table[STRATEGY]})
    if (table["rank"] > 1).any():
        out["rank"] = table["rank"]
    for m, label in ((KAPPA, "kappa"), (F1, "F1"), (SPECIFICITY, "specificity"), (AVERAGE, "average")):
        if f"{m}_mean" in table:
            out[label] = [_plus_minus(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"])]
    if "oof_auc" in table:
        out["OOF AUC"] = table["oof_auc"].map("{:.3f}".format)
    out["search fold"] = table["search_score"].map("{:.3f}".format)
    if "optimism" in table:
        out["optimism"] = table["optimism"].map("{:+.3f}".format)
    if f"{held_out(AVERAGE)}_mean" in table:
        for m, label in ((AVERAGE, "test average"), (AUC, "test AUC")):
            out[label] = [_plus_minus(a, b) for a, b in zip(table[f"{held_out(m)}_mean"], table[f"{held_out(m)}_std"])]
    if cpu:
        out["CPU ms/img (1 / all threads)"] = [
            f"{cpu[c]['ms_1_thread']:.1f} / {cpu[c]['ms_all_threads']:.1f}" if c in cpu else "-"
            for c in table["config_id"]]
    out["configuration"] = [f"{r['config']}, {r['epochs']} epochs" for _, r in table.iterrows()]
    return out


def evaluation_caption(table: pd.DataFrame) -> str:
    folds, seeds = int(table["folds"].max()), int(table["seeds"].max())
    return (f"cross-validated {AVERAGE} and its parts: mean ± std over {folds} folds ({seeds} seed"
            f"{'s' if seeds > 1 else ''} averaged within each fold); search fold = the score the search chose the "
            f"configuration by; optimism = search fold - cross-validated {AVERAGE}")


def format_evaluation_table(table: pd.DataFrame, cpu: dict[str, dict] | None = None) -> str:
    """The evaluation table for the terminal (see evaluation_frame)."""
    if table.empty:
        return "no finished runs"
    frame = evaluation_frame(table, cpu)
    configs = "\n".join(f"  {r[INIT]:<9} {r['strategy']:<6} {r['configuration']}" for _, r in frame.iterrows())
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return (f"{evaluation_caption(table)}\n{frame.drop(columns=['configuration']).to_string(index=False)}\n"
                f"configurations:\n{configs}")


def comparison_sentences(comparisons: pd.DataFrame) -> list[str]:
    """One sentence per comparison and method, e.g. `flair - imagenet (lp_ft): +0.041 average
    [95% CI +0.012, +0.070], p = 0.01 (5 folds x 3 seeds, corrected t-test)`."""
    sentences = []
    for r in comparisons.itertuples():
        what = f"{r.difference:+.3f} {r.metric} [95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}], {_p(r.p_value)}"
        within = f"{r.within}{', test split' if r.split == 'test' else ''}"
        if r.method == "corrected t-test":
            how = f"{r.folds} folds x {r.seeds} seeds, corrected t-test"
        else:
            how = f"paired bootstrap over {r.n} {'out-of-fold' if r.split == 'cv' else 'test-split'} images"
        sentences.append(f"{r.comparison} ({within}): {what} ({how})")
    return sentences


def format_comparisons(comparisons: pd.DataFrame) -> str:
    """The comparison sentences for the terminal."""
    if comparisons.empty:
        return "no paired comparisons (they need two evaluated cells sharing folds and seeds)"
    return "\n".join(["paired comparisons (A - B on the same folds, seeds and images):",
                      *(f"  {s}" for s in comparison_sentences(comparisons))])


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"
