"""The models a study hands out: bundles of the evaluated configurations' final models.

The final model of a configuration is its test-split run of seed 0: trained on every image
outside the test split, and exactly the model whose test-split predictions the evaluation
stored (one seed, no ensemble). Its trained network rides on the run's last report as a
checkpoint (`keep_model`); once the evaluation has finished, the chosen ones become bundles in
`<evaluation>/models/<config_id>/` and every other such checkpoint is removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
from safetensors.torch import load_file

from fundus_search.data_io import ImageCache
from fundus_search.models.bundle import META_FILE, Architecture, save_bundle
from fundus_search.results.answer import Planned, evaluation_table, load_evaluation
from fundus_search.results.layout import EvaluationFolder, trial_folder
from fundus_search.search.engine.trainable import MODEL_FILE
from fundus_search.search.ops.folders import provenance
from fundus_search.search.study.config import Config
from fundus_search.strategy import TRANSFER_STRATEGIES
from fundus_search.vocabulary import INIT, METRICS, SEED, STRATEGY, TEST

KEEP = ("best", "all", "none")  # --keep-models
MODELS_DIR = "models"


def chosen_configs(
    runs: pd.DataFrame, predictions: pd.DataFrame, finals: pd.DataFrame, primary: list[str], keep: str
) -> list[str]:
    """The config ids whose final model (a row of `finals`) becomes a bundle: every evaluated
    configuration (`all`), the best cell of the `primary` comparisons by cross-validated average
    (`best`), or none."""
    if keep == "none":
        return []
    if keep == "all":
        return sorted(finals["config_id"].unique())
    table = evaluation_table(runs, predictions)
    if table.empty:
        return []
    strategies = set(runs[STRATEGY])
    cells = {cell for p in map(Planned.parse, primary) for cell in p.cells(strategies)}
    candidates = table[[(r[INIT], r[STRATEGY]) in cells for _, r in table.iterrows()]] if cells else table
    candidates = candidates[candidates["config_id"].isin(finals["config_id"])]
    if candidates.empty:
        return []
    return [str(candidates.sort_values("average_mean", ascending=False)["config_id"].iloc[0])]


def write_bundles(folder: Path, config: Config, cache: ImageCache, keep: str) -> list[Path]:
    """Write the chosen configurations' bundles (again: none already there is rewritten), then
    remove every kept-model checkpoint of the evaluation.

    Returns:
        the bundle folders, in config-id order.
    """
    folder = Path(folder)
    runs, predictions = load_evaluation(folder)
    finals = runs[(runs["split"] == TEST) & (runs[SEED] == 0)]
    primary = EvaluationFolder.open(folder).protocol.get("primary") or []
    written = []
    for config_id in chosen_configs(runs, predictions, finals, primary, keep):
        destination = folder / MODELS_DIR / config_id
        if (destination / META_FILE).is_file():
            written.append(destination)
            continue
        run = finals[finals["config_id"] == config_id].iloc[0]
        weights = _kept_model(folder, run["trial_id"])
        if weights is None:  # removed by an earlier write, before this bundle was asked for
            continue
        written.append(_bundle(destination, weights, run, config, cache))
    for checkpoint in folder.glob(f"trial_*/checkpoint_*/{MODEL_FILE}"):
        shutil.rmtree(checkpoint.parent)
    return written


def _kept_model(folder: Path, trial_id: str) -> Path | None:
    found = sorted(folder.glob(f"{trial_folder(trial_id)}/checkpoint_*/{MODEL_FILE}"))
    return found[-1] if found else None


def _bundle(destination: Path, weights: Path, run: pd.Series, config: Config, cache: ImageCache) -> Path:
    state = load_file(str(weights))
    projection = state.get("features.projection.projection.weight")
    architecture = Architecture(
        backbone=config.model.arch(run[INIT]),
        normalize=str(run["normalize"]),
        projection_dim=None if projection is None else int(projection.shape[0]),
        options=config.model.backbone_options(run[INIT]),
    )
    classifier = architecture.build(config.image_size(run[INIT]))
    classifier.load_state_dict(state, strict=True)
    meta = provenance(config, cache.meta["fingerprint"])
    strategy = TRANSFER_STRATEGIES[run[STRATEGY]]
    record = {
        "name": run["config_id"],
        "init": run[INIT],
        "init_source": config.model.inits[run[INIT]].source,
        "weights_id": run["weights_id"],
        "strategy": run[STRATEGY],
        "hyperparameters": {k: _plain(run[k]) for k in strategy.params(config.training.lp_solver)},
        "training": {"lp_solver": config.training.lp_solver, "lp_c": config.training.lp_c},
        "epochs": int(run["epochs"]),
        "seed": int(run[SEED]),
        "ensemble": False,
        "data": config.facts().dataset,
        "dataset_fingerprint": cache.meta["fingerprint"],
        "trained_on": f"{int(run['n_train'])} images: every image outside the held-out test split",
        "metrics": {m: float(run[m]) for m in METRICS if pd.notna(run[m])},
        "metrics_on": f"the held-out test split ({int(run['n_scored'])} images), this very model "
        f"(evaluation run {run['run_id']})",
        "source_trial": {"search_trial_id": run["source_trial_id"], "optuna_number": int(run["source_optuna_number"])},
        "versions": json.loads(meta["versions"]),
        "git_commit": meta["git_commit"],
    }
    return save_bundle(
        destination,
        classifier,
        backbone=architecture.backbone,
        backbone_options=architecture.options,
        preprocessing=config.data_spec(config.image_size(run[INIT])).preprocessing,
        classes=tuple(cache.classes),
        record=record,
    )


def _plain(value):
    return value.item() if hasattr(value, "item") else value
