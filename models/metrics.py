"""CGI-HRDC challenge metrics on scikit-learn, and CPU inference time per image.

The challenge ranks by `average` = mean(Cohen's kappa, F1 of the positive class,
specificity), all at one decision rule: positive when the predicted probability of the
positive class is >= THRESHOLD (0.5; an exact tie counts as positive). Metric names are
defined here once.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

KAPPA, F1, SPECIFICITY, AVERAGE, AUC, ACCURACY, SENSITIVITY = (
    "kappa", "f1", "specificity", "average", "auc", "accuracy", "sensitivity")
METRICS = (KAPPA, F1, SPECIFICITY, AVERAGE, AUC, ACCURACY, SENSITIVITY)
VAL_PREFIX = "val_"
VAL_METRICS = tuple(VAL_PREFIX + m for m in METRICS)  # val_kappa, val_f1, ... as reported
THRESHOLD = 0.5


def predict(prob_positive: np.ndarray) -> np.ndarray:
    """(N,) 0/1 decisions: positive when the probability of class 1 is >= THRESHOLD."""
    return (np.asarray(prob_positive) >= THRESHOLD).astype(int)


def classification_metrics(y_true: np.ndarray, prob_positive: np.ndarray) -> dict[str, float]:
    """Challenge metrics of a binary classifier.

    Args:
        y_true: (N,) 0/1 labels.
        prob_positive: (N,) probability of class 1; decisions by `predict` (>= THRESHOLD).

    Returns:
        kappa, f1, specificity, average, auc, accuracy, sensitivity. Degenerate cases are
        defined, never raised: kappa is 0 when chance agreement is total (e.g. everything
        predicted and labelled one class: no better than chance); F1, sensitivity and
        specificity are 0 when their denominator is 0; AUC is NaN when y_true holds one class.
    """
    y_true = np.asarray(y_true).astype(int)
    y_pred = predict(prob_positive)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():  # the degenerate case is documented above, not a surprise
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        kappa = float(cohen_kappa_score(y_true, y_pred, labels=[0, 1], replace_undefined_by=0.0))
    f1 = float(f1_score(y_true, y_pred, labels=[0, 1], pos_label=1, zero_division=0))
    specificity = float(tn / (tn + fp)) if tn + fp else 0.0
    auc = float(roc_auc_score(y_true, prob_positive)) if len(np.unique(y_true)) == 2 else float("nan")
    return {
        KAPPA: kappa,
        F1: f1,
        SPECIFICITY: specificity,
        AVERAGE: (kappa + f1 + specificity) / 3,
        AUC: auc,
        ACCURACY: float(accuracy_score(y_true, y_pred)),
        SENSITIVITY: float(tp / (tp + fn)) if tp + fn else 0.0,
    }


@torch.no_grad()
def cpu_seconds_per_image(model: torch.nn.Module, image_size: int, *, repeats: int = 10, warmup: int = 2) -> float:
    """Median CPU seconds to classify one (1, 3, S, S) image: the challenge's CPU-time column."""
    model = model.to("cpu").eval()
    x = torch.rand(1, 3, image_size, image_size)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(x)
        times.append(time.perf_counter() - start)
    return float(np.median(times))
