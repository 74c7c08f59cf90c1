"""Plain-text tables of a search for the terminal: best configurations, the init x strategy
table of the seed paper's shape, and each cell's winner."""

from __future__ import annotations

import pandas as pd

from fundus_search.results.query import DATASET, metric_column
from fundus_search.statistics import CALIBRATED_PROTOCOLS, scored_protocol
from fundus_search.vocabulary import (
    AUC,
    AVERAGE,
    F1,
    FT_BLOCKS,
    FT_LR,
    INIT,
    KAPPA,
    LAYER_DECAY,
    LP_EPOCHS,
    LP_LR,
    PARAMS,
    SPECIFICITY,
    STRATEGIES,
    STRATEGY,
    WEIGHT_DECAY,
    best,
    held_out,
    val,
)

_SHOWN_WITH_BEST = tuple(best(val(m)) for m in (KAPPA, F1, SPECIFICITY, AUC))


def best_columns(frame: pd.DataFrame, metric: str) -> list[str]:
    """The columns `best` shows: identity, parameters, the metric, its epoch, the other metrics."""
    column = metric_column(frame, metric)
    extra = [c for c in _SHOWN_WITH_BEST if c != column]
    return ["search", DATASET, "trial_id", "status", *PARAMS, column, "best_epoch", *extra, "epochs_run"]


def format_best(rows: pd.DataFrame) -> str:
    """The best trials; `search` and `dataset` columns appear when the rows come from several."""
    shown = rows.drop(columns=["trial_id"])
    if shown["search"].nunique() <= 1:
        shown = shown.drop(columns=["search"])
    if shown[DATASET].nunique(dropna=False) <= 1:
        shown = shown.drop(columns=[DATASET])
    else:
        shown = shown.assign(**{DATASET: shown[DATASET].str[:12]}).rename(columns={DATASET: "dataset"})
    shown = shown.dropna(axis=1, how="all")
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        return shown.to_string(index=False)


def format_table(table: pd.DataFrame, metric: str = val(AVERAGE)) -> str:
    """init rows x strategy columns: `0.612 (k 0.41 F1 0.60 Sp 0.83) n=4`, one table per dataset."""
    datasets = list(dict.fromkeys(table[DATASET])) if DATASET in table else [None]
    if len(datasets) == 1:
        return _format_one_table(table, metric)
    parts = [f"{len(datasets)} datasets (fingerprints differ): one table each, never pooled"]
    for fingerprint in datasets:
        rows = table[table[DATASET] == fingerprint]
        searches = rows["searches"].iloc[0]
        parts.append(
            f"\ndataset {fingerprint[:12]} (search{'es' if ',' in searches else ''} {searches}):\n"
            + _format_one_table(rows, metric)
        )
    return "\n".join(parts)


def _format_one_table(table: pd.DataFrame, metric: str) -> str:
    column = metric_column(table, metric)

    def cell(r) -> str:
        if pd.isna(r[column]):
            return f"- n={r['trials']}"
        return (
            f"{r[column]:.3f} (k {r[best(val(KAPPA))]:.2f} F1 {r[best(val(F1))]:.2f} "
            f"Sp {r[best(val(SPECIFICITY))]:.2f}) n={r['trials']}"
        )

    grid = table.assign(cell=table.apply(cell, axis=1)).pivot(index="init", columns="strategy", values="cell")
    grid = grid[[s for s in STRATEGIES if s in grid.columns]].fillna("-")
    header = f"best {metric} per init x strategy (kappa, F1, specificity of that trial; n = trials)"
    return header + "\n" + grid.to_string()


def format_winners(table: pd.DataFrame, trials: pd.DataFrame, metric: str = val(AVERAGE)) -> str:
    """Each cell's winning configuration, one line per cell."""
    column = metric_column(table, metric)
    by_id = trials.set_index(["search", "trial_id"])
    lines = ["each cell's winner:"]
    for r in table.dropna(subset=[column]).itertuples():
        t = by_id.loc[(r.search, r.trial_id)]
        where = f"{r.search} " if table["search"].nunique() > 1 else ""
        lines.append(
            f"  {r.init:<9} {r.strategy:<6} {getattr(r, column):.3f}  {where}#{int(t['optuna_number'])} "
            f"{describe_params(t)} ({t['status']}, epoch {int(t['best_epoch'])})"
        )
    return "\n".join(lines)


def describe_params(row) -> str:
    """`lp_lr=0.001 ft_lr=3e-05 weight_decay=0.0001 lp_epochs=5`, the parameters that apply (a
    layer decay only when it decays: 1 is one rate for the whole backbone)."""
    rates = " ".join(f"{k}={row[k]:.2g}" for k in (LP_LR, FT_LR, WEIGHT_DECAY) if pd.notna(row[k]))
    counts = "".join(f" {k}={int(row[k])}" for k in (LP_EPOCHS, FT_BLOCKS) if pd.notna(row.get(k)))
    decay = row.get(LAYER_DECAY)
    text = rates + counts + (f" {LAYER_DECAY}={decay:.2g}" if pd.notna(decay) and decay != 1 else "")
    return text.strip() or "no searched parameters"


def _plus_minus(mean: float, std: float, digits: int = 3) -> str:
    return "-" if pd.isna(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}" if pd.notna(std) else f"{mean:.{digits}f}"


def evaluation_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's table as text cells: init x strategy rows, challenge metrics as mean ± std
    over (repeat, fold) pairs, the pooled out-of-fold AUC, the search-fold score and the
    optimism, test-split columns when present, single-class flags (terminal and report alike)."""
    out = pd.DataFrame({INIT: table[INIT], "strategy": table[STRATEGY]})
    if (table["rank"] > 1).any():
        out["rank"] = table["rank"]
    for m, label in ((KAPPA, "kappa"), (F1, "F1"), (SPECIFICITY, "specificity"), (AVERAGE, "average")):
        if f"{m}_mean" in table:
            out[label] = [_plus_minus(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    if "oof_auc" in table:
        out["OOF AUC"] = table["oof_auc"].map("{:.3f}".format)
    out["search fold"] = table["search_score"].map("{:.3f}".format)
    if "optimism" in table:
        out["optimism"] = table["optimism"].map("{:+.3f}".format)
    if f"{held_out(AVERAGE)}_mean" in table:
        for m, label in ((AVERAGE, "test average"), (AUC, "test AUC")):
            means, stds = table[f"{held_out(m)}_mean"], table[f"{held_out(m)}_std"]
            out[label] = [_plus_minus(a, b) for a, b in zip(means, stds, strict=True)]
    out["one class"] = [_single_class(r) for _, r in table.iterrows()]
    out["configuration"] = [f"{r['config']}, {r['epochs']} epochs" for _, r in table.iterrows()]
    return out


def _single_class(row) -> str:
    """`3/6 cv` : runs that predicted one class for every image they scored (`-`: none)."""
    parts = [
        f"{int(row[k])}/{int(row[n])} {where}"
        for k, n, where in (("single_class_runs", "runs", "cv"), ("test_single_class_runs", "test_seeds", "test"))
        if k in row and pd.notna(row[k]) and row[k] > 0
    ]
    return ", ".join(parts) or "-"


def evaluation_caption(table: pd.DataFrame) -> str:
    folds, repeats, seeds = (int(table[c].max()) for c in ("folds", "repeats", "seeds"))
    return (
        f"cross-validated {AVERAGE} and its parts: mean ± std over {folds} folds x {repeats} repeat"
        f"{'s' if repeats > 1 else ''} ({seeds} seed{'s' if seeds > 1 else ''} averaged within each fold); "
        f"search fold = the score the search chose the configuration by (that fold is one of the folds "
        f"above); optimism = search fold - cross-validated {AVERAGE}; one class = runs that predicted one "
        "class for every image"
    )


def format_evaluation_table(table: pd.DataFrame) -> str:
    """The evaluation table for the terminal (see evaluation_frame)."""
    if table.empty:
        return "no finished runs"
    frame = evaluation_frame(table)
    configs = "\n".join(f"  {r[INIT]:<9} {r['strategy']:<6} {r['configuration']}" for _, r in frame.iterrows())
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return (
            f"{evaluation_caption(table)}\n{frame.drop(columns=['configuration']).to_string(index=False)}\n"
            f"configurations:\n{configs}"
        )


def protocol_sentence(protocol: dict, table: pd.DataFrame) -> str:
    """`3-fold CV x 2 repeats x 1 seed (J = 6), 48 test images; primary question: 3 comparisons`."""
    k = protocol.get("k") or (int(table["folds"].max()) if "folds" in table else "?")
    repeats = protocol.get("repeats") or (int(table["repeats"].max()) if "repeats" in table else 1)
    seeds = protocol.get("seeds") or (int(table["seeds"].max()) if "seeds" in table else 1)
    folds = protocol.get("folds") or k
    test = protocol.get("test_images")
    text = (
        f"{k}-fold CV{f' ({folds} folds scored)' if folds != k else ''} x {repeats} repeat"
        f"{'s' if repeats > 1 else ''} x {seeds} seed{'s' if seeds > 1 else ''} (J = {folds * repeats} "
        f"fold differences per comparison)"
    )
    text += f", {test} held-out test images" if test else ", no held-out test split"
    primary = protocol.get("primary")
    if primary is not None:
        text += f"; primary question: {len(primary)} comparison{'s' if len(primary) != 1 else ''}"
    calibrated = scored_protocol(protocol) in CALIBRATED_PROTOCOLS
    return text + (
        "; a protocol benchmark B9 measured calibrated"
        if calibrated
        else "; NOT a protocol benchmark B9 measured calibrated (3 folds x 1-2 repeats x 1 seed): "
        "p-values are descriptive"
    )


def verdict_sentences(comparisons: pd.DataFrame) -> list[str]:
    """One sentence per primary comparison, e.g.
    `lp: flair - imagenet = +0.031 average [95% CI +0.004, +0.058], Holm p = 0.04; P(flair better
    by > 0.01) = 0.87: flair ahead`.

    Wording rules: `X ahead` only when the Holm-adjusted p-value is below 0.05, neither arm has a
    run that predicted one class for every image and the protocol (k x repeats x seeds, every
    fold scored) is one benchmark B9 measured calibrated; `not interpretable` when an arm has
    such runs (the numbers are still shown); `descriptive only` for another protocol; `not
    testable` when the test is undefined (the reason is given); otherwise `no detectable
    difference`. The interval is simultaneous over the primary family
    (Bonferroni, 1 - 0.05/m), so it excludes 0 only when Holm also rejects.
    """
    primary = _cv(comparisons)
    primary = primary[primary["family"] == "primary"]
    return [_sentence(r) for r in primary.itertuples()]


def _sentence(r) -> str:
    head = f"{r.within}: {r.name_a} - {r.name_b}"
    if isinstance(r.reason, str):
        return f"{head} = {r.difference:+.3f} {r.metric}: not testable ({r.reason})"
    leader, probability = (r.name_a, r.p_a_better) if r.difference >= 0 else (r.name_b, r.p_b_better)
    text = (
        f"{head} = {r.difference:+.3f} {r.metric} [95% CI {r.ci_low:+.3f}, {r.ci_high:+.3f}], Holm "
        f"{_p(r.p_adjusted)}; P({leader} better by > {r.rope:g}) = {probability:.2f}"
    )
    if isinstance(r.flags, str):
        return f"{text}: not interpretable, {r.flags}"
    if not getattr(r, "calibrated", False):
        return f"{text}: descriptive only (this protocol is not one benchmark B9 found calibrated)"
    return f"{text}: {leader} ahead" if r.p_adjusted < 0.05 else f"{text}: no detectable difference"


def _cv(comparisons: pd.DataFrame) -> pd.DataFrame:
    if comparisons.empty or "family" not in comparisons:
        return pd.DataFrame(columns=["family", "split"])
    return comparisons[comparisons["split"] == "cv"]


def grid_frame(table: pd.DataFrame) -> pd.DataFrame:
    """init x strategy: the cross-validated average of each cell's rank-1 configuration with its
    corrected 95% interval; `*` marks the best cell, `!` a cell with single-class runs."""
    top = table[table["rank"] == 1].dropna(subset=[f"{AVERAGE}_mean"])
    if top.empty:
        return pd.DataFrame()
    best_config = top.loc[top[f"{AVERAGE}_mean"].idxmax(), "config_id"]

    def cell(r) -> str:
        interval = (
            "" if pd.isna(r[f"{AVERAGE}_ci_low"]) else f" [{r[f'{AVERAGE}_ci_low']:.3f}, {r[f'{AVERAGE}_ci_high']:.3f}]"
        )
        marks = ("*" if r["config_id"] == best_config else "") + ("!" if r.get("single_class_runs", 0) else "")
        return f"{r[f'{AVERAGE}_mean']:.3f}{interval}{(' ' + marks) if marks else ''}"

    grid = top.assign(cell=top.apply(cell, axis=1)).pivot(index=INIT, columns=STRATEGY, values="cell")
    grid = grid[[s for s in STRATEGIES if s in grid.columns]].reindex(list(dict.fromkeys(top[INIT])))
    return grid.fillna("-").rename_axis(index=None, columns=None)


GRID_CAPTION = (
    "cross-validated average of each cell's configuration [95% interval over the (repeat, fold) "
    "averages, corrected for overlapping training sets]; * best cell; ! some runs predicted one class "
    "for every image"
)


def secondary_frame(comparisons: pd.DataFrame) -> pd.DataFrame:
    """The secondary comparisons, one row each: difference, 95% interval, Benjamini-Hochberg q,
    the Bayesian probabilities, flags."""
    rows = _cv(comparisons)
    rows = rows[rows["family"] == "secondary"]
    if rows.empty:
        return pd.DataFrame()
    return pd.DataFrame(
        {
            "comparison": rows["comparison"],
            "difference": rows["difference"].map("{:+.3f}".format),
            "95% CI": [
                "-" if pd.isna(lo) else f"{lo:+.3f}, {hi:+.3f}"
                for lo, hi in zip(rows["ci_low"], rows["ci_high"], strict=True)
            ],
            "BH q": rows["p_adjusted"].map(_p_number),
            "P(A better)": rows["p_a_better"].map(_prob),
            "P(equal)": rows["p_equivalent"].map(_prob),
            "P(B better)": rows["p_b_better"].map(_prob),
            "note": [
                r if isinstance(r, str) else (f if isinstance(f, str) else "")
                for r, f in zip(rows["reason"], rows["flags"], strict=True)
            ],
        }
    )


def _prob(p: float) -> str:
    return "-" if pd.isna(p) else f"{p:.2f}"


def test_split_sentences(comparisons: pd.DataFrame) -> list[str]:
    """The primary comparisons on the held-out test split: difference and spread, descriptive."""
    if comparisons.empty or "family" not in comparisons:
        return []
    rows = comparisons[(comparisons["split"] == "test") & (comparisons["family"] == "primary")]
    return [
        f"{r.within}: {r.name_a} - {r.name_b} = {r.difference:+.3f} {r.metric} (over test images "
        f"{r.ci_low:+.3f} .. {r.ci_high:+.3f}; {r.seeds} seed{'s' if r.seeds > 1 else ''})"
        + (f", {r.flags}" if isinstance(r.flags, str) else "")
        for r in rows.itertuples()
    ]


def cpu_sentence(cpu: dict) -> str:
    """`CPU ms per image, batch 1 (resnet18, every init): 9.1 (IQR 8.7-9.6) on 1 thread, ...`."""
    parts = []
    for arch, m in cpu.items():
        if not isinstance(m.get("ms_1_thread"), list):
            continue  # evaluations written before timings per architecture
        one, every = m["ms_1_thread"], m["ms_all_threads"]
        parts.append(
            f"{arch} ({', '.join(m['inits'])}): {one[0]:.1f} ms (IQR {one[1]:.1f}-{one[2]:.1f}) on 1 thread, "
            f"{every[0]:.1f} ms (IQR {every[1]:.1f}-{every[2]:.1f}) on {m['threads']}; {m['repeats']} timings"
        )
    return (
        (
            "CPU time from a decoded image to its probability, batch 1, per network (its inits and strategies "
            "share it): " + "; ".join(parts)
        )
        if parts
        else ""
    )


def format_answer(table: pd.DataFrame, comparisons: pd.DataFrame, evaluation) -> str:
    """The evaluation's answer for the terminal, the verdict first: protocol, one sentence per
    primary comparison, the init x strategy grid, the secondary comparisons, the test split, the
    full table, CPU time."""
    if table.empty:
        return "no finished runs"
    lines = [f"protocol: {protocol_sentence(evaluation.protocol, table)}", ""]
    verdict = verdict_sentences(comparisons)
    if verdict:
        lines += [
            "verdict (primary question; Holm-adjusted p-values, simultaneous 95% intervals, Bayesian "
            "correlated t-test for P(better)):",
            *(f"  {v}" for v in verdict),
            "",
        ]
    else:
        lines += ["verdict: no primary comparison could be made (it needs two evaluated cells sharing folds)", ""]
    grid = grid_frame(table)
    if not grid.empty:
        lines += [GRID_CAPTION, grid.to_string(), ""]
    secondary = secondary_frame(comparisons)
    if not secondary.empty:
        with pd.option_context("display.width", 250, "display.max_columns", 30):
            lines += [
                "secondary comparisons (exploratory; Benjamini-Hochberg q-values):",
                secondary.to_string(index=False),
                "",
            ]
    test = test_split_sentences(comparisons)
    if test:
        lines += [
            "held-out test split (descriptive: spread over its images for these trained models, no test):",
            *(f"  {t}" for t in test),
            "",
        ]
    lines.append(format_evaluation_table(table))
    cpu = cpu_sentence(evaluation.cpu_ms_per_image)
    return "\n".join(lines + ([cpu] if cpu else []))


def _p_number(p: float) -> str:
    """`<0.001`, `0.004`, `0.04`, `-` when undefined."""
    return "-" if pd.isna(p) else "<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def _p(p: float) -> str:
    number = _p_number(p)
    return "p undefined" if number == "-" else "p < 0.001" if number.startswith("<") else f"p = {number}"
