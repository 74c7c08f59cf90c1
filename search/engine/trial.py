"""From a config and one trial's parameters to a ready Trainer: shared by `train` and the Ray trainable."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
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
from fundus_search.search.study.config import Config
from fundus_search.vocabulary import (
    BATCH_SIZE,
    CV,
    FOLD,
    FT_BLOCKS,
    FT_LR,
    LAYER_DECAY,
    LP_EPOCHS,
    LP_LR,
    REPEAT,
    SEED,
    SPLIT,
    TEST,
    TRAIN_SEED,
    WEIGHT_DECAY,
)

_INTS = {SEED, FOLD, REPEAT, LP_EPOCHS, FT_BLOCKS, BATCH_SIZE, TRAIN_SEED, "max_epochs", "optuna_number"}
_FLOATS = {LP_LR, FT_LR, LAYER_DECAY, WEIGHT_DECAY}


@dataclass(frozen=True)
class TrialConfig:
    """What a trial's config carries: the search space's point (`SearchSpace`) or an evaluation's
    planned run (`search.evaluate.retrain`). Parameters a strategy does not read are None.

    Attributes:
        split: `cv` trains on the other folds and scores fold `fold` of partition `repeat`;
            `test` trains on every row outside the test split and scores the test split.
        train_seed: the seed training uses when it is not `seed` (an evaluation's CV runs).
        max_epochs: main-phase epochs; None: search.max_epochs.
        keep_predictions: report the last epoch's scored rows and P(positive) (evaluation runs).
        keep_model: save the trained network with the last epoch's report (an evaluation's
            test-split runs: the models a study hands out as bundles).
        run: an evaluation run's bookkeeping (run_id, config_id, rank, source trial...), kept
            in its rows and never read by training.
    """

    init: str
    strategy: str
    seed: int
    split: str = CV
    fold: int | None = None
    repeat: int = 0
    lp_lr: float | None = None
    ft_lr: float | None = None
    lp_epochs: int | None = None
    ft_blocks: int | None = None
    layer_decay: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    train_seed: int | None = None
    max_epochs: int | None = None
    optuna_number: int | None = None
    keep_predictions: bool = False
    keep_model: bool = False
    run: dict = field(default_factory=dict)

    RUN_KEYS = ("run_id", "config_id", "rank", "source_trial_id", "source_optuna_number", "search_score")

    @classmethod
    def of(cls, params: dict) -> TrialConfig:
        """Parse a trial config dict strictly.

        Raises:
            ValueError: a key no part of the product writes, or a split without its fold.
        """
        names = {f.name for f in fields(cls)} - {"run"}
        unknown = sorted(set(params) - names - set(cls.RUN_KEYS))
        if unknown:
            raise ValueError(f"trial config: unknown key(s) {unknown}; known: {sorted(names | set(cls.RUN_KEYS))}")
        values = {k: v for k, v in params.items() if k in names and v is not None}
        for k in values.keys() & _INTS:  # numpy scalars from pandas rows, floats from JSON
            values[k] = int(values[k])
        for k in values.keys() & _FLOATS:
            values[k] = float(values[k])
        values.setdefault(SPLIT, CV)
        if values[SPLIT] not in (CV, TEST):
            raise ValueError(f"trial config: split must be {CV!r} or {TEST!r} (got {values[SPLIT]!r})")
        if values[SPLIT] == CV and FOLD not in values:
            raise ValueError("trial config: a cv run needs its fold")
        if values[SPLIT] == TEST:
            values.pop(FOLD, None)
            values[REPEAT] = 0
        return cls(**values, run={k: params[k] for k in cls.RUN_KEYS if k in params})

    @property
    def training_seed(self) -> int:
        return self.seed if self.train_seed is None else self.train_seed


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


def make_trainer(config: Config, trial: TrialConfig, images: np.ndarray, info: DatasetInfo) -> tuple[Trainer, dict]:
    """The Trainer of one configuration, and its provenance: the id of its init's weights and the
    input normalisation they are used with (results.store.TRIAL_REPORT_KEYS).

    Args:
        config: the validated search config.
        trial: the trial's config (`TrialConfig.of(tune's config dict)`).
        images: (N, S, S, 3) uint8, the whole cached dataset.
        info: labels, groups and cache keys of `images`.
    """
    data = config.data
    train_idx, val_idx = split_indices(
        info.labels,
        info.groups,
        folds=data.folds,
        fold=trial.fold if trial.split == CV else None,
        seed=data.seed,
        test_fraction=data.test_fraction,
        repeat=trial.repeat,
    )
    init_name, backbone = trial.init, config.model.arch(trial.init)
    seed = trial.training_seed
    init = config.model.init_spec(init_name)
    where = f"model.inits.{init_name}"
    device = resolve_device(config.training.device)
    weights = weights_id(init, backbone, seed=seed, where=where)

    def build_net():
        return build_feature_net(init, backbone, seed=seed, where=where, image_size=config.image_size(trial.init))

    def load_features():
        key = feature_cache_key(
            weights_id=weights,
            source=init.source,
            backbone=backbone,
            projection=init.projection,
            normalize=init.normalize,
            image_cache_key=info.image_cache_key,
        )
        return load_or_extract_features(
            key, info.cache_dir, build_net, images, batch_size=config.training.eval_batch_size, device=device
        )

    t = config.training
    # None where the strategy does not read them: TrainSettings' defaults stand in, unused
    given = ((WEIGHT_DECAY, trial.weight_decay), (BATCH_SIZE, trial.batch_size), (LAYER_DECAY, trial.layer_decay))
    optional = {k: v for k, v in given if v is not None}
    settings = TrainSettings(
        strategy=trial.strategy,
        max_epochs=trial.max_epochs or config.search.max_epochs,
        lp_lr=trial.lp_lr,
        ft_lr=trial.ft_lr,
        lp_epochs=trial.lp_epochs or 0,
        ft_blocks=trial.ft_blocks or 0,
        **optional,
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
