"""Batched augmentation on the training device, from uint8 batches (the FLAIR augmentation set)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; FLAIR trained with flips, small affine and colour jitter.

    Args:
        flip: probability of a horizontal flip (left and right eyes are mirror images).
        rotation_deg: rotation drawn uniformly in [-rotation_deg, rotation_deg].
        scale: zoom drawn uniformly in [1 - scale, 1 + scale].
        brightness: multiplicative brightness factor in [1 - brightness, 1 + brightness].
        contrast: contrast factor in [1 - contrast, 1 + contrast] around each image's mean.
    """

    flip: float = 0.5
    rotation_deg: float = 10.0
    scale: float = 0.1
    brightness: float = 0.2
    contrast: float = 0.2


def to_float(batch: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 -> (B, 3, S, S) float32 in [0, 1]."""
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


def augment(images: torch.Tensor, generator: torch.Generator, spec: Augmentation = Augmentation()) -> torch.Tensor:
    """Randomly flip, rotate, scale and colour-jitter a float batch, one draw per image.

    Args:
        images: (B, 3, S, S) float in [0, 1], on any device.
        generator: a CPU torch.Generator; the same state gives the same batch.
        spec: the ranges.

    Returns:
        (B, 3, S, S) float in [0, 1] on the device of `images`.
    """
    b = images.shape[0]
    u = torch.rand(b, 5, generator=generator).to(images.device)  # (B, 5) uniform draws
    angle = (u[:, 0] * 2 - 1) * math.radians(spec.rotation_deg)
    zoom = 1 + (u[:, 1] * 2 - 1) * spec.scale
    flip = torch.where(u[:, 2] < spec.flip, -1.0, 1.0)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    zero = torch.zeros_like(cos)
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, zero], 1), torch.stack([sin * flip, cos, zero], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = (1 + (u[:, 3] * 2 - 1) * spec.brightness).view(b, 1, 1, 1)
    contrast = (1 + (u[:, 4] * 2 - 1) * spec.contrast).view(b, 1, 1, 1)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    return ((out - mean) * contrast + mean).mul_(brightness).clamp_(0, 1)
