"""The demo: stand-in weights load through the real loaders, and a reduced demo search runs end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
import yaml

from fundus_search.models import InitSpec, build_feature_net
from fundus_search.models.weights import FLAIR_PREFIX, FLAIR_PROJECTION_KEY
from fundus_search.search.cli.main import main
from fundus_search.search.demo.weights import FLAIR_FILE, IMAGENET_FILE, make_demo_weights

pytestmark = pytest.mark.slow

DEMO = Path(__file__).parent.parent / "search" / "configs" / "demo.yaml"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo-weights")
    make_demo_weights(out, size=32, images=24, epochs=1)
    return out


def test_demo_weights_are_cached_and_deterministic(weights, tmp_path):
    again = make_demo_weights(weights, size=32, images=24, epochs=1)
    assert again["cached"]
    other = make_demo_weights(tmp_path, size=32, images=24, epochs=1)
    assert not other["cached"]
    assert other["files"][FLAIR_FILE]["sha256"] == again["files"][FLAIR_FILE]["sha256"]
    assert other["files"][IMAGENET_FILE]["sha256"] == again["files"][IMAGENET_FILE]["sha256"]


def test_flair_stand_in_has_flairs_key_layout_and_loads_strictly(weights):
    state = torch.load(weights / FLAIR_FILE, weights_only=True)
    assert any(k.startswith(FLAIR_PREFIX) for k in state) and FLAIR_PROJECTION_KEY in state
    assert any(k.startswith("text_model.") for k in state) and "logit_scale" in state
    net = build_feature_net(InitSpec(source="flair", path=weights / FLAIR_FILE), "resnet18")
    backbone = {k[len(FLAIR_PREFIX) :]: v for k, v in state.items() if k.startswith(FLAIR_PREFIX)}
    assert all(torch.equal(net.backbone.state_dict()[k], v) for k, v in backbone.items())


def test_imagenet_stand_in_loads_through_the_torchvision_source(weights):
    net = build_feature_net(InitSpec(source="torchvision", path=weights / IMAGENET_FILE), "resnet18")
    state = torch.load(weights / IMAGENET_FILE, weights_only=True)
    assert set(state) == set(net.backbone.state_dict())
    assert torch.equal(net.backbone.conv1.weight, state["conv1.weight"])


def test_reduced_demo_search_runs_and_covers_every_cell(weights, tmp_path, capsys):
    config = yaml.safe_load(DEMO.read_text())
    config["data"]["synthetic"].update(n=60, size=32)
    config["data"].update(image_size=32, folds=3)
    config["model"]["inits"]["imagenet"]["path"] = str(weights / IMAGENET_FILE)
    config["model"]["inits"]["flair"]["path"] = str(weights / FLAIR_FILE)
    config["search"].update(num_samples=3, max_epochs=1)
    config["search"]["space"]["strategy"] = ["lp", "lp_ft"]
    config["search"]["space"]["init"] = ["imagenet", "flair"]  # the two its primary question compares
    config["storage"]["path"] = str(tmp_path / "runs")
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(config))
    try:
        rc = main(["run", str(tmp_path / "demo.yaml"), "--name", "demo-small"])
    finally:
        ray.shutdown()
    out = capsys.readouterr().out
    assert rc == 0
    assert "best val_average per init x strategy" in out and "each cell's winner:" in out
    assert "fundus-search tensorboard" in out and "trials.parquet" in out
    trials = pd.read_parquet(tmp_path / "runs" / "demo-small" / "trials.parquet")
    assert len(trials) == 3
    cells = set(zip(trials["init"], trials["strategy"], strict=True))
    assert len(cells) == 3, "the first trials must cover distinct init x strategy cells"
