"""Numbers and curves of a labelled, scored set, built on the calibration strategies.

Everything takes scores, boolean anomaly labels and (where it matters) a threshold, with the
convention of `anomaly_vae.calibration`: a row is flagged when `score >= threshold`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

from anomaly_vae.calibration import choose_threshold

# Alert budgets analysts ask about: one false alarm in a thousand, a hundred, twenty normals.
FIXED_FPRS = (0.001, 0.01, 0.05)


def recall_at_fpr_name(fpr: float) -> str:
    """The metric's name, also in MLflow, which refuses '%' and '@' in names."""
    return f"recall_at_fpr_{fpr:g}"


def recall_at_fprs(
    scores: np.ndarray, labels: np.ndarray, fprs: Iterable[float] = FIXED_FPRS
) -> dict[float, float]:
    """Recall of the lowest threshold that flags at most a fraction `fpr` of the normals."""
    return {fpr: choose_threshold(scores, labels, f"fpr<={fpr}").metrics["recall"] for fpr in fprs}


def threshold_sweep(scores: np.ndarray, labels: np.ndarray, points: int = 200) -> pd.DataFrame:
    """Precision, recall, F1, FPR and alert rate at thresholds spread over the score ranks.

    The thresholds are quantiles of all scores and of the anomalies' scores: the first keep
    the bulk of normals resolved, the second every step in recall, however far in the tail.
    The values match `calibration.threshold_metrics` at each threshold.
    """
    ranks = np.linspace(0, 1, points)
    thresholds = np.union1d(
        np.quantile(scores, ranks, method="nearest"),
        np.quantile(scores[labels], ranks, method="nearest") if labels.any() else [],
    )
    anomalous, normal = np.sort(scores[labels]), np.sort(scores[~labels])
    tp = len(anomalous) - np.searchsorted(anomalous, thresholds, side="left")
    fp = len(normal) - np.searchsorted(normal, thresholds, side="left")
    flagged = tp + fp
    precision = np.divide(tp, flagged, out=np.zeros(len(thresholds)), where=flagged > 0)
    recall = tp / len(anomalous) if len(anomalous) else np.zeros(len(thresholds))
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros(len(thresholds)), where=total > 0)
    return pd.DataFrame(
        {
            "threshold": thresholds,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "fpr": fp / len(normal) if len(normal) else np.zeros(len(thresholds)),
            "alert_rate": flagged / len(scores),
        }
    )


def top_feature_counts(top_features: Iterable[str]) -> pd.Series:
    """How often each feature is named among the rows' top features, most frequent first,
    whatever its direction: counted apart, a column's high and low values split its rows
    between two bars."""
    from anomaly_vae.detector import without_direction

    counts = Counter(
        without_direction(name) for joined in top_features for name in joined.split(",") if name
    )
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return pd.Series(dict(ordered), name="rows", dtype="int64")
