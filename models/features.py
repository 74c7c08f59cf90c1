"""Frozen-backbone features of an image cache, extracted once per machine and shared by LP trials."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fundus_search.caching import build_once
from fundus_search.data_io import to_float
from fundus_search.models.backbones import FeatureNet
from fundus_search.progress import Progress

log = logging.getLogger(__name__)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (mixed precision for fine-tuning, as the FLAIR code trains); a no-op on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def extract_features(
    net: FeatureNet,
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    desc: str = "frozen features",
) -> np.ndarray:
    """Features of every image with the backbone frozen in eval mode, no augmentation.

    Args:
        net: the feature network (normalisation and projection included).
        images: (N, S, S, 3) uint8.
        desc: the step's name on its progress bar or lines (fundus_search.progress).

    Returns:
        (N, net.feature_dim) float32.
    """
    device = torch.device(device)
    net = net.to(device).eval()
    if device.type == "cuda":
        net = net.to(memory_format=torch.channels_last)
    out = np.empty((len(images), net.feature_dim), dtype=np.float32)
    with Progress(len(images), desc) as progress:
        for start in range(0, len(images), batch_size):
            batch = to_float(
                torch.from_numpy(np.array(images[start : start + batch_size])).to(device)
            )  # copy: memmap is read-only
            with autocast(device):
                out[start : start + len(batch)] = net(batch).float().cpu().numpy()
            progress.update(len(batch))
    return out


def feature_cache_key(
    *, weights_id: str, backbone: str, projection: bool, normalize: str, image_cache_key: str, source: str = ""
) -> str:
    """The frozen features' identity: the weights, how the network is built around them (the
    source decides the pooling: RETFound's mean of patch tokens, DINOv2's class token) and the pixels."""
    payload = json.dumps(
        {
            "weights": weights_id,
            "source": source,
            "backbone": backbone,
            "projection": projection,
            "normalize": normalize,
            "images": image_cache_key,
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def load_or_extract_features(
    key: str,
    cache_dir: Path,
    build_net: Callable[[], FeatureNet],
    images: np.ndarray,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Cached features for `key`, extracting them (with `build_net()`) only on a miss.

    Safe when several trials ask at once: the first extracts under a file lock, the others
    wait and load. Written to a temporary file and renamed, so a reader never sees half a file.

    Args:
        key: from `feature_cache_key`; covers weights, preprocessing and images.
        cache_dir: the cache root; files live in `cache_dir/features/<key>.npy`.
        build_net: called only on a miss, so a hit never reads a weight file.
        images: (N, S, S, 3) uint8.

    Returns:
        (N, D) float32.
    """
    folder = Path(cache_dir) / "features"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.npy"

    def extract() -> None:
        desc = f"features {key[:8]}: extracting"
        features = extract_features(build_net(), images, batch_size=batch_size, device=device, desc=desc)
        tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
        np.save(tmp, features)
        os.replace(tmp, target)
        log.info("features %s: extracted %s", key, features.shape)

    build_once(folder / f"{key}.lock", target.exists, extract)
    return np.load(target)
