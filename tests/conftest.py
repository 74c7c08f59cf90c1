"""Shared fixtures: tiny datasets written to tmp_path, and a config writer."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fundus_search.data_io import SyntheticSpec
from fundus_search.data_io.synthetic import write_cgi_hrdc


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own cache root unless it sets data.cache_dir itself."""
    monkeypatch.setenv("FUNDUS_SEARCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def _cgi_tree_template(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cgi")
    return write_cgi_hrdc(SyntheticSpec(n=24, size=48, seed=3, difficulty=0.2), root, task=2)


@pytest.fixture
def cgi_tree(_cgi_tree_template, tmp_path) -> Path:
    """A 24-image CGI-HRDC task-2 tree (48 px) that the test may damage."""
    import shutil

    return Path(shutil.copytree(_cgi_tree_template, tmp_path / "cgi"))


@pytest.fixture
def write_config(tmp_path):
    """Write a YAML config from a dict and return its path."""

    def write(content: dict, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(content))
        return path

    return write


@pytest.fixture(scope="session")
def pretrained_flair(tmp_path_factory) -> Path:
    """A ResNet-18 pretrained for ~25 s (2 cores) on a synthetic corpus labelled with retinopathy
    signs, saved in FLAIR's layout.

    Random-init networks cannot learn the synthetic task in a few epochs on ~150 images;
    a backbone that has seen fundus structure can, as with the real FLAIR.
    """
    import torch

    from fundus_search.models import InitSpec, build_feature_net
    from fundus_search.models.pretrain import pretrain, save_flair_checkpoint
    from fundus_search.search.demo.corpora import generate_pretraining_corpus

    torch.set_num_threads(2)
    images, targets, _ = generate_pretraining_corpus(240, 48, seed=100)
    net = build_feature_net(InitSpec(source="random"), "resnet18", seed=0)
    pretrain(net, images, targets, epochs=6)
    return save_flair_checkpoint(net, tmp_path_factory.mktemp("weights") / "flair_resnet.pth")


@pytest.fixture(scope="session")
def evaluated_search(tmp_path_factory) -> Path:
    """A tiny finished search and its evaluation (tests.helpers.evaluated_search), made once."""
    from tests.helpers import evaluated_search as make

    return make(tmp_path_factory.mktemp("evaluated"))
