"""`fundus-search train`: one configuration without Ray, a line per epoch (the debugging path)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fundus_search.search.cli._args import UsageError, add_overrides, number_above
from fundus_search.strategy import TRANSFER_STRATEGIES
from fundus_search.vocabulary import (
    AUC,
    AVERAGE,
    BATCH_SIZE,
    F1,
    KAPPA,
    LAYER_DECAY,
    SPECIFICITY,
    STRATEGIES,
    STRATEGY,
    TRAIN_LOSS,
    WEIGHT_DECAY,
    lp_warmup,
    val,
)

_SHOWN = (TRAIN_LOSS, *(val(m) for m in (AVERAGE, KAPPA, F1, SPECIFICITY, AUC)))


def add_parsers(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser("train", help="train one configuration without Ray, printing each epoch")
    train.add_argument("config")
    train.add_argument("--init", required=True, help="a name from model.inits")
    train.add_argument("--strategy", required=True, choices=STRATEGIES)
    train.add_argument("--lp-lr", type=number_above(0), help="LP learning rate (lp, lp_ft)")
    train.add_argument("--ft-lr", type=number_above(0), help="fine-tuning learning rate (ft, lp_ft)")
    train.add_argument("--lp-epochs", type=number_above(1, int, inclusive=True), help="LP warm-up epochs (lp_ft)")
    train.add_argument(
        "--ft-blocks", type=number_above(1, int, inclusive=True), help="the last blocks partial_ft trains"
    )
    train.add_argument(
        "--layer-decay", type=number_above(0), default=1.0, help="layer-wise rate decay of fine-tuning (1: none)"
    )
    train.add_argument("--weight-decay", type=number_above(0, inclusive=True), default=1e-4)
    train.add_argument(
        "--batch-size",
        type=number_above(2, int, inclusive=True),
        help="default: first choice of search.space.batch_size",
    )
    train.add_argument("--fold", type=number_above(0, int, inclusive=True), help="default: data.fold")
    train.add_argument(
        "--epochs", type=number_above(1, int, inclusive=True), help="main-phase epochs; default: search.max_epochs"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--output", type=Path, help="write the trained model there as a bundle (for `predict`)")
    add_overrides(train)
    train.set_defaults(handler=train_command)


def check_params(params: dict, *, lp_solver: str) -> None:
    """A strategy needs the learning rates, warm-up length and blocks its training reads
    (`Strategy.params`); weight decay, batch size and layer decay have defaults."""
    needed = TRANSFER_STRATEGIES[params[STRATEGY]].params(lp_solver)
    missing = [k for k in needed if k not in (WEIGHT_DECAY, BATCH_SIZE, LAYER_DECAY) and params.get(k) is None]
    if missing:
        flags = ", ".join("--" + k.replace("_", "-") for k in missing)
        raise UsageError(f"--strategy {params[STRATEGY]} needs {flags}")


def train_command(args: argparse.Namespace) -> int:
    from fundus_search.data_io import prepare_images
    from fundus_search.search.engine.trial import DatasetInfo, TrialConfig, make_trainer
    from fundus_search.search.study.config import load_config

    config = load_config(args.config, args.overrides)
    if args.output is not None and (args.output / "model.json").exists():  # before the training, not after
        raise UsageError(f"--output: {args.output} already holds a model bundle; pass another folder")
    if args.init not in config.model.inits:
        raise UsageError(f"--init: {args.init!r} is not in model.inits ({', '.join(config.model.inits)})")
    params = {
        "init": args.init,
        "strategy": args.strategy,
        "lp_lr": args.lp_lr,
        "ft_lr": args.ft_lr,
        "lp_epochs": args.lp_epochs,
        "ft_blocks": args.ft_blocks,
        "layer_decay": args.layer_decay if TRANSFER_STRATEGIES[args.strategy].main == "ft" else None,
        "weight_decay": args.weight_decay,
        "seed": args.seed,
        "batch_size": args.batch_size or config.search.space.batch_size[0],
        "fold": config.data.fold if args.fold is None else args.fold,
        "max_epochs": args.epochs,
    }
    check_params(params, lp_solver=config.training.lp_solver)
    spec = config.data_spec(config.image_size(args.init))
    cache = prepare_images(spec)
    info = DatasetInfo.of(cache, spec.resolved_cache_dir())
    trainer, provenance = make_trainer(config, TrialConfig.of(params), cache.images, info)
    print(
        f"{args.init} / {args.strategy} on {len(cache)} images ({cache.images.shape[1]} px), fold "
        f"{params['fold']}, weights {provenance['weights_id'][:12]} (normalize: {provenance['normalize']}), "
        f"device {trainer.device}"
    )
    for metrics in trainer.epochs():
        warmup = lp_warmup(val(AVERAGE))
        warm = f"  (LP warm-up: {val(AVERAGE)} {metrics[warmup]:.3f})" if warmup in metrics else ""
        shown = "  ".join(f"{k} {metrics[k]:.3f}" for k in _SHOWN)
        print(f"epoch {metrics['epoch']:>3}  {shown}  {metrics['epoch_seconds']:.1f} s{warm}", flush=True)
    if args.output is not None:
        bundle = _save(args, config, params, trainer, cache, provenance, metrics)
        print(f"model:   {bundle} (score images with `fundus-search predict {bundle} IMAGES...`)")
    return 0


def _save(args, config, params, trainer, cache, provenance, metrics) -> Path:
    """The trained model as a bundle, with what it was trained on and its last epoch's scores."""
    import json

    from fundus_search.models.bundle import save_bundle
    from fundus_search.search.ops.folders import provenance as run_provenance

    run = run_provenance(config, cache.meta["fingerprint"])
    strategy = TRANSFER_STRATEGIES[args.strategy]
    n_train, n_val = len(trainer.train_idx), len(trainer.val_idx)
    record = {
        "name": f"{args.init}-{args.strategy}",
        "init": args.init,
        "init_source": config.model.inits[args.init].source,
        "weights_id": provenance["weights_id"],
        "strategy": args.strategy,
        "hyperparameters": {k: params[k] for k in strategy.params(config.training.lp_solver)},
        "training": {"lp_solver": config.training.lp_solver, "lp_c": config.training.lp_c},
        "epochs": trainer.main_epochs,
        "seed": params["seed"],
        "data": config.facts().dataset,
        "dataset_fingerprint": cache.meta["fingerprint"],
        "trained_on": f"{n_train} images: fold {params['fold']}'s training rows of {config.data.folds} folds",
        "metrics": {k.removeprefix("val_"): v for k, v in metrics.items() if k.startswith("val_")},
        "metrics_on": f"fold {params['fold']}'s {n_val} validation images, last epoch (fundus-search train)",
        "versions": json.loads(run["versions"]),
        "git_commit": run["git_commit"],
    }
    return save_bundle(
        args.output,
        trainer.classifier(),
        backbone=config.model.arch(args.init),
        backbone_options=config.model.backbone_options(args.init),
        preprocessing=config.data_spec(config.image_size(args.init)).preprocessing,
        classes=tuple(cache.classes),
        record=record,
    )
