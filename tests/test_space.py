"""The define-by-run search space: conditional parameters, ranges, choices and samplers."""

from __future__ import annotations

import optuna
import pytest

from fundus_search.search.engine.searcher import make_sampler
from fundus_search.search.study.config import Config
from fundus_search.search.study.space import SearchSpace


def space_of(lp_solver: str = "adamw", **space) -> SearchSpace:
    return SearchSpace(
        Config.model_validate(
            {
                "model": {"backbone": "resnet18", "inits": {"a": {"source": "random"}, "b": {"source": "random"}}},
                "training": {"lp_solver": lp_solver},
                "search": {"space": {"strategy": ["lp", "ft", "lp_ft"]} | space},
            }
        )
    )


def sample(space: SearchSpace, n: int = 60, sampler: optuna.samplers.BaseSampler | None = None) -> list[dict]:
    study = optuna.create_study(sampler=sampler or optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        points.append({**trial.params, **constants})  # as Ray's OptunaSearch merges them
        study.tell(trial, 0.0)
    return points


TUNED = ("lp_lr", "ft_lr", "lp_epochs", "ft_blocks", "layer_decay", "weight_decay", "batch_size")
ADAMW_USES = {
    "lp": {"lp_lr", "weight_decay", "batch_size"},
    "ft": {"ft_lr", "layer_decay", "weight_decay", "batch_size"},
    "lp_ft": {"lp_lr", "ft_lr", "lp_epochs", "layer_decay", "weight_decay", "batch_size"},
    "partial_ft": {"ft_lr", "ft_blocks", "layer_decay", "weight_decay", "batch_size"},
    "norm_ft": {"ft_lr", "layer_decay", "weight_decay", "batch_size"},
}


def test_each_strategy_gets_exactly_its_own_parameters():
    for point in sample(space_of()):
        assert {k for k in TUNED if k in point} == ADAMW_USES[point["strategy"]]
        assert point["init"] in ("a", "b") and "seed" in point


def test_an_lbfgs_probe_searches_none_of_the_probes_adamw_parameters():
    """One L-BFGS fit (its own C) replaces the probe's AdamW epochs: its learning rate, warm-up
    length, weight decay and batch size would not change a trial, so they are not searched."""
    lbfgs_uses = {"lp": set(), "ft": ADAMW_USES["ft"], "lp_ft": {"ft_lr", "layer_decay", "weight_decay", "batch_size"}}
    for point in sample(space_of("lbfgs", batch_size=[8, 16])):
        assert {k for k in TUNED if k in point} == lbfgs_uses[point["strategy"]]


@pytest.mark.parametrize("solver", ["adamw", "lbfgs"])
def test_the_space_train_and_the_strategy_rule_agree(solver):
    """`Strategy.params` is the rule; the space asks for exactly it, and `train` requires its
    rates and warm-up length (weight decay and batch size have defaults)."""
    from fundus_search.search.cli._args import UsageError
    from fundus_search.search.cli.train import check_params
    from fundus_search.strategy import TRANSFER_STRATEGIES

    every = list(TRANSFER_STRATEGIES)
    for point in sample(space_of(solver, batch_size=[8, 16], strategy=every, layer_decay=[0.5, 1.0]), n=100):
        strategy = TRANSFER_STRATEGIES[point["strategy"]]
        assert {k for k in TUNED if k in point} == set(strategy.params(solver))
        check_params(point, lp_solver=solver)  # what the space gives, train accepts
        for rate in {"lp_lr", "ft_lr", "lp_epochs", "ft_blocks"} & set(strategy.params(solver)):
            with pytest.raises(UsageError, match=rate.replace("_", "-")):
                check_params({**point, rate: None}, lp_solver=solver)


def test_ranges_are_respected_and_choices_are_exact():
    space = space_of(
        lp_lr=[1e-4, 1e-1], ft_lr={"choices": [1e-5, 1e-4, 1e-3]}, lp_epochs={"choices": [2, 8]}, weight_decay=1e-4
    )
    points = sample(space)
    lp = [p["lp_lr"] for p in points if "lp_lr" in p]
    assert all(1e-4 <= v <= 1e-1 for v in lp) and len(set(lp)) == len(lp)  # continuous
    assert {p["ft_lr"] for p in points if "ft_lr" in p} == {1e-5, 1e-4, 1e-3}
    assert {p["lp_epochs"] for p in points if "lp_epochs" in p} == {2, 8}
    assert all(p["weight_decay"] == 1e-4 for p in points)  # a scalar fixes it


def test_one_first_point_per_init_and_strategy_cell():
    assert space_of().cell_points() == [{"init": i, "strategy": s} for i in ("a", "b") for s in ("lp", "ft", "lp_ft")]


@pytest.mark.parametrize(
    "kind,expected", [("tpe", optuna.samplers.TPESampler), ("random", optuna.samplers.RandomSampler)]
)
def test_sampler_kinds(kind, expected):
    assert isinstance(make_sampler(kind, seed=0), expected)


@pytest.mark.parametrize("kind", ["random", "tpe"])
def test_search_seed_fixes_the_samplers_proposals(kind):
    """The project's own sampler under `search.seed`: the same seed proposes the same points,
    another seed other points."""
    space = space_of(lp_solver="adamw")

    def proposals(seed: int) -> list[dict]:
        return sample(space, n=12, sampler=make_sampler(kind, seed=seed))

    first, again, other = proposals(space.search_seed), proposals(space.search_seed), proposals(space.search_seed + 1)
    assert first == again
    assert first != other


def test_the_readmes_strategy_table_is_the_rule():
    import re
    from pathlib import Path

    from fundus_search.strategy import TRANSFER_STRATEGIES

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    rows = dict(re.findall(r"^\| `(lp|ft|lp_ft|partial_ft|norm_ft)` \| (.+) \|$", readme, flags=re.M))
    assert set(rows) == set(TRANSFER_STRATEGIES)
    for name, strategy in TRANSFER_STRATEGIES.items():
        adamw, lbfgs = (re.findall(r"`(\w+)`", cell) for cell in rows[name].split(" | "))
        assert tuple(adamw) == strategy.params("adamw")
        assert tuple(p for p in lbfgs if p != "lp_c") == strategy.params("lbfgs")
