"""Evaluate: score a labelled file and report ranking and threshold metrics, also to MLflow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray  # [[tn, fp], [fn, tp]]
    run_id: str | None

    def lines(self) -> list[str]:
        (tn, fp), (fn, tp) = self.confusion
        out = [f"{name:<18} {value:.4f}" for name, value in self.metrics.items()]
        out += [
            "confusion matrix   predicted normal  predicted anomaly",
            f"  actual normal    {tn:>16,}  {fp:>17,}",
            f"  actual anomaly   {fn:>16,}  {tp:>17,}",
        ]
        return out


def evaluate_scores(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Evaluation:
    """AUROC and AP of the scores, and what the model's threshold achieves on them."""
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    from anomaly_vae.calibration import threshold_metrics
    from anomaly_vae.errors import InputError

    if labels.all() or not labels.any():
        raise InputError("evaluation needs both normal and anomalous rows in the labels")
    at_threshold = threshold_metrics(scores, labels, threshold)
    metrics = {
        "auroc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "threshold": float(threshold),
        **{k: at_threshold[k] for k in ("precision", "recall", "f1", "fpr", "alert_rate")},
    }
    confusion = confusion_matrix(labels, scores >= threshold, labels=[False, True])
    return Evaluation(metrics=metrics, confusion=confusion, run_id=None)


def evaluate_file(
    model_uri: str,
    input_path: str | Path,
    label: str | None = None,
    allow_extra: bool = False,
    tracking_uri: str | None = None,
) -> Evaluation:
    import mlflow

    from anomaly_vae.data.schema import anomaly_labels
    from anomaly_vae.errors import InputError
    from anomaly_vae.tracking import configure_tracking, use_experiment
    from pipelines.score import load_model, scored_batches

    detector = load_model(model_uri, tracking_uri)
    label = label or detector.roles.label
    if not label:
        raise InputError("evaluate needs --label: the model's config names no label column")
    source = str(input_path)
    scores, labels = [], []
    offset = 0
    for batch, scored in scored_batches(detector, input_path, allow_extra=True):
        if label not in batch.columns:
            raise InputError(f"{source}: missing label column '{label}'")
        detector.check_columns([c for c in batch.columns if c != label], source, allow_extra)
        labels.append(anomaly_labels(batch[label], detector.roles.anomaly_value, source, offset))
        scores.append(scored["score"].to_numpy())
        offset += len(batch)
    threshold = detector.threshold.value if detector.threshold else float("inf")
    evaluation = evaluate_scores(np.concatenate(scores), np.concatenate(labels), threshold)
    configure_tracking(tracking_uri)
    use_experiment(detector.info.get("experiment", "anomaly-vae"))
    with mlflow.start_run(run_name=f"evaluate {Path(source).name}") as run:
        mlflow.set_tags({"model_uri": model_uri, "input": source, "kind": "evaluation"})
        mlflow.log_metrics({f"test.{k}": v for k, v in evaluation.metrics.items()})
        (tn, fp), (fn, tp) = evaluation.confusion
        mlflow.log_dict(
            {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}, "confusion_matrix.json"
        )
    evaluation.run_id = run.info.run_id
    return evaluation
