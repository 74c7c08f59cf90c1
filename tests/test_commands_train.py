"""`fundus-search train`: a line per epoch, and one-line errors for bad flags and weights."""

from __future__ import annotations

import pytest

from fundus_search.search.cli.main import main


@pytest.mark.slow
def test_train_command_prints_a_line_per_epoch(pretrained_flair, write_config, capsys):
    config = write_config(
        {
            "data": {"source": "synthetic", "synthetic": {"n": 60, "size": 32}, "image_size": 32, "folds": 3},
            "model": {"backbone": "resnet18", "inits": {"flair": {"source": "flair", "path": str(pretrained_flair)}}},
            "search": {"max_epochs": 2},
        }
    )
    rc = main(
        [
            "train",
            str(config),
            "--init",
            "flair",
            "--strategy",
            "lp_ft",
            "--lp-lr",
            "1e-3",
            "--ft-lr",
            "1e-4",
            "--lp-epochs",
            "2",
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    lines = [line for line in out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 2 and "val_average" in lines[0] and "LP warm-up" in lines[0]
    assert main(["train", str(config), "--init", "flair", "--strategy", "ft"]) == 2
    assert "--strategy ft needs --ft-lr" in capsys.readouterr().err
    assert main(["train", str(config), "--init", "imagenet", "--strategy", "lp", "--lp-lr", "1e-3"]) == 2
    assert "--init: 'imagenet' is not in model.inits (flair)" in capsys.readouterr().err


def test_missing_weights_exit_2_with_one_line(write_config, capsys, tmp_path):
    config = write_config(
        {
            "data": {"source": "synthetic", "synthetic": {"n": 40, "size": 32}, "image_size": 32, "folds": 2},
            "model": {
                "backbone": "resnet18",
                "inits": {"flair": {"source": "flair", "path": str(tmp_path / "missing.pth")}},
            },
        }
    )
    rc = main(["train", str(config), "--init", "flair", "--strategy", "lp", "--lp-lr", "1e-3"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.inits.flair.path: no such file" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lp-lr", "-1"], "argument --lp-lr: must be > 0 (got -1)"),
        (["--epochs", "0"], "argument --epochs: must be >= 1 (got 0)"),
        (["--batch-size", "0"], "argument --batch-size: must be >= 2 (got 0)"),
        (["--lp-lr", "fast"], "argument --lp-lr: expected a number (got 'fast')"),
    ],
)
def test_train_command_refuses_bad_numbers_in_one_line(flags, message, write_config, capsys):
    config = write_config(
        {
            "data": {"source": "synthetic", "synthetic": {"n": 40, "size": 32}, "image_size": 32, "folds": 2},
            "model": {"backbone": "resnet18"},
        }
    )
    assert main(["train", str(config), "--init", "random", "--strategy", "lp", "--lp-lr", "1e-3", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
