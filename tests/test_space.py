"""The define-by-run search space: conditional parameters, ranges, choices and samplers."""

from __future__ import annotations

import math

import optuna
import pytest

from fundus_search.search.study.config import Config
from fundus_search.search.engine.searcher import make_sampler
from fundus_search.search.study.space import SearchSpace


def space_of(lp_solver: str = "adamw", **space) -> SearchSpace:
    return SearchSpace(
        Config.model_validate(
            {
                "model": {"backbone": "resnet18", "inits": {"a": {"source": "random"}, "b": {"source": "random"}}},
                "training": {"lp_solver": lp_solver},
                "search": {"space": {"strategy": ["lp", "ft", "lp_ft"], **space}},
            }
        )
    )


def sample(space: SearchSpace, n: int = 60) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    points = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        points.append({**trial.params, **constants})  # as Ray's OptunaSearch merges them
        study.tell(trial, 0.0)
    return points


def test_each_strategy_gets_exactly_its_own_parameters():
    for point in sample(space_of()):
        uses = {"lp": {"lp_lr"}, "ft": {"ft_lr"}, "lp_ft": {"lp_lr", "ft_lr", "lp_epochs"}}[point["strategy"]]
        assert {k for k in ("lp_lr", "ft_lr", "lp_epochs") if k in point} == uses
        assert point["init"] in ("a", "b") and "weight_decay" in point and "seed" in point


def test_an_lbfgs_probe_searches_no_probe_learning_rate_or_warm_up_length():
    """One L-BFGS fit replaces the probe's AdamW epochs, so neither parameter would change a trial."""
    for point in sample(space_of("lbfgs")):
        uses = {"lp": set(), "ft": {"ft_lr"}, "lp_ft": {"ft_lr"}}[point["strategy"]]
        assert {k for k in ("lp_lr", "ft_lr", "lp_epochs") if k in point} == uses


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


def test_random_sampler_is_seeded():
    first, second = (sample(space_of(), n=10) for _ in range(2))
    assert all(math.isclose(a.get("ft_lr", 0), b.get("ft_lr", 0)) for a, b in zip(first, second, strict=True))
