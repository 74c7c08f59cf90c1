"""From a config and one trial's parameters to a ready Trainer: shared by `train` and the Ray trainable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fundus_search.data_io import ImageCache, split_indices
from fundus_search.models import (
    Trainer,
    TrainSettings,
    build_feature_net,
    feature_cache_key,
    load_or_extract_features,
    weights_id,
)

from fundus_search.vocabulary import (
    BATCH_SIZE,
    FOLD,
    FT_LR,
    INIT,
    LP_EPOCHS,
    LP_LR,
    REPEAT,
    SEED,
    STRATEGY,
    TRAIN_SEED,
    WEIGHT_DECAY,
)

from fundus_search.search.study.config import Config


@dataclass(frozen=True)
class DatasetInfo:
    """What a trial needs to know about the cached images besides the pixels."""

    labels: np.ndarray  # (N,) int64
    groups: tuple[str, ...]
    image_cache_key: str
    fingerprint: str
    cache_dir: Path

    @classmethod
    def of(cls, cache: ImageCache, cache_dir: Path) -> DatasetInfo:
        return cls(cache.labels, tuple(cache.groups), cache.key, cache.meta["fingerprint"], cache_dir)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_trainer(config: Config, params: dict, images: np.ndarray, info: DatasetInfo) -> tuple[Trainer, dict]:
    """The Trainer of one configuration, and its provenance: the id of its init's weights and the
    input normalisation they are used with (results.store.TRIAL_REPORT_KEYS).

    Args:
        config: the validated search config.
        params: search-space values; keys of vocabulary.PARAMS, absent (or None) where they do not apply,
            except `fold`: None trains on every row outside the test split and scores the test split;
            and, in evaluation runs, `repeat` (the partition of the repeated k-fold, 0 when absent)
            and `train_seed` (the seed training uses, when it is not `seed`).
        images: (N, S, S, 3) uint8, the whole cached dataset.
        info: labels, groups and cache keys of `images`.
    """
    data = config.data
    train_idx, val_idx = split_indices(
        info.labels,
        info.groups,
        folds=data.folds,
        fold=params.get(FOLD, data.fold),
        seed=data.seed,
        test_fraction=data.test_fraction,
        repeat=int(params.get(REPEAT) or 0),
    )
    init_name, backbone = params[INIT], config.model.backbone
    seed = int(params[TRAIN_SEED] if params.get(TRAIN_SEED) is not None else params[SEED])
    init = config.model.init_spec(init_name)
    where = f"model.inits.{init_name}"
    device = resolve_device(config.training.device)
    weights = weights_id(init, backbone, seed=seed, where=where)

    def build_net():
        return build_feature_net(init, backbone, seed=seed, where=where)

    def load_features():
        key = feature_cache_key(
            weights_id=weights,
            backbone=backbone,
            projection=init.projection,
            normalize=init.normalize,
            image_cache_key=info.image_cache_key,
        )
        return load_or_extract_features(
            key, info.cache_dir, build_net, images, batch_size=config.training.eval_batch_size, device=device
        )

    t = config.training
    settings = TrainSettings(
        strategy=params[STRATEGY],
        max_epochs=int(params.get("max_epochs") or config.search.max_epochs),
        lp_lr=params.get(LP_LR),
        ft_lr=params.get(FT_LR),
        lp_epochs=int(params.get(LP_EPOCHS) or 0),
        weight_decay=float(params[WEIGHT_DECAY]),
        batch_size=int(params[BATCH_SIZE]),
        seed=seed,
        lp_solver=t.lp_solver,
        lp_c=t.lp_c,
        head_lr_mult=t.head_lr_mult,
        grad_clip=t.grad_clip,
        eval_batch_size=t.eval_batch_size,
        augmentation=t.augmentation_spec(),
        device=device,
    )
    trainer = Trainer(
        settings,
        images=images,
        labels=info.labels,
        train_idx=train_idx,
        val_idx=val_idx,
        build_net=build_net,
        load_features=load_features,
    )
    return trainer, {"weights_id": weights, "normalize": init.normalize}
