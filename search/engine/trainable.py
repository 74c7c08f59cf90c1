"""The Ray Tune trainable: a thin adapter from a trial config to `models.Trainer`.

The only module that calls `tune.report` / `tune.get_checkpoint`. Every epoch reports every
metric; every `storage.checkpoint_every`-th epoch (but never the last: the trial ends there) also
saves a checkpoint, from which a retried or resumed trial continues exactly. An evaluation run
(`keep_predictions`) also reports its last epoch's predictions, and a kept one (`keep_model`)
its trained network as the last checkpoint.
"""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import numpy as np
import ray
import torch
from ray import tune
from safetensors.torch import save_file

from fundus_search.search.engine.trial import DatasetInfo, TrialConfig, make_trainer
from fundus_search.search.study.config import Config

STATE_FILE = "trainer.pt"
MODEL_FILE = "model.safetensors"  # a kept model's last checkpoint: the classifier's weights alone


def train_trial(params: dict, *, images: dict[int, np.ndarray], info: dict[int, DatasetInfo], config: Config) -> None:
    """Train one configuration, reporting each main-phase epoch to Tune.

    Args:
        params: Tune's trial config: a search-space point or an evaluation run (see `TrialConfig`).
        images: input size S -> (N, S, S, 3) uint8 from the object store (zero-copy, read-only).
        info: input size -> labels, groups and cache keys of those images.
        config: the validated search config.
    """
    torch.set_num_threads(max(1, int(config.resources.cpus_per_trial)))
    trial = TrialConfig.of(params)
    size = config.image_size(trial.init)
    info = info[size]
    trainer, provenance = make_trainer(config, trial, images[size], info)
    # host:node-id, unique even for several Ray nodes on one machine (cluster/local.sh)
    node = f"{socket.gethostname()}:{ray.get_runtime_context().get_node_id()[:12]}"
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state = Path(folder) / STATE_FILE
            # A kept model's checkpoint (killed after its last report, before Tune recorded the
            # end) holds no optimiser to continue from: the run trains again from the start,
            # deterministically, to the same model (bit for bit on the CPU).
            if state.is_file():
                trainer.load_state_dict(torch.load(state, weights_only=True))
    for metrics in trainer.epochs():
        last = metrics["epoch"] == trainer.main_epochs
        scored = predictions(trainer) if last and trial.keep_predictions else {}
        report = {
            **metrics,
            "epochs_planned": trainer.main_epochs,
            **provenance,
            "dataset_fingerprint": info.fingerprint,
            "node": node,
            **scored,
        }
        if last and trial.keep_model:  # the trained network itself, for a model bundle (no optimiser)
            with tempfile.TemporaryDirectory() as folder:
                state = {k: v.detach().cpu().contiguous() for k, v in trainer.classifier().state_dict().items()}
                save_file(state, str(Path(folder) / MODEL_FILE))
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))
            continue
        if last or metrics["epoch"] % config.storage.checkpoint_every:
            tune.report(report)
            continue
        with tempfile.TemporaryDirectory() as folder:
            torch.save(trainer.state_dict(), Path(folder) / STATE_FILE)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(folder))


def predictions(trainer) -> dict:
    """The scored rows of the image array and their P(positive), for an evaluation's last epoch
    (results.store.PREDICTION_REPORT_KEYS)."""
    return {
        "scored_rows": trainer.val_idx.tolist(),
        "scored_probabilities": trainer.val_probabilities.tolist(),
        "n_train": len(trainer.train_idx),
    }
