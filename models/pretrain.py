"""Small supervised pretraining, and saving a backbone in FLAIR's checkpoint layout.

Used to make offline stand-ins for pretrained weights (the demo and the tests): a backbone
pretrained on a synthetic corpus whose labels are not the downstream task.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from fundus_search.data_io import augment, to_float
from fundus_search.models.backbones import FeatureNet
from fundus_search.models.weights import FLAIR_PREFIX, FLAIR_PROJECTION_KEY


def pretrain(
    net: FeatureNet,
    images: np.ndarray,
    targets: np.ndarray,
    *,
    epochs: int,
    lr: float = 2e-3,
    batch_size: int = 32,
    seed: int = 0,
) -> list[float]:
    """Train `net` in place on multi-label targets with a throwaway linear head (BCE loss).

    Args:
        images: (N, S, S, 3) uint8.
        targets: (N, T) float in {0, 1}.

    Returns:
        the mean training loss of each epoch.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(net.feature_dim, targets.shape[1])
    model = nn.Sequential(net, head).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    y_all = torch.as_tensor(targets)
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator).numpy()
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            x = augment(to_float(torch.from_numpy(images[idx])), generator)
            loss = F.binary_cross_entropy_with_logits(model(x), y_all[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
    return losses


def save_flair_checkpoint(net: FeatureNet, path: Path, *, projection_dim: int = 512, seed: int = 0) -> Path:
    """Save `net`'s backbone with FLAIR's keys: `vision_model.model.*`, the vision projection,
    placeholder `text_model.*` keys and `logit_scale`, so it loads through the real FLAIR source.

    `.safetensors` or `.pth` by suffix. The projection is random (no text tower is trained).
    """
    generator = torch.Generator().manual_seed(seed)
    state = {FLAIR_PREFIX + k: v.detach().clone().contiguous() for k, v in net.backbone.state_dict().items()}
    state[FLAIR_PROJECTION_KEY] = (
        torch.randn(projection_dim, net.feature_dim, generator=generator) / net.feature_dim**0.5
    )
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.zeros(8, 16)
    state["text_model.projection_head_text.projection.weight"] = torch.zeros(projection_dim, 16)
    state["logit_scale"] = torch.tensor(np.log(1 / 0.07), dtype=torch.float32)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path
