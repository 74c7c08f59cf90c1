"""Config builders shared by the search tests."""

from __future__ import annotations

from pathlib import Path


def tiny_search_config(*, storage: Path, flair: Path | None = None, num_samples: int = 8, max_epochs: int = 3,
                       strategies=("lp", "ft", "lp_ft"), scheduler: dict | None = None, **space) -> dict:
    """A search on 80 synthetic 32-px images with ResNet-18: seconds per trial on one CPU."""
    inits = {"random": {"source": "random"}}
    if flair is not None:
        inits["flair"] = {"source": "flair", "path": str(flair)}
    return {
        "name": "tiny",
        "data": {"source": "synthetic", "synthetic": {"n": 80, "size": 32, "difficulty": 0.2}, "image_size": 32,
                 "folds": 3},
        "model": {"backbone": "resnet18", "inits": inits},
        "training": {"eval_batch_size": 32, "device": "cpu"},
        "search": {"num_samples": num_samples, "max_epochs": max_epochs, "seed": 0,
                   "space": {"strategy": list(strategies), "lp_epochs": [1, 2], "batch_size": [16], **space},
                   "scheduler": scheduler or {"type": "asha", "grace_period": 1, "reduction_factor": 2}},
        "resources": {"cpus_per_trial": 1, "max_concurrent_trials": 2},
        "storage": {"path": str(storage), "max_failures": 1},
    }
