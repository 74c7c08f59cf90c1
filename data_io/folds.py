"""Cross-validation folds: stratified by label, grouped by file name, deterministic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold


class FoldError(ValueError):
    """The requested split cannot be made from this dataset."""


def fold_indices(
    labels: np.ndarray, groups: Sequence[str], *, folds: int, fold: int, seed: int
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
        raise FoldError(f"data.folds: class {fewest} has only {per_class[fewest]} groups (distinct file names), "
                        f"fewer than folds={folds}; lower data.folds")
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    train, val = list(splitter.split(np.zeros(len(labels)), labels, groups))[fold]
    return np.sort(train).astype(np.int64), np.sort(val).astype(np.int64)
