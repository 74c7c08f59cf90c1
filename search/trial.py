"""From a config and one trial's parameters to a ready Trainer: shared by `train` and the Ray trainable."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data_io import ImageCache, fold_indices
from models import Trainer, TrainSettings, build_feature_net, feature_cache_key, load_or_extract_features, weights_id

from .config import Config

# The search-space keys, in the order they appear in tables and Parquet.
PARAMS = ("init", "strategy", "lp_lr", "ft_lr", "lp_epochs", "weight_decay", "batch_size", "seed", "fold")


@dataclass(frozen=True)
class DatasetInfo:
    """What a trial needs to know about the cached images besides the pixels."""

    labels: np.ndarray  # (N,) int64
    groups: tuple[str, ...]
    image_cache_key: str
    fingerprint: str
    cache_dir: Path

    @classmethod
    def of(cls, cache: ImageCache, cache_dir: Path) -> "DatasetInfo":
        return cls(cache.labels, tuple(cache.groups), cache.key, cache.meta["fingerprint"], cache_dir)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def make_trainer(config: Config, params: dict, images: np.ndarray, info: DatasetInfo) -> tuple[Trainer, str]:
    """The Trainer of one configuration, and the id of its init's weights (for provenance).

    Args:
        config: the validated search config.
        params: search-space values; keys of PARAMS, absent (or None) where they do not apply.
        images: (N, S, S, 3) uint8, the whole cached dataset.
        info: labels, groups and cache keys of `images`.
    """
    data = config.data
    train_idx, val_idx = fold_indices(info.labels, info.groups, folds=data.folds,
                                      fold=params.get("fold", data.fold), seed=data.seed)
    init_name, backbone, seed = params["init"], config.model.backbone, int(params["seed"])
    init = config.model.init_spec(init_name)
    where = f"model.inits.{init_name}"
    device = resolve_device(config.training.device)
    weights = weights_id(init, backbone, seed=seed, where=where)

    def build_net():
        return build_feature_net(init, backbone, seed=seed, where=where)

    def load_features():
        key = feature_cache_key(weights_id=weights, backbone=backbone, projection=init.projection,
                                normalize=init.normalize, image_cache_key=info.image_cache_key)
        return load_or_extract_features(key, info.cache_dir, build_net, images,
                                        batch_size=config.training.eval_batch_size, device=device)

    t = config.training
    settings = TrainSettings(
        strategy=params["strategy"], max_epochs=int(params.get("max_epochs") or config.search.max_epochs),
        lp_lr=params.get("lp_lr"), ft_lr=params.get("ft_lr"), lp_epochs=int(params.get("lp_epochs") or 0),
        weight_decay=float(params["weight_decay"]), batch_size=int(params["batch_size"]), seed=seed,
        lp_solver=t.lp_solver, lp_c=t.lp_c, head_lr_mult=t.head_lr_mult, grad_clip=t.grad_clip,
        eval_batch_size=t.eval_batch_size, augmentation=t.augmentation_spec(), device=device,
    )
    trainer = Trainer(settings, images=images, labels=info.labels, train_idx=train_idx, val_idx=val_idx,
                      build_net=build_net, load_features=load_features)
    return trainer, weights
