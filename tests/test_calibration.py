"""Threshold strategies against brute force over every candidate threshold."""

import numpy as np
import pytest

from anomaly_vae.calibration import choose_threshold, parse_strategy, threshold_metrics
from anomaly_vae.errors import InputError


@pytest.fixture
def scored() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    normal = rng.normal(0, 1, 900)
    anomalous = rng.normal(2.5, 1, 100)
    return np.concatenate([normal, anomalous]), np.r_[np.zeros(900, bool), np.ones(100, bool)]


def _brute_force(scores: np.ndarray, labels: np.ndarray) -> list[dict]:
    return [dict(threshold=t, **threshold_metrics(scores, labels, t)) for t in np.unique(scores)]


def test_f1_picks_the_best_f1_threshold(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "f1")
    best = max(_brute_force(scores, labels), key=lambda m: m["f1"])
    assert chosen.metrics["f1"] == pytest.approx(best["f1"])


def test_recall_bound_is_met_with_best_precision(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "recall>=0.9")
    feasible = [m for m in _brute_force(scores, labels) if m["recall"] >= 0.9]
    assert chosen.metrics["recall"] >= 0.9
    assert chosen.metrics["precision"] == pytest.approx(max(m["precision"] for m in feasible))


def test_precision_bound_is_met_with_best_recall(scored) -> None:
    scores, labels = scored
    chosen = choose_threshold(scores, labels, "precision>=0.8")
    feasible = [m for m in _brute_force(scores, labels) if m["precision"] >= 0.8]
    assert chosen.metrics["precision"] >= 0.8
    assert chosen.metrics["recall"] == pytest.approx(max(m["recall"] for m in feasible))


@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.2])
def test_fpr_budget_on_normals_only(scored, fpr: float) -> None:
    scores, labels = scored
    normals = scores[~labels]
    chosen = choose_threshold(normals, None, f"fpr<={fpr}")
    flagged = int(np.sum(normals >= chosen.value))
    assert flagged <= fpr * len(normals)
    # The lowest such threshold: one step down would flag one row more than allowed.
    assert int(np.sum(normals >= np.max(normals[normals < chosen.value]))) > fpr * len(normals)


@pytest.mark.parametrize(
    "bad", ["F1", "recall>0.9", "fpr<=1.5", "precision>=", "cost=1", "quantile=1.5"]
)
def test_unknown_strategies_are_rejected(bad: str) -> None:
    with pytest.raises(InputError, match="calibration strategy"):
        parse_strategy(bad)


def test_label_strategies_need_both_classes(scored) -> None:
    scores, labels = scored
    with pytest.raises(InputError, match="needs labelled normals and anomalies"):
        choose_threshold(scores[~labels], labels[~labels], "f1")
