"""Threshold strategies: validation scores (and labels, where known) in, a threshold out.

A strategy is a short string stored with the model, so a threshold can be re-chosen on new
data without retraining:

- `f1`: the threshold of maximum F1 on the precision-recall curve (needs anomalies);
- `recall>=R`: the highest threshold whose recall reaches R (best precision at that recall);
- `precision>=P`: the lowest threshold whose precision reaches P (best recall at it);
- `fpr<=F`: flags at most a fraction F of normal validation rows (normals suffice).

A sample is anomalous when `score >= threshold`, the convention of scikit-learn's curves.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import numpy as np
from sklearn.metrics import precision_recall_curve

from anomaly_vae.errors import InputError

DEFAULT_FPR = 0.01
_BOUND = re.compile(r"^(recall>=|precision>=|fpr<=)([0-9]*\.?[0-9]+)$")


@dataclass
class Threshold:
    value: float
    strategy: str
    metrics: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_strategy(strategy: str) -> tuple[str, float | None]:
    """Split 'recall>=0.9' into ('recall>=', 0.9); errors name the accepted forms."""
    strategy = strategy.replace(" ", "")
    if strategy == "f1":
        return "f1", None
    match = _BOUND.match(strategy)
    if match and 0 < float(match.group(2)) <= 1:
        return match.group(1), float(match.group(2))
    raise InputError(
        f"calibration strategy '{strategy}': expected f1, recall>=R, precision>=P or fpr<=F "
        "with R, P, F in (0, 1]"
    )


def default_strategy(has_anomalies: bool) -> str:
    return "f1" if has_anomalies else f"fpr<={DEFAULT_FPR}"


def choose_threshold(scores: np.ndarray, labels: np.ndarray | None, strategy: str) -> Threshold:
    """Apply `strategy` to validation scores; labels are boolean anomaly flags or None."""
    kind, bound = parse_strategy(strategy)
    labels = None if labels is None else np.asarray(labels, dtype=bool)
    if kind == "fpr<=":
        normals = scores if labels is None else scores[~labels]
        if not len(normals):
            raise InputError(f"calibration '{strategy}' needs normal validation rows")
        value = _fpr_threshold(normals, bound)
    else:
        if labels is None or not labels.any() or labels.all():
            raise InputError(
                f"calibration '{strategy}' needs labelled normals and anomalies in the "
                "validation data (set data.label, or use fpr<=F)"
            )
        value = _curve_threshold(scores, labels, kind, bound)
    return Threshold(value=value, strategy=strategy, metrics=threshold_metrics(scores, labels, value))


def threshold_metrics(
    scores: np.ndarray, labels: np.ndarray | None, threshold: float
) -> dict[str, float]:
    """What a threshold achieves on the data it was chosen on."""
    flagged = scores >= threshold
    metrics = {"alert_rate": float(flagged.mean())}
    if labels is None:
        return metrics
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    n_normal = int(np.sum(~labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    metrics.update(
        precision=precision,
        recall=recall,
        f1=f1,
        fpr=fp / n_normal if n_normal else 0.0,
    )
    return metrics


def _fpr_threshold(normal_scores: np.ndarray, fpr: float) -> float:
    """The lowest threshold that flags at most floor(fpr * n) of the normal scores."""
    ranked = np.sort(normal_scores)[::-1]
    allowed = int(np.floor(fpr * len(ranked)))
    if allowed >= len(ranked):
        return float(ranked[-1])
    # Strictly above the first score that must stay unflagged.
    return float(np.nextafter(ranked[allowed], np.inf))


def _curve_threshold(scores: np.ndarray, labels: np.ndarray, kind: str, bound: float | None) -> float:
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # The curve's last point (precision 1, recall 0) has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    if kind == "f1":
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        return float(thresholds[int(np.argmax(f1))])
    if kind == "recall>=":
        ok = np.flatnonzero(recall >= bound)
        return float(thresholds[ok[-1]])  # thresholds ascend: the last is the highest
    ok = np.flatnonzero(precision >= bound)
    if not len(ok):
        raise InputError(f"calibration 'precision>={bound}': no threshold reaches that precision")
    return float(thresholds[ok[0]])
