"""Backbones without their classifier, with input normalisation built in: torchvision's ResNets
(the FLAIR and torchvision-ImageNet key layout) and any timm architecture (ViTs, DINOv2 ViTs
with registers, ConvNeXt...), always built with `pretrained=False`: weights come from local
files only (models/weights.py)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


@dataclass(frozen=True)
class BackboneEntry:
    """A torchvision architecture; its facts are torchvision's own."""

    name: str

    @property
    def build(self) -> Callable[..., nn.Module]:
        return torchvision.models.get_model_builder(self.name)

    @property
    def weights_enum(self) -> str:
        """torchvision's weights enum (`ResNet50_Weights`), for the `torchvision` weight source."""
        return torchvision.models.get_model_weights(self.name).__name__

    @functools.cached_property
    def feature_dim(self) -> int:
        """Width of the pooled features once fc is removed (read off a weightless meta-device copy)."""
        with torch.device("meta"):
            return self.build(weights=None).fc.in_features


BACKBONES: dict[str, BackboneEntry] = {name: BackboneEntry(name) for name in ("resnet18", "resnet34", "resnet50")}

# Input normalisation is an explicit, recorded choice: FLAIR was pretrained on [0, 1] inputs
# without mean/std normalisation; torchvision's ImageNet weights expect the mean/std their own
# transforms carry; RETFound-Green was trained with mean and std 0.5.
_IMAGENET = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.transforms()
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": (tuple(_IMAGENET.mean), tuple(_IMAGENET.std)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def is_backbone(name: str) -> bool:
    """A torchvision ResNet of BACKBONES, or an architecture timm can build."""
    if name in BACKBONES:
        return True
    import timm

    return bool(timm.is_model(name))


def build_backbone(name: str, *, image_size: int | None = None, pool: str | None = None, **options) -> nn.Module:
    """The architecture `name` without its classifier, with its library's default initialisation:
    images (B, 3, S, S) -> one feature vector per image (B, backbone_dim), pooled as the model's own
    recipe pools (timm: global average or the class token, as `options` such as `global_pool` say).

    Args:
        image_size: S, for timm models whose position embeddings are built for one input size (ViTs).
        pool: a timm model's pooling once built (`reset_classifier(0, global_pool=pool)`: `avg`,
            the mean of the patch tokens after the final norm, as RETFound-Green pools).
        options: further timm `create_model` arguments (e.g. global_pool="avg", fc_norm=True).

    Raises:
        KeyError: neither a torchvision ResNet of BACKBONES nor a timm architecture.
    """
    if name in BACKBONES:
        model = BACKBONES[name].build(weights=None)
        model.fc = nn.Identity()
        model.num_features = BACKBONES[name].feature_dim  # timm's name for it, so `feature_width` reads both
        return model
    import timm

    if not timm.is_model(name):
        raise KeyError(name)
    model = None
    if image_size is not None:
        with contextlib.suppress(TypeError):  # an architecture without a fixed input size (ConvNeXt...)
            model = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **options)
    if model is None:
        model = timm.create_model(name, pretrained=False, num_classes=0, **options)
    if pool is not None:
        model.reset_classifier(0, global_pool=pool)
    return model


def feature_width(model: nn.Module) -> int:
    """Width of the feature vector of a model `build_backbone` made."""
    return int(getattr(model, "head_hidden_size", None) or model.num_features)


def backbone_dim(name: str, *, image_size: int | None = None, **options) -> int:
    """Width of the backbone's feature vector, without building it (a weightless meta-device copy)."""
    if name in BACKBONES:
        return BACKBONES[name].feature_dim
    with torch.device("meta"):
        return feature_width(build_backbone(name, image_size=image_size, **options))  # options may hold `pool`


class Normalize(nn.Module):
    """Per-channel (x - mean) / std, or identity for `none`."""

    def __init__(self, name: str):
        super().__init__()
        stats = NORMALIZATIONS[name]
        self.name = name
        mean, std = stats if stats else ((0.0,) * 3, (1.0,) * 3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.name == "none" else (x - self.mean) / self.std


class FlairProjection(nn.Module):
    """FLAIR's vision projection: L2-normalise, 2048 -> 512 linear (no bias), L2-normalise."""

    def __init__(self, in_dim: int = 2048, out_dim: int = 512):
        super().__init__()
        self.projection = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(F.normalize(x, dim=-1)), dim=-1)


class FeatureNet(nn.Module):
    """images (B, 3, S, S) in [0, 1] -> features (B, feature_dim): normalise, backbone, projection."""

    def __init__(
        self, backbone: nn.Module, feature_dim: int, *, normalize: str = "none", projection: nn.Module | None = None
    ):
        super().__init__()
        self.normalize = Normalize(normalize)
        self.backbone = backbone
        self.projection = projection
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize(x))
        return self.projection(features) if self.projection is not None else features


class Head(nn.Module):
    """BatchNorm1d without affine parameters, then a linear layer (MAE's linear-probing head).

    Pooled features of different backbones differ in scale by orders of magnitude; the
    parameter-free normalisation lets one learning-rate range fit every init, and the whole
    head is copied into the network by LP-FT.
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.norm = nn.BatchNorm1d(in_dim, affine=False)
        self.linear = nn.Linear(in_dim, num_classes)

    @torch.no_grad()
    def standardise(self, features: torch.Tensor) -> None:
        """Set the normalisation's statistics to the exact mean and variance of `features` (N, D)."""
        self.norm.running_mean.copy_(features.mean(0))
        self.norm.running_var.copy_(features.var(0, unbiased=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x))


class Classifier(nn.Module):
    """A FeatureNet with a linear head: the one model shape of LP, FT and LP-FT."""

    def __init__(self, features: FeatureNet, head: Head):
        super().__init__()
        self.features = features
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def depth_groups(backbone: nn.Module) -> list[list[str]]:
    """The backbone's parameters by depth, input to output: the stem, each block (a ResNet's
    stages, a ViT's transformer blocks), then what follows the blocks (a ViT's final norms), as
    name prefixes. The rule behind partial fine-tuning and layer-wise learning-rate decay.

    Raises:
        ValueError: an architecture without this rule (torchvision ResNets and timm ViTs have it).
    """
    if all(hasattr(backbone, f"layer{i}") for i in range(1, 5)):  # a torchvision ResNet
        return [["conv1", "bn1"], ["layer1"], ["layer2"], ["layer3"], ["layer4"], []]
    blocks = getattr(backbone, "blocks", None)
    if hasattr(backbone, "patch_embed") and isinstance(blocks, nn.Sequential):  # a timm ViT
        stem = ["patch_embed", "cls_token", "reg_token", "pos_embed", "norm_pre"]
        return [stem, *([f"blocks.{i}"] for i in range(len(blocks))), ["norm", "fc_norm", "attn_pool"]]
    raise ValueError(
        f"{type(backbone).__name__}: partial_ft and layer_decay know the depth of torchvision ResNets and timm "
        "ViTs only; use ft, lp_ft or norm_ft with layer_decay 1 for this architecture"
    )


def depth_of(name: str, groups: list[list[str]]) -> int:
    """The index in `groups` of the parameter `name`."""
    for depth, prefixes in enumerate(groups):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return depth
    raise ValueError(f"{name}: a parameter outside every depth group; this architecture's depth rule is incomplete")


NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
