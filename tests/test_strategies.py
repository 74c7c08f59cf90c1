"""What each fine-tuning strategy trains: partial_ft the last blocks and the head (everything
else bit-identical, BatchNorm statistics included), norm_ft only the normalisation layers'
affine parameters and the head, and layer_decay each depth's learning rate by the rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fundus_search.models import InitSpec, Trainer, TrainSettings, build_feature_net
from fundus_search.models.backbones import NORM_LAYERS

N, SIZE = 24, 32
IMAGES = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
LABELS = np.arange(N) % 2


def trainer(strategy: str, arch: str = "resnet18", **settings) -> Trainer:
    return Trainer(
        TrainSettings(strategy=strategy, max_epochs=1, ft_lr=1e-2, batch_size=8, seed=0, **settings),
        images=IMAGES,
        labels=LABELS,
        train_idx=np.arange(16),
        val_idx=np.arange(16, N),
        build_net=lambda: build_feature_net(InitSpec(source="random"), arch, seed=0, image_size=SIZE),
        load_features=lambda: None,
    )


def trained(t: Trainer) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The backbone's state (parameters and buffers) before and after one epoch."""
    t._setup_main_phase()
    before = {k: v.clone() for k, v in t.model.features.backbone.state_dict().items()}
    list(t.epochs())
    return before, t.model.features.backbone.state_dict()


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_partial_ft_trains_the_last_stage_and_leaves_every_other_bit_as_it_was():
    t = trainer("partial_ft", ft_blocks=1)
    t._setup_main_phase()
    head = t.model.head.linear.weight.clone()
    before, after = trained(t)
    moved = changed(before, after)
    assert moved and all(k.startswith("layer4.") for k in moved), sorted(moved)
    frozen = [k for k in before if not k.startswith("layer4.")]
    assert all(torch.equal(before[k], after[k]) for k in frozen), "stem, layer1-3 and their BatchNorm statistics"
    assert {k for k in moved if "conv" in k}, "the last stage's convolutions train"
    assert not torch.equal(head, t.model.head.linear.weight), "the head trains"


def test_partial_ft_of_a_vit_trains_its_last_blocks_and_final_norm():
    before, after = trained(trainer("partial_ft", arch="vit_tiny_patch16_224", ft_blocks=2))
    moved = changed(before, after)
    assert {k.split(".")[0] + ("." + k.split(".")[1] if k.startswith("blocks.") else "") for k in moved} == {
        "blocks.10",
        "blocks.11",
        "norm",
    }


def test_norm_ft_moves_only_the_normalisation_layers_affine_parameters():
    t = trainer("norm_ft")
    t._setup_main_phase()
    backbone = t.model.features.backbone
    norm_params = {
        f"{name}.{p}" for name, m in backbone.named_modules() if isinstance(m, NORM_LAYERS) for p in ("weight", "bias")
    }
    before = {k: v.clone() for k, v in backbone.named_parameters()}
    head = t.model.head.linear.weight.clone()
    list(t.epochs())
    after = dict(backbone.named_parameters())
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and moved <= norm_params, sorted(moved - norm_params)
    assert not torch.equal(head, t.model.head.linear.weight), "the head trains"


@pytest.mark.parametrize("arch,blocks", [("resnet18", 4), ("vit_tiny_patch16_224", 12)])
def test_layer_decay_gives_each_depth_its_rate(arch, blocks):
    """lr(block i of n, counted from 1 at the input) = ft_lr x decay^(n + 1 - i); the stem
    decay^(n + 1); what follows the blocks and the head ft_lr (MAE's and RETFound's rule)."""
    t = trainer("ft", arch=arch, layer_decay=0.5)
    t._setup_main_phase()
    rate = {id(p): g["lr"] for g in t.optimizer.param_groups for p in g["params"]}
    named = dict(t.model.features.backbone.named_parameters())
    block = "layer{}." if arch == "resnet18" else "blocks.{}."
    for i in range(1, blocks + 1):
        name = next(k for k in named if k.startswith(block.format(i if arch == "resnet18" else i - 1)))
        assert rate[id(named[name])] == pytest.approx(1e-2 * 0.5 ** (blocks + 1 - i)), name
    stem = "conv1.weight" if arch == "resnet18" else "patch_embed.proj.weight"
    assert rate[id(named[stem])] == pytest.approx(1e-2 * 0.5 ** (blocks + 1))
    assert rate[id(t.model.head.linear.weight)] == pytest.approx(1e-2)
    if arch != "resnet18":
        assert rate[id(named["norm.weight"])] == pytest.approx(1e-2)
    assert len(rate) == sum(1 for _ in t.model.parameters()), "every parameter trains under ft"
