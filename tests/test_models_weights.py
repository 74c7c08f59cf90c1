"""Weight sources: FLAIR and torchvision files load strictly and safely; every bad file gets its message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from safetensors.torch import save_file

from fundus_search.models import BACKBONES, WEIGHT_SOURCES, InitSpec, WeightsError, build_feature_net, weights_id
from fundus_search.models.weights import FLAIR_PREFIX, FLAIR_PROJECTION_KEY


@pytest.fixture(scope="module")
def flair_state() -> dict[str, torch.Tensor]:
    """A FLAIR checkpoint in the released key layout, with random values."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    state = {FLAIR_PREFIX + k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    state[FLAIR_PROJECTION_KEY] = torch.randn(512, 2048) * 0.02
    state["text_model.model.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["text_model.projection_head_text.projection.weight"] = torch.randn(512, 8)
    state["logit_scale"] = torch.tensor(4.6)
    return state


@pytest.fixture(scope="module")
def flair_files(flair_state, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("flair")
    torch.save(flair_state, folder / "flair_resnet.pth")
    torch.save({"state_dict": flair_state}, folder / "wrapped.pth")
    hf = folder / "hf"
    hf.mkdir()
    save_file({k: v.contiguous() for k, v in flair_state.items()}, hf / "model.safetensors")
    return {
        "pth": folder / "flair_resnet.pth",
        "wrapped": folder / "wrapped.pth",
        "safetensors": hf / "model.safetensors",
        "folder": hf,
    }


@pytest.fixture(scope="module")
def reference(flair_state) -> tuple[torch.Tensor, dict[bool, torch.Tensor]]:
    """An input batch and torchvision's features of it, without and with FLAIR's projection
    (one ResNet-50 for every case below)."""
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    resnet = torchvision.models.resnet50(weights=None)
    resnet.fc = torch.nn.Identity()
    resnet.load_state_dict({k[len(FLAIR_PREFIX) :]: v for k, v in flair_state.items() if k.startswith(FLAIR_PREFIX)})
    with torch.no_grad():
        features = resnet.eval()(x)
    projected = F.normalize(F.normalize(features, dim=-1) @ flair_state[FLAIR_PROJECTION_KEY].T, dim=-1)
    return x, {False: features, True: projected}


@pytest.mark.parametrize("projection", [False, True])
@pytest.mark.parametrize("kind", ["pth", "wrapped", "safetensors", "folder"])
def test_flair_checkpoint_gives_reference_features(kind, projection, flair_files, reference):
    net = build_feature_net(InitSpec(source="flair", path=flair_files[kind], projection=projection), "resnet50")
    x, expected = reference
    with torch.no_grad():
        ours = net.eval()(x)
    assert ours.shape == (2, 512 if projection else 2048) and net.feature_dim == ours.shape[1]
    assert (ours - expected[projection]).abs().max() < 1e-5, "FLAIR features differ from torchvision's"


def _write(tmp_path, state, name="w.pth") -> Path:
    torch.save(state, tmp_path / name)
    return tmp_path / name


def test_missing_flair_file_names_the_path(tmp_path):
    with pytest.raises(
        WeightsError, match=r"model.inits.flair.path: no such file .*nothere.pth; put the FLAIR weights there"
    ):
        build_feature_net(
            InitSpec(source="flair", path=tmp_path / "nothere.pth"), "resnet50", where="model.inits.flair"
        )


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(WeightsError, match=r"notes.pth is not a PyTorch checkpoint"):
        build_feature_net(InitSpec(source="flair", path=tmp_path / "notes.pth"), "resnet50")


def test_checkpoint_without_flair_keys(tmp_path):
    path = _write(tmp_path, torchvision.models.resnet18(weights=None).state_dict())
    with pytest.raises(WeightsError, match=r"no 'vision_model.model.\*' keys"):
        build_feature_net(InitSpec(source="flair", path=path), "resnet18")


def test_shape_mismatch_names_key_and_both_shapes(tmp_path, flair_state):
    broken = dict(flair_state)
    broken[FLAIR_PREFIX + "layer1.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(
        WeightsError,
        match=r"shape mismatch at layer1.0.conv1.weight: checkpoint \(64, 64, 3, 3\), "
        r"resnet50 expects \(64, 64, 1, 1\)",
    ):
        build_feature_net(InitSpec(source="flair", path=_write(tmp_path, broken)), "resnet50")


def test_architecture_mismatch_says_which_backbone(flair_files):
    with pytest.raises(
        WeightsError,
        match=r"checkpoint is a resnet50 but the architecture is resnet18; set model.inits.arch \(or model.backbone"
        r"\): resnet50",
    ):
        build_feature_net(InitSpec(source="flair", path=flair_files["pth"]), "resnet18")


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = str(marker)
    path = _write(tmp_path, {"state_dict": exploit}, "evil.pth")
    with pytest.raises(WeightsError, match=r"refused .*evil.pth: it is not a plain weights file and would run code"):
        build_feature_net(InitSpec(source="flair", path=path), "resnet50")
    assert not marker.exists(), "loading executed code from the file"


def test_torchvision_weights_resolve_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    name = Path(weights.url).name  # resnet18-f37072fd.pth
    init = InitSpec(source="torchvision", weights="IMAGENET1K_V1")
    with pytest.raises(
        WeightsError, match=rf"{name} not found in {tmp_path}/hub/checkpoints; this tool never downloads"
    ):
        build_feature_net(init, "resnet18", where="model.inits.imagenet")
    torch.manual_seed(1)
    source = torchvision.models.resnet18(weights=None)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "hub" / "checkpoints" / name)
    net = build_feature_net(init, "resnet18")
    assert torch.equal(net.backbone.conv1.weight, source.conv1.weight)
    assert len(weights_id(init, "resnet18", seed=0)) == 64


def test_unknown_torchvision_enum_member_lists_valid_ones():
    with pytest.raises(
        WeightsError,
        match=r"'IMAGENET9K' is not a ResNet50_Weights member; use one of \['IMAGENET1K_V1', 'IMAGENET1K_V2'\]",
    ):
        build_feature_net(InitSpec(source="torchvision", weights="IMAGENET9K"), "resnet50")


def test_random_init_is_seeded():
    a = build_feature_net(InitSpec(source="random"), "resnet18", seed=3)
    b = build_feature_net(InitSpec(source="random"), "resnet18", seed=3)
    c = build_feature_net(InitSpec(source="random"), "resnet18", seed=4)
    assert torch.equal(a.backbone.conv1.weight, b.backbone.conv1.weight)
    assert not torch.equal(a.backbone.conv1.weight, c.backbone.conv1.weight)
    assert weights_id(InitSpec(source="random"), "resnet18", seed=3) == "random-resnet18-3"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_reports_its_feature_dim(name):
    net = build_feature_net(InitSpec(source="random"), name)
    with torch.no_grad():
        assert net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, BACKBONES[name].feature_dim)


def test_imagenet_normalisation_is_applied_inside_the_network():
    plain = build_feature_net(InitSpec(source="random"), "resnet18", seed=0).eval()
    normed = build_feature_net(InitSpec(source="random", normalize="imagenet"), "resnet18", seed=0).eval()
    x = torch.rand(1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(normed(x), plain((x - mean) / std), atol=1e-6)


@pytest.mark.parametrize("name", sorted(WEIGHT_SOURCES))
def test_every_weight_source_brings_a_known_normalisation(name):
    from fundus_search.models import NORMALIZATIONS

    source = WEIGHT_SOURCES[name]
    assert source.normalize in NORMALIZATIONS, f"{name}: normalisation {source.normalize!r} is not registered"
    assert InitSpec(source=name).normalize == source.normalize
