"""CGI-HRDC challenge metrics of a binary classifier, from labels and predicted probabilities.

The challenge ranks by `average` = mean(Cohen's kappa, F1 of the positive class,
specificity), all at one decision rule: positive when the predicted probability of the
positive class is >= THRESHOLD (0.5; an exact tie counts as positive). Training reports them
per epoch, and every metric of an evaluation is recomputed from its stored predictions, so
both use this module (numpy and scikit-learn only).
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

from fundus_search.vocabulary import ACCURACY, AUC, AVERAGE, F1, KAPPA, SENSITIVITY, SPECIFICITY

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
        `decision_metrics` of the decisions, and the AUC of the probabilities (NaN when
        y_true holds one class).
    """
    y_true = np.asarray(y_true).astype(int)
    auc = float(roc_auc_score(y_true, prob_positive)) if len(np.unique(y_true)) == 2 else float("nan")
    return {**decision_metrics(y_true, predict(prob_positive)), AUC: auc}


def decision_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Challenge metrics of 0/1 decisions (what a challenge submission's `predict` returns).

    Returns:
        kappa, f1, specificity, average, accuracy, sensitivity. Degenerate cases are defined,
        never raised: kappa is 0 when chance agreement is total (e.g. everything predicted and
        labelled one class: no better than chance); F1, sensitivity and specificity are 0 when
        their denominator is 0.
    """
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    with warnings.catch_warnings():  # the degenerate case is documented above, not a surprise
        warnings.filterwarnings("ignore", category=UndefinedMetricWarning)
        kappa = float(cohen_kappa_score(y_true, y_pred, labels=[0, 1], replace_undefined_by=0.0))
    f1 = float(f1_score(y_true, y_pred, labels=[0, 1], pos_label=1, zero_division=0))
    specificity = float(tn / (tn + fp)) if tn + fp else 0.0
    return {
        KAPPA: kappa,
        F1: f1,
        SPECIFICITY: specificity,
        AVERAGE: (kappa + f1 + specificity) / 3,
        ACCURACY: float(accuracy_score(y_true, y_pred)),
        SENSITIVITY: float(tp / (tp + fn)) if tp + fn else 0.0,
    }
