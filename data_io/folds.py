"""Cross-validation folds: stratified by label, grouped by file name, deterministic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fundus_search.vocabulary import UserError


class FoldError(UserError):
    """The requested split cannot be made from this dataset."""


def partition_seed(seed: int, repeat: int) -> int:
    """The shuffling seed of repeat `repeat` of a repeated k-fold: `seed` itself for repeat 0
    (the search's partition), a new draw from (seed, repeat) for each later one."""
    return seed if repeat == 0 else int(np.random.SeedSequence([seed, repeat]).generate_state(1)[0])


def fold_indices(
    labels: np.ndarray, groups: Sequence[str], *, folds: int, fold: int, seed: int, repeat: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices of fold `fold` of a stratified, grouped k-fold.

    Grouping by file name keeps an image that appears in both CGI-HRDC tasks (356 do) on one
    side of the split when tasks are pooled.

    Args:
        labels: (N,) class index per row.
        groups: (N,) group per row; rows sharing a group land in the same fold.
        folds: k >= 2.
        fold: which fold is validation, 0 <= fold < k.
        seed: shuffling seed; the same seed gives the same folds.
        repeat: which partition of a repeated k-fold (scikit-learn's RepeatedStratifiedKFold
            re-draws it the same way): 0 is the search's, each later one is shuffled anew.

    Returns:
        (train, val): sorted, disjoint int64 index arrays covering every row.

    Raises:
        FoldError: k or fold out of range, or a class has fewer than k groups.
    """
    if not 0 <= fold < folds:
        raise FoldError(f"data.fold: must be in [0, {folds - 1}] for data.folds={folds} (got {fold})")
    labels, groups = np.asarray(labels), np.asarray(groups)
    per_class = {int(c): len(np.unique(groups[labels == c])) for c in np.unique(labels)}
    fewest = min(per_class, key=per_class.get)
    if per_class[fewest] < folds:
        raise FoldError(
            f"data.folds: class {fewest} has only {per_class[fewest]} groups (distinct file names), "
            f"fewer than folds={folds}; lower data.folds"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=partition_seed(seed, repeat))
    train, val = list(splitter.split(np.zeros(len(labels)), labels, groups))[fold]
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)


def held_out_indices(labels: np.ndarray, groups: Sequence[str], *, fraction: float, seed: int) -> np.ndarray:
    """Rows of a held-out test split: about `fraction` of each class, whole groups, seeded.

    The challenge scored a hidden test set; this plays its part. Groups (file names) are drawn
    at random per class (a group's class is its majority label) until the class has its share.

    Args:
        labels: (N,) class index per row.
        groups: (N,) group per row; a group is wholly in or out.
        fraction: share of each class to hold out, 0 < fraction < 1; 0 gives no rows.
        seed: the same seed gives the same split.

    Returns:
        sorted int64 row indices.
    """
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    labels = np.asarray(labels)
    names, group_of = np.unique(np.asarray(groups), return_inverse=True)
    sizes = np.bincount(group_of, minlength=len(names))
    majority = np.array([np.bincount(labels[group_of == g]).argmax() for g in range(len(names))])
    rng = np.random.default_rng([seed, 2024])
    chosen: list[int] = []
    for label in np.unique(labels):
        candidates = np.flatnonzero(majority == label)
        target, taken = round(fraction * np.sum(labels == label)), 0
        for g in rng.permutation(candidates):
            if taken >= target:
                break
            chosen.append(int(g))
            taken += sizes[g]
    return np.flatnonzero(np.isin(group_of, chosen)).astype(np.int64)


def split_indices(
    labels: np.ndarray,
    groups: Sequence[str],
    *,
    folds: int,
    fold: int | None,
    seed: int,
    test_fraction: float = 0.0,
    repeat: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Train and scored rows of one run: fold `fold` of partition `repeat` of the k-fold over the
    rows outside the test split, or, with `fold=None`, every row outside the test split against
    the test split.

    The test split (see `held_out_indices`) is the same in every repeat and never enters a fold:
    the search and the cross-validation see only the other rows.

    Raises:
        FoldError: as fold_indices; or fold None without a test split.
    """
    test = held_out_indices(labels, groups, fraction=test_fraction, seed=seed)
    rest = np.setdiff1d(np.arange(len(labels)), test)
    if fold is None:
        if not len(test):
            raise FoldError("data.test_fraction: no test split to score on (it is 0); set it, e.g. 0.2")
        return rest, test
    train, val = fold_indices(
        np.asarray(labels)[rest], np.asarray(groups)[rest], folds=folds, fold=fold, seed=seed, repeat=repeat
    )
    return rest[train], rest[val]
