"""B2 LP trials: 20 linear-probe trials on one init with the feature cache vs re-extracting per trial.

Both run the real Trainer (lp, AdamW, 10 epochs). Cached: features extracted once into the
feature cache, every trial loads them. Naive: every trial extracts features itself. The
naive total is 20 x the median of 5 measured naive trials (each trial is the same work).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import REPEATS, main, median, timed, write
from fundus_search.data_io import DataSpec, SyntheticSpec, fold_indices, prepare_images
from fundus_search.models import (
    InitSpec,
    Trainer,
    TrainSettings,
    build_feature_net,
    extract_features,
    load_or_extract_features,
)


def run(tiny: bool = False) -> dict:
    trials, backbone, size, n = (2, "resnet18", 32, 24) if tiny else (20, "resnet50", 128, 300)
    measured = 1 if tiny else REPEATS
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        spec = DataSpec(
            source="synthetic", synthetic=SyntheticSpec(n=n, size=size), image_size=size, cache_dir=Path(tmp)
        )
        cache = prepare_images(spec)
        train_idx, val_idx = fold_indices(cache.labels, cache.groups, folds=3, fold=0, seed=0)
        images = np.asarray(cache.images)

        def build():
            return build_feature_net(InitSpec(source="random"), backbone, seed=0)

        def trial(load_features, seed: int) -> None:
            settings = TrainSettings(strategy="lp", max_epochs=10, lp_lr=1e-3, batch_size=32, seed=seed)
            trainer = Trainer(
                settings,
                images=images,
                labels=cache.labels,
                train_idx=train_idx,
                val_idx=val_idx,
                build_net=build,
                load_features=load_features,
            )
            for _ in trainer.epochs():
                pass

        def cached_search() -> None:
            folder = Path(tempfile.mkdtemp(dir=tmp))
            for seed in range(trials):
                trial(lambda: load_or_extract_features("b2", folder, build, images), seed)

        naive_trial = timed(lambda: trial(lambda: extract_features(build(), images), 0), measured)
        cached_total = timed(cached_search, 1 if tiny else 3)
    naive_total = trials * median(naive_trial)
    figures = {
        "trials": trials,
        "backbone": backbone,
        "image_size": size,
        "images": n,
        "naive_trial_seconds": naive_trial,
        "naive_total_seconds": naive_total,
        "cached_total_seconds": cached_total,
        "speedup": naive_total / median(cached_total),
    }
    return write("b2_lp_trials", figures, target="cached total >= 20x less time than naive", tiny=tiny)


if __name__ == "__main__":
    main(run, __doc__, ("naive_total_seconds", "cached_total_seconds", "speedup"))
