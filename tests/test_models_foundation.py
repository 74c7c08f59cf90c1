"""Foundation-model weight sources on tiny timm ViTs at 32 px: a RETFound (MAE) checkpoint with its
decoder and a position grid of another size, a DINOv2 teacher checkpoint with registers, and a
plain timm file each load through their source and give the features of the same weights loaded
into timm by hand; a key or shape that does not fit is one line, exit 2, before anything is written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from fundus_search.data_io import Preprocessing
from fundus_search.models import InitSpec, WeightsError, build_feature_net
from fundus_search.models.bundle import Architecture, load_bundle, save_bundle
from fundus_search.models.weights import RETFOUND_OPTIONS
from fundus_search.search.cli.main import main
from tests.helpers import tiny_search_config

VIT = "vit_tiny_patch16_224"  # width 192; at 32 px a 2 x 2 grid of patches
DINOV2 = "vit_small_patch14_reg4_dinov2"  # 4 registers; at 28 px a 2 x 2 grid
IMAGES = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def pretrained(name: str, **options) -> dict[str, torch.Tensor]:
    """Random weights of `name` at its own pretraining size (224 px: a 14 x 14 or 16 x 16 grid)."""
    torch.manual_seed(1)
    return timm.create_model(name, pretrained=False, num_classes=0, **options).state_dict()


def by_hand(name: str, state: dict[str, torch.Tensor], image_size: int, **options) -> torch.nn.Module:
    """The same weights in timm, the position grid resampled by hand, no fundus-search code."""
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=image_size, **options)
    state = dict(state)
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    state["pos_embed"] = resample_abs_pos_embed(
        state["pos_embed"], new_size=model.patch_embed.grid_size, num_prefix_tokens=prefix
    )
    model.load_state_dict(state, strict=False)  # RETFound: fc_norm stays at its initialisation
    return model.eval()


def features(net: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return net.eval()(images)


def retfound_file(folder: Path, state: dict[str, torch.Tensor]) -> Path:
    """`state` in RETFound's MAE layout: {"model": encoder + mask token + decoder}, the final norm kept."""
    mae = {
        **state,
        "norm.weight": torch.ones(192),
        "norm.bias": torch.zeros(192),
        "mask_token": torch.zeros(1, 1, 192),
        "decoder_embed.weight": torch.zeros(128, 192),
        "decoder_pos_embed": torch.zeros(1, 197, 128),
        "decoder_blocks.0.norm1.weight": torch.ones(128),
        "decoder_pred.weight": torch.zeros(768, 128),
    }
    path = folder / "RETFound_mae_natureCFP.pth"
    torch.save({"model": mae}, path)
    return path


def test_a_retfound_checkpoint_loads_with_its_grid_resampled_and_retfounds_pooling(tmp_path):
    state = pretrained(VIT, **RETFOUND_OPTIONS)
    assert state["pos_embed"].shape == (1, 197, 192), "pretrained on a 14 x 14 grid"
    net = build_feature_net(InitSpec(source="retfound", path=retfound_file(tmp_path, state)), VIT, image_size=32)
    assert net.normalize.name == "imagenet" and net.feature_dim == 192
    reference = by_hand(VIT, state, 32, **RETFOUND_OPTIONS)
    ours = features(net, IMAGES)
    mean, std = net.normalize.mean, net.normalize.std
    assert (ours - features(reference, (IMAGES - mean) / std)).abs().max() <= 1e-6
    # RETFound's own pooling: the mean of the patch tokens (not the class token), then fc_norm
    with torch.no_grad():
        tokens = reference.forward_features((IMAGES - mean) / std)
        pooled = reference.fc_norm(tokens[:, reference.num_prefix_tokens :].mean(dim=1))
    assert (ours - pooled).abs().max() <= 1e-6


def dinov2_teacher_file(folder: Path, state: dict[str, torch.Tensor]) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DINOv2 training checkpoint, {"teacher": backbone.* + heads}, of `state`'s tensors in DINOv2's
    own layout (its registers apart, its position embedding covering the class token), and the
    timm state dict those weights are (timm folds the class token's position into the token)."""
    pos0 = torch.randn(1, 1, state["cls_token"].shape[-1], generator=torch.Generator().manual_seed(2))
    native = {k: v for k, v in state.items() if k not in ("reg_token", "pos_embed")}
    native |= {
        "register_tokens": state["reg_token"],
        "pos_embed": torch.cat([pos0, state["pos_embed"]], dim=1),
        "mask_token": torch.zeros(1, state["cls_token"].shape[-1]),
    }
    teacher = {f"backbone.{k}": v for k, v in native.items()}
    teacher |= {"dino_head.mlp.0.weight": torch.zeros(8, 384), "ibot_head.last_layer.weight_g": torch.zeros(1, 8)}
    path = folder / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher}, path)
    return path, {**state, "cls_token": state["cls_token"] + pos0}


def test_a_dinov2_teacher_checkpoint_with_registers_loads_as_timm_reads_it(tmp_path):
    path, state = dinov2_teacher_file(tmp_path, pretrained(DINOV2))
    net = build_feature_net(InitSpec(source="dinov2", path=path), DINOV2, image_size=28)
    images = IMAGES[:, :, :28, :28]
    reference = by_hand(DINOV2, state, 28)
    mean, std = net.normalize.mean, net.normalize.std
    assert (features(net, images) - features(reference, (images - mean) / std)).abs().max() <= 1e-6


def test_a_plain_timm_safetensors_file_loads_without_its_classifier(tmp_path):
    torch.manual_seed(3)
    model = timm.create_model(VIT, pretrained=False, num_classes=1000, img_size=32)
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))  # head.* included
    net = build_feature_net(InitSpec(source="timm", path=tmp_path / "model.safetensors", normalize="half"), VIT,
                            image_size=32)  # fmt: skip
    model.reset_classifier(0)
    assert (features(net, IMAGES) - features(model, (IMAGES - 0.5) / 0.5)).abs().max() <= 1e-6
    # `pool: avg` (RETFound-Green's recipe): the mean of the patch tokens in place of the class token
    pooled = build_feature_net(
        InitSpec(source="timm", path=tmp_path / "model.safetensors", normalize="half", pool="avg"), VIT, image_size=32
    )
    model.reset_classifier(0, global_pool="avg")
    assert (features(pooled, IMAGES) - features(model, (IMAGES - 0.5) / 0.5)).abs().max() <= 1e-6
    assert (features(pooled, IMAGES) - features(net, IMAGES)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "damage,message",
    [
        (lambda s: s | {"blocks.0.attn.extra": torch.zeros(3)}, "unexpected ['blocks.0.attn.extra']"),
        (lambda s: s | {"blocks.1.mlp.fc1.weight": torch.zeros(10, 192)}, "shape mismatch at blocks.1.mlp.fc1.weight"),
        (lambda s: {k: v for k, v in s.items() if k != "blocks.2.norm1.weight"}, "missing ['blocks.2.norm1.weight']"),
    ],
    ids=["unexpected-key", "wrong-shape", "missing-key"],
)  # fmt: skip
def test_a_checkpoint_that_does_not_fit_is_one_line_before_anything_is_written(damage, message, tmp_path, capsys):
    state = damage(pretrained(VIT, **RETFOUND_OPTIONS))
    path = retfound_file(tmp_path, state)
    with pytest.raises(WeightsError, match="model.inits.retfound"):
        build_feature_net(InitSpec(source="retfound", path=path), VIT, image_size=32, where="model.inits.retfound")
    config = tiny_search_config(
        storage=tmp_path / "runs", inits={"retfound": {"source": "retfound", "path": str(path)}}
    )
    config["model"]["backbone"] = VIT
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml"), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert message in err and "model.inits.retfound" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs" / "never").exists()


def test_an_unknown_architecture_is_named_in_one_line(tmp_path, capsys):
    config = tiny_search_config(storage=tmp_path / "runs", inits={"vit": {"source": "random", "arch": "vit_huge_2"}})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert "model.inits.vit.arch" in err and "unknown architecture 'vit_huge_2'" in err, err


def test_a_bundle_of_a_retfound_vit_rebuilds_its_pooling_and_grid(tmp_path):
    net = build_feature_net(
        InitSpec(source="retfound", path=retfound_file(tmp_path, pretrained(VIT, **RETFOUND_OPTIONS))), VIT,
        image_size=32,
    )  # fmt: skip
    from fundus_search.models import Classifier
    from fundus_search.models.backbones import Head

    classifier = Classifier(net, Head(net.feature_dim, 2)).eval()
    save_bundle(tmp_path / "b", classifier, backbone=VIT, backbone_options=RETFOUND_OPTIONS,
                preprocessing=Preprocessing(32), classes=("negative", "positive"), record={"name": "vit"})  # fmt: skip
    bundle = load_bundle(tmp_path / "b")
    assert bundle.meta["architecture"]["options"] == RETFOUND_OPTIONS
    pixels = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = torch.softmax(classifier(torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255), 1)[:, 1]
    assert np.abs(bundle.prob_positive(pixels) - ours.numpy()).max() <= 1e-6
    assert Architecture(**bundle.meta["architecture"]).build(32).features.backbone.global_pool == "avg"


def test_partial_ft_on_an_architecture_without_a_depth_rule_is_refused_before_the_search(tmp_path, capsys):
    config = tiny_search_config(
        storage=tmp_path / "runs", inits={"convnext": {"source": "random", "arch": "convnext_atto"}},
        strategies=("ft", "partial_ft"),
    )  # fmt: skip
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", str(tmp_path / "c.yaml"), "--name", "never"]) == 2
    err = capsys.readouterr().err
    assert "model.inits.convnext: ConvNeXt: partial_ft and layer_decay know the depth of" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs" / "never").exists()
