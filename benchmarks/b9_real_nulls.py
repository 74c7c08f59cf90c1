"""B9 calibration, layer (b): null studies through the real `run` and `evaluate`.

Each study has two inits of exactly equal quality that are not identical: a seeded random
ResNet-18 saved as a torchvision weight file, and its twin, the same network with the channels
of layer 4's residual stream permuted (the same function: only the order of the features, and so
what each seeded head initialisation and each training step meets, differs). Both are
"pretrained" inits, so the default primary question is `twin_a - twin_b` under LP and FT. Each
study draws a new dataset (synthetic seed), a new base network and a new search seed, runs a
4-trial search (every cell once) and the real `start_evaluation` with the shipped protocol
(`evaluation` defaults: repeats and seeds), and reads back `comparisons.parquet`.

Recorded: the false-positive rate of the printed test (raw p < 0.05, Holm p < 0.05 and
P(better by > rope) > 0.95) per comparison, the family-wise rate per study, and the rate of
verdicts that read "X ahead" (Holm p < 0.05, no single-class runs, a calibrated protocol), each
with its Clopper-Pearson 95% interval. The target: each interval overlaps 5%.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torchvision
import yaml
from scipy import stats

from benchmarks.common import local_ray, main, write
from fundus_search.search.engine.tuner import start_search
from fundus_search.search.evaluate.retrain import EvaluationRequest, start_evaluation
from fundus_search.search.study.config import EvaluationConfig
from fundus_search.vocabulary import COMPARISONS_FILE


def permuted_twin(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """The same ResNet-18/34 function with layer 4's output channels in another order: each
    block's residual output (conv2, bn2, the downsample), the next block's input (conv1) and the
    classifier's input are permuted together."""
    twin = {k: v.clone() for k, v in state.items()}
    order = torch.randperm(state["fc.weight"].shape[1], generator=torch.Generator().manual_seed(seed))
    blocks = sorted({k.split(".")[1] for k in state if k.startswith("layer4.")}, key=int)
    for i, block in enumerate(blocks):
        prefix = f"layer4.{block}."
        if i > 0:
            twin[prefix + "conv1.weight"] = twin[prefix + "conv1.weight"][:, order]
        for name in ("conv2.weight", "downsample.0.weight"):
            if prefix + name in twin:
                twin[prefix + name] = twin[prefix + name][order]
        for bn in ("bn2", "downsample.1"):
            for part in ("weight", "bias", "running_mean", "running_var"):
                if f"{prefix}{bn}.{part}" in twin:
                    twin[f"{prefix}{bn}.{part}"] = twin[f"{prefix}{bn}.{part}"][order]
    twin["fc.weight"] = twin["fc.weight"][:, order]
    return twin


def study_config(folder: Path, study: int, *, tiny: bool) -> Path:
    torch.manual_seed(study)
    base = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(base, folder / "twin_a.pth")
    torch.save(permuted_twin(base, study), folder / "twin_b.pth")
    config = {
        "name": f"null{study}",
        "data": {
            "source": "synthetic",
            "synthetic": {"n": 48 if tiny else 120, "size": 32, "seed": 100 + study, "difficulty": 0.3},
            "image_size": 32,
            "folds": 3,
            "seed": study,
            "cache_dir": str(folder / "cache"),
        },
        "model": {
            "backbone": "resnet18",
            "inits": {
                "twin_a": {"source": "torchvision", "path": "twin_a.pth"},
                "twin_b": {"source": "torchvision", "path": "twin_b.pth"},
            },
        },
        "training": {"device": "cpu", "eval_batch_size": 64},
        "search": {
            "num_samples": 2 if tiny else 4,
            "max_epochs": 2,
            "seed": study,
            "scheduler": {"type": "fifo"},
            "space": {"strategy": ["lp"] if tiny else ["lp", "ft"], "batch_size": [16]},
        },
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "storage": {"path": str(folder / "runs"), "max_failures": 1},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def one_study(folder: Path, study: int, *, tiny: bool) -> pd.DataFrame:
    config = study_config(folder, study, tiny=tiny)
    request = EvaluationRequest(folds=(0, 1), repeats=1, seeds=1) if tiny else EvaluationRequest()
    with contextlib.redirect_stdout(io.StringIO()):
        search, _ = start_search(config, name=f"null{study}")
        evaluation = start_evaluation(search.path, request)
    comparisons = pd.read_parquet(evaluation / COMPARISONS_FILE)
    return comparisons[(comparisons["split"] == "cv") & (comparisons["family"] == "primary")].assign(study=study)


def _rate(count: int, total: int) -> dict:
    interval = stats.binomtest(count, total).proportion_ci() if total else None
    return {
        "rate": count / total if total else None,
        "count": count,
        "of": total,
        "ci95": [interval.low, interval.high] if interval else None,
    }


def run(tiny: bool = False) -> dict:
    studies = 1 if tiny else 20
    start = time.perf_counter()
    rows = []
    with local_ray(), tempfile.TemporaryDirectory() as tmp:
        for study in range(studies):
            folder = Path(tmp) / f"study{study}"
            folder.mkdir()
            rows.append(one_study(folder, study, tiny=tiny))
    table = pd.concat(rows, ignore_index=True)
    defined = table["p_value"].notna()
    bayes = table[["p_a_better", "p_b_better"]].max(axis=1) > 0.95
    per_study = table.groupby("study")["p_adjusted"].min()
    findings = (table["p_adjusted"] < 0.05) & table["flags"].isna() & table["calibrated"]  # read as "ahead"
    figures = {
        "studies": studies,
        "comparisons": len(table),
        "undefined": int((~defined).sum()),
        "protocol": {"folds": 3, "repeats": EvaluationConfig().repeats, "seeds": EvaluationConfig().seeds}
        if not tiny
        else {"folds": 2, "repeats": 1, "seeds": 1},
        "false_positive_rate": _rate(int((table["p_value"] < 0.05).sum()), int(defined.sum())),
        "holm_false_positive_rate": _rate(int((table["p_adjusted"] < 0.05).sum()), int(defined.sum())),
        "bayesian_false_positive_rate": _rate(int((bayes & defined).sum()), int(defined.sum())),
        "family_wise_error_rate": _rate(int((per_study < 0.05).sum()), int(per_study.notna().sum())),
        "finding_rate": _rate(int(findings.sum()), len(table)),  # the verdict said "X ahead"
        "single_class_flagged_share": float(table["flags"].notna().mean()),
        "p_values": [None if np.isnan(p) else round(float(p), 4) for p in table["p_value"]],
        "differences": [round(float(d), 4) for d in table["difference"]],
        "flagged": [isinstance(f, str) for f in table["flags"]],
        "seconds": time.perf_counter() - start,
    }
    return write(
        "b9_real_nulls",
        figures,
        tiny=tiny,
        target="each false-positive rate's 95% interval overlaps 0.05 (20 null studies, real evaluate)",
    )


if __name__ == "__main__":
    main(run, __doc__, ("false_positive_rate", "holm_false_positive_rate", "family_wise_error_rate", "seconds"))
