"""Challenge metrics against hand computations and scikit-learn; degenerate cases; the decision rule."""

from __future__ import annotations

import numpy as np
import pytest

from fundus_search.metrics import THRESHOLD, classification_metrics, predict


def _from_confusion(tn, fp, fn, tp):
    y = np.array([0] * (tn + fp) + [1] * (fn + tp))
    p = np.array([0.2] * tn + [0.8] * fp + [0.2] * fn + [0.8] * tp)
    return classification_metrics(y, p)


def test_metrics_match_hand_computed_values():
    m = _from_confusion(tn=40, fp=10, fn=5, tp=45)
    # po = 85/100; pe = (50*55 + 50*45)/100^2 = 0.5; kappa = (0.85 - 0.5) / 0.5
    assert m["kappa"] == pytest.approx(0.7)
    assert m["f1"] == pytest.approx(2 * 45 / (2 * 45 + 10 + 5))
    assert m["specificity"] == pytest.approx(40 / 50)
    assert m["sensitivity"] == pytest.approx(45 / 50)
    assert m["accuracy"] == pytest.approx(0.85)
    assert m["average"] == pytest.approx((0.7 + 90 / 105 + 0.8) / 3)
    # two score levels: positives above negatives 45*40 times, tied 45*10 + 5*40 times, of 50*50 pairs
    assert m["auc"] == pytest.approx((45 * 40 + 0.5 * (45 * 10 + 5 * 40)) / 2500)


def test_metrics_with_single_class_predictions_are_defined():
    all_negative = _from_confusion(tn=30, fp=0, fn=20, tp=0)
    assert all_negative["kappa"] == 0 and all_negative["f1"] == 0 and all_negative["specificity"] == 1
    assert all_negative["average"] == pytest.approx(1 / 3)
    all_positive = _from_confusion(tn=0, fp=30, fn=0, tp=20)
    assert all_positive["specificity"] == 0 and all_positive["f1"] == pytest.approx(40 / 70)
    one_class_truth = classification_metrics(np.zeros(5), np.zeros(5))
    assert one_class_truth["kappa"] == 0 and np.isnan(one_class_truth["auc"]) and one_class_truth["specificity"] == 1


def test_an_exact_tie_is_predicted_positive_everywhere():
    assert THRESHOLD == 0.5 and predict(np.array([0.5, 0.4999]))[0] == 1 and predict(np.array([0.4999]))[0] == 0
    m = classification_metrics(np.array([1, 0]), np.array([0.5, 0.2]))
    assert m["sensitivity"] == 1 and m["specificity"] == 1
