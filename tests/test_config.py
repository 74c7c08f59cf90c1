"""The config schema: every mistake is one line naming its key, nothing is written; shipped
configs validate; defaults have one home; normalisation belongs to the weight source."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fundus_search.search.cli.main import main
from fundus_search.search.study.config import load_config


@pytest.mark.parametrize(
    "section,value,message",
    [
        ("search", {"space": {"ft_lr": [0.0, 1e-3]}}, "search.space.ft_lr: lower bound must be > 0.0 (got 0.0)"),
        ("search", {"space": {"init": ["imagenet"]}}, "search.space.init: ['imagenet'] not in model.inits (random)"),
        ("search", {"scheduler": {"type": "hyperband"}}, "search.scheduler.type: input should be 'asha' or 'fifo'"),
        ("search", {"sampler": "grid"}, "search.sampler: input should be 'tpe' or 'random'"),
        ("search", {"space": {"ft_lr": [1e-5, 1e-4, 1e-3]}}, "search.space.ft_lr: [low, high] needs two numbers"),
        ("search", {"space": {"lp_epochs": {"choices": [2, 8.5]}}}, "search.space.lp_epochs: {choices: [...]} needs"),
        ("search", {"metric": "val_magic"}, "search.metric: unknown 'val_magic'"),
        # a URL the results store cannot write would otherwise become a local folder named gs:
        ("storage", {"path": "gs://bucket/runs"}, "storage.path: gs:// storage is not supported"),
        (
            "resources",
            {"gpus_per_trial": {"lp": -1}},
            "resources.gpus_per_trial: GPU shares must be >= 0 (got {'lp': -1.0})",
        ),
        ("model", {"backbone": "vit"}, "model.backbone: unknown architecture 'vit'; use resnet18, resnet34, resnet50"),
        # an init's name names TensorBoard folders and labels figures: an identifier, never a path or maths
        (
            "model",
            {"inits": {"../../../../x/p": {"source": "random"}}},
            "model.inits: use letters, digits, '.', '_' or '-'",
        ),
        ("model", {"inits": {"x$\\foo$": {"source": "random"}}}, "model.inits: use letters, digits, '.', '_' or '-'"),
        # every number is finite: an infinite request would wait for a node for ever
        ("resources", {"cpus_per_trial": float("inf")}, "resources.cpus_per_trial: input should be a finite number"),
        (
            "search",
            {"scheduler": {"reduction_factor": float("nan")}},
            "search.scheduler.reduction_factor: input should be a finite number",
        ),
    ],
)
def test_run_config_errors_exit_2_naming_the_key_and_write_nothing(
    section, value, message, tmp_path, write_config, capsys
):
    config = {
        "data": {"source": "synthetic", "synthetic": {"n": 20, "size": 32}, "image_size": 32, "folds": 2},
        "model": {"backbone": "resnet18", "inits": {"random": {"source": "random"}}},
        "storage": {"path": str(tmp_path / "runs")},
    }
    config.setdefault(section, {}).update(value)
    assert main(["run", str(write_config(config))]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["demo.yaml", "cgi-hrdc-task1.yaml", "cgi-hrdc-task2.yaml", "fm-comparison.yaml"])
def test_shipped_configs_validate(name):
    config = load_config(Path(__file__).parent.parent / "search" / "configs" / name)
    assert config.search.metric == "val_average" and set(config.inits) <= set(config.model.inits)


@pytest.mark.parametrize(
    "init,expected",
    [
        (
            {"source": "torchvision", "weights": "IMAGENET1K_V1"},
            "imagenet",
        ),  # ImageNet weights expect ImageNet mean/std
        ({"source": "torchvision", "weights": "IMAGENET1K_V1", "normalize": "none"}, "none"),  # the seed paper's code
        ({"source": "flair", "path": "flair.pth"}, "none"),  # FLAIR was pretrained on [0, 1] inputs
        ({"source": "flair", "path": "flair.pth", "normalize": "imagenet"}, "imagenet"),
        ({"source": "random"}, "none"),
    ],
)
def test_normalisation_is_the_weight_sources_unless_the_config_sets_it(init, expected, write_config):
    config = load_config(write_config({"model": {"backbone": "resnet18", "inits": {"x": init}}}))
    assert config.model.init_spec("x").normalize == expected


def test_a_model_wide_normalize_is_gone_and_says_so(write_config, capsys):
    assert (
        main(
            [
                "train",
                str(write_config({"model": {"normalize": "none"}})),
                "--init",
                "random",
                "--strategy",
                "ft",
                "--ft-lr",
                "1e-4",
            ]
        )
        == 2
    )
    assert "model.normalize: unknown key" in capsys.readouterr().err


def test_config_defaults_are_the_dataclasses_defaults():
    from fundus_search.data_io import Augmentation, SyntheticSpec
    from fundus_search.models import TrainSettings
    from fundus_search.search.study.config import AugmentationConfig, SyntheticConfig, TrainingConfig

    assert SyntheticConfig().model_dump() == SyntheticSpec().__dict__
    assert AugmentationConfig().model_dump() == Augmentation().__dict__
    training = TrainingConfig()
    assert all(
        getattr(training, k) == getattr(TrainSettings, k)
        for k in ("lp_solver", "lp_c", "head_lr_mult", "grad_clip", "eval_batch_size")
    )


def test_the_foundation_model_example_gives_each_init_its_own_network_and_pixels():
    config = load_config(Path(__file__).parent.parent / "search" / "configs" / "fm-comparison.yaml")
    arch = {name: config.model.arch(name) for name in config.inits}
    assert arch == {"imagenet": "resnet50", "flair": "resnet50", "retfound": "vit_large_patch16_224",
                    "retfound_green": "vit_small_patch14_reg4_dinov2"}  # fmt: skip
    assert config.image_sizes() == [224, 392, 512]
    assert [config.model.init_spec(n).normalize for n in config.inits] == ["imagenet", "none", "imagenet", "half"]
    assert config.model.backbone_options("retfound") == {"global_pool": "avg", "fc_norm": True}
    assert config.model.backbone_options("retfound_green") == {"pool": "avg"}


@pytest.mark.parametrize(
    "text,message",
    [
        (b"data:\n  classes: &a [x, x, x]\nmodel: *a\n", "aliases (*name) are not accepted in a config (line 3)"),
        (b'name: "caf\xe9"\n', "not UTF-8 text (byte 0xe9 at offset 10); save it as UTF-8"),
        (bytes(range(128, 256)), "not UTF-8 text (byte 0x80 at offset 0)"),
        (b"data: " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply to be a config"),
        (b"search: {space: {strategy: []}}\n", "search.space.strategy: needs at least one choice"),
        (b"search: {space: {init: []}}\n", "search.space.init: needs at least one choice"),
        (b"search: {num_samples: 100000000}\n", "search.num_samples: must be <= 10000"),
        (b"search: {space: {lp_lr: [1.0e-3, .inf]}}\n", "search.space.lp_lr"),
        (b"search: {space: {layer_decay: 1.5}}\n", "a layer decay is at most 1"),
    ],
    ids=["alias", "latin-1", "random-bytes", "5000-deep", "no-strategy", "no-init", "huge-count", "inf", "decay"],
)
def test_a_config_that_cannot_be_read_is_one_line_and_exit_2(text, message, tmp_path, capsys):
    (tmp_path / "c.yaml").write_bytes(text)
    assert main(["run", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()


def test_set_overrides_a_config_value_validated_like_the_yaml(tmp_path, capsys):
    from tests.helpers import tiny_search_config

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(tiny_search_config(storage=tmp_path / "runs")))
    config = load_config(tmp_path / "c.yaml", [("data.image_size", 48), ("search.space.ft_lr", [1e-5, 1e-3])])
    assert config.data.image_size == 48 and config.search.space.ft_lr == (1e-5, 1e-3)
    argv = ["train", str(tmp_path / "c.yaml"), "--init", "random", "--strategy", "lp"]
    assert main([*argv, "--set", "training.lp_solver=lbfgs", "--set", "data.image_size=48"]) == 0
    assert "(48 px)" in capsys.readouterr().out
    for bad, message in [
        ("data.image_size=16", "data.image_size: must be >= 32 (got 16)"),
        ("name.x=3", "--set name.x: name is a value ('tiny'), not a section"),
        ("search.space.strategy=[]", "search.space.strategy: needs at least one choice"),
        ("oops", "argument --set: expected KEY.PATH=VALUE"),
    ]:
        assert main(["run", str(tmp_path / "c.yaml"), "--set", bad]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "runs").exists()
