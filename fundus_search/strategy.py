"""What each transfer strategy trains, and so which hyperparameters it reads: the one rule that
the search space, `train`, the tables, the report and the README derive from."""

from __future__ import annotations

from dataclasses import dataclass

from fundus_search.vocabulary import (
    BATCH_SIZE,
    FT,
    FT_BLOCKS,
    FT_LR,
    LAYER_DECAY,
    LP,
    LP_EPOCHS,
    LP_FT,
    LP_LR,
    NORM_FT,
    PARTIAL_FT,
    WEIGHT_DECAY,
)

# The hyperparameters some strategies read and others do not, in table order.
TRAINING_PARAMS = (LP_LR, FT_LR, LP_EPOCHS, FT_BLOCKS, LAYER_DECAY, WEIGHT_DECAY, BATCH_SIZE)

# What the main phase of a fine-tuning strategy trains, besides the head.
ALL, LAST_BLOCKS, NORMS = "all", "last_blocks", "norms"


@dataclass(frozen=True)
class Strategy:
    """A strategy's shape: an optional LP warm-up on cached features, then a main phase.

    Attributes:
        name: a name of vocabulary.STRATEGIES.
        warmup: an LP warm-up on cached features before the main phase (lp_ft; Kumar et al., 2022).
        main: LP (a head on cached features) or FT (the network on images).
        trains: what FT trains besides the head: `all` of the backbone, its `last_blocks`
            (`ft_blocks` of them, with the norm after them), or only its `norms` (the affine
            parameters of its normalisation layers, BitFit-like). Everything else stays frozen,
            bit for bit (its BatchNorm statistics too).
    """

    name: str
    warmup: bool
    main: str
    trains: str = ALL

    def params(self, lp_solver: str = "adamw") -> tuple[str, ...]:
        """The hyperparameters this strategy's training reads, in table order.

        A probe trained by AdamW reads a learning rate, a weight decay and a batch size, and as
        a warm-up its number of epochs; an L-BFGS probe (`training.lp_solver: lbfgs`) is one fit
        to convergence with its own C (`training.lp_c`) and reads none of them. Fine-tuning reads
        its learning rate, the layer-wise decay of that rate with depth, a weight decay and a
        batch size; partial fine-tuning also how many blocks it trains.
        """
        adamw_probe = lp_solver == "adamw" and (self.main == LP or self.warmup)
        trains_by_adamw = adamw_probe or self.main == FT
        used = {
            LP_LR: adamw_probe,
            FT_LR: self.main == FT,
            LP_EPOCHS: adamw_probe and self.warmup,
            FT_BLOCKS: self.main == FT and self.trains == LAST_BLOCKS,
            LAYER_DECAY: self.main == FT,
            WEIGHT_DECAY: trains_by_adamw,
            BATCH_SIZE: trains_by_adamw,
        }
        return tuple(p for p in TRAINING_PARAMS if used[p])


# One entry per name in vocabulary.STRATEGIES, in that order.
TRANSFER_STRATEGIES: dict[str, Strategy] = {
    LP: Strategy(LP, warmup=False, main=LP),
    FT: Strategy(FT, warmup=False, main=FT),
    LP_FT: Strategy(LP_FT, warmup=True, main=FT),
    PARTIAL_FT: Strategy(PARTIAL_FT, warmup=False, main=FT, trains=LAST_BLOCKS),
    NORM_FT: Strategy(NORM_FT, warmup=False, main=FT, trains=NORMS),
}
