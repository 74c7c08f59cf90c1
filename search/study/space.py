"""The Optuna define-by-run search space: conditional parameters exist only where they apply."""

from __future__ import annotations

import numpy as np
import optuna

from fundus_search.search.study.config import Config, FloatChoices, IntChoices
from fundus_search.strategy import TRANSFER_STRATEGIES
from fundus_search.vocabulary import (
    BATCH_SIZE,
    FOLD,
    FT_BLOCKS,
    FT_LR,
    INIT,
    INTEGER_PARAMS,
    LAYER_DECAY,
    LP_EPOCHS,
    LP_LR,
    RATES,
    SEED,
    STRATEGY,
    WEIGHT_DECAY,
)


def trial_seed(search_seed: int, number: int) -> int:
    """A per-trial seed derived from the search seed and the Optuna trial number."""
    return int(np.random.SeedSequence([search_seed, number]).generate_state(1)[0] % 2**31)


class SearchSpace:
    """Callable define-by-run space built from a config (a class so Ray can pickle it).

    Only `trial.suggest_*` happens here. A trial has the parameters its strategy reads
    (`fundus_search.strategy.Strategy.params`): `lp_lr` for a linear probe trained by AdamW
    (lp, lp_ft), `ft_lr` and `layer_decay` for fine-tuning (ft, lp_ft, partial_ft, norm_ft),
    `ft_blocks` for partial_ft, `lp_epochs` for the AdamW warm-up of lp_ft; an L-BFGS probe is
    one fit and reads none of them. A scalar in the config fixes a
    parameter (returned as a constant, not searched); a [low, high] pair is searched (log scale
    for rates); `{choices: [...]}` is searched as a categorical over exactly those values.
    """

    def __init__(self, config: Config):
        space = config.search.space
        self.inits = list(config.inits)
        self.strategies = list(space.strategy)
        self.ranges = {
            LP_LR: space.lp_lr,
            FT_LR: space.ft_lr,
            WEIGHT_DECAY: space.weight_decay,
            LP_EPOCHS: space.lp_epochs,
            FT_BLOCKS: space.ft_blocks,
            LAYER_DECAY: space.layer_decay,
        }
        self.batch_sizes = list(space.batch_size)
        self.lp_solver = config.training.lp_solver
        self.search_seed, self.fold, self.max_epochs = config.search.seed, config.data.fold, config.search.max_epochs

    def __call__(self, trial: optuna.Trial) -> dict:
        fixed: dict = {}
        self._choose(trial, INIT, self.inits, fixed)
        strategy = TRANSFER_STRATEGIES[self._choose(trial, STRATEGY, self.strategies, fixed)]
        for name in strategy.params(self.lp_solver):  # only what this strategy's training reads
            if name == BATCH_SIZE:
                self._choose(trial, BATCH_SIZE, self.batch_sizes, fixed)
            else:
                self._number(trial, name, fixed, log=name in RATES)
        return {
            **fixed,
            SEED: trial_seed(self.search_seed, trial.number),
            FOLD: self.fold,
            "optuna_number": trial.number,
            "max_epochs": self.max_epochs,
        }

    def cell_points(self) -> list[dict]:
        """One partial point per init x strategy cell, naming only the searched keys."""
        points = [{INIT: i, STRATEGY: s} for i in self.inits for s in self.strategies]
        searched = [k for k, choices in ((INIT, self.inits), (STRATEGY, self.strategies)) if len(choices) > 1]
        return [{k: p[k] for k in searched} for p in points] if searched else []

    @staticmethod
    def _choose(trial: optuna.Trial, name: str, choices: list, fixed: dict):
        if len(choices) == 1:
            fixed[name] = choices[0]
            return choices[0]
        return trial.suggest_categorical(name, choices)

    def _number(self, trial: optuna.Trial, name: str, fixed: dict, *, log: bool) -> None:
        bounds = self.ranges[name]
        if isinstance(bounds, (FloatChoices, IntChoices)):
            self._choose(trial, name, list(bounds.choices), fixed)
        elif not isinstance(bounds, (tuple, list)) or bounds[0] == bounds[1]:
            fixed[name] = bounds[0] if isinstance(bounds, (tuple, list)) else bounds
        elif name in INTEGER_PARAMS:
            trial.suggest_int(name, int(bounds[0]), int(bounds[1]))
        else:
            trial.suggest_float(name, float(bounds[0]), float(bounds[1]), log=log)
