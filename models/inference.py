"""CPU inference time: the CGI-HRDC leaderboard ranked it beside the scores."""

from __future__ import annotations

import time

import numpy as np
import torch

from fundus_search.data_io import Preprocessing, preprocess_image, to_float


@torch.no_grad()
def cpu_ms_per_image(
    classifier: torch.nn.Module,
    image: np.ndarray,
    preprocessing: Preprocessing,
    *,
    threads: int,
    repeats: int = 5,
    warmup: int = 1,
) -> float:
    """Median CPU milliseconds from a decoded image to its probability (see cpu_ms_samples)."""
    return float(
        np.median(cpu_ms_samples(classifier, image, preprocessing, threads=threads, repeats=repeats, warmup=warmup))
    )


def cpu_ms_samples(
    classifier: torch.nn.Module,
    image: np.ndarray,
    preprocessing: Preprocessing,
    *,
    threads: int,
    repeats: int = 5,
    warmup: int = 1,
) -> np.ndarray:
    """`repeats` timings, in CPU milliseconds, from a decoded image to its probability of the positive class:
    preprocessing (crop, resize, pad), conversion, the network and the softmax, at batch 1, on
    `threads` torch threads (the challenge timed inference on CPU).

    Args:
        classifier: images (B, 3, S, S) in [0, 1] -> logits (B, 2).
        image: (H, W, 3) uint8, as decoded from its file.
    """
    classifier = classifier.to("cpu").eval()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:

        @torch.inference_mode()  # as deployed: no autograd bookkeeping
        def classify() -> float:
            x = to_float(torch.from_numpy(preprocess_image(image, preprocessing)[None]))  # (1, 3, S, S)
            return float(torch.softmax(classifier(x), dim=1)[0, 1])

        for _ in range(warmup):
            classify()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            classify()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 1000 * np.asarray(times)
