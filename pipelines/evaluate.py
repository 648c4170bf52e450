"""Evaluate: score a labelled file and report ranking and threshold metrics, also to MLflow.

The same figures go to the MLflow run and, with `report_path`, into one self-contained HTML
report for people who decide from pictures and costs rather than one AUROC number.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import mlflow

    from anomaly_vae.calibration import Costs, Threshold
    from anomaly_vae.evaluation.report import Section

TOP_ROWS = 100  # the top-scored rows whose features the report counts


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray  # [[tn, fp], [fn, tp]]
    run_id: str | None
    report: Path | None = None
    note: str | None = None  # what of the input was read but not evaluated (images' masks)

    def lines(self) -> list[str]:
        (tn, fp), (fn, tp) = self.confusion
        out = [f"{name:<20} {value:.4f}" for name, value in self.metrics.items()]
        out += [
            "confusion matrix   predicted normal  predicted anomaly",
            f"  actual normal    {tn:>16,}  {fp:>17,}",
            f"  actual anomaly   {fn:>16,}  {tp:>17,}",
        ]
        return out


def evaluate_scores(
    scores: np.ndarray, labels: np.ndarray, threshold: float, source: str = "input"
) -> Evaluation:
    """AUROC and AP of the scores, and what the model's threshold achieves on them; labels of
    one class are an error naming `source`, the file they came from."""
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    from anomaly_vae.calibration import threshold_metrics
    from anomaly_vae.errors import InputError
    from anomaly_vae.evaluation.metrics import recall_at_fpr_name, recall_at_fprs

    if labels.all() or not labels.any():
        raise InputError(
            f"{source}: evaluation needs both normal and anomalous rows; the labels mark "
            f"{int(labels.sum()):,} of {len(labels):,} as anomalies"
        )
    at_threshold = threshold_metrics(scores, labels, threshold)
    metrics = {
        "auroc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "threshold": float(threshold),
        **{k: at_threshold[k] for k in ("precision", "recall", "f1", "fpr", "alert_rate")},
        **{recall_at_fpr_name(f): r for f, r in recall_at_fprs(scores, labels).items()},
    }
    confusion = confusion_matrix(labels, scores >= threshold, labels=[False, True])
    return Evaluation(metrics=metrics, confusion=confusion, run_id=None)


def evaluate_at_threshold(
    stored: Threshold | None,
    scores: np.ndarray,
    labels: np.ndarray,
    costs: Costs | None,
    source: str,
) -> tuple[Evaluation, float, Costs | None]:
    """Metrics at the model's threshold, and the expected cost under `costs`, else the costs
    the threshold was chosen with (if any)."""
    from anomaly_vae.calibration import Costs, expected_cost

    threshold = stored.value if stored else float("inf")
    evaluation = evaluate_scores(scores, labels, threshold, source)
    if costs is None and stored and stored.costs:
        costs = Costs(**stored.costs)
    if costs is not None:
        evaluation.metrics["expected_cost"] = expected_cost(scores, labels, threshold, costs)
    return evaluation, threshold, costs


def evaluate_file(
    model_uri: str,
    input_path: str | Path,
    label: str | None = None,
    allow_extra: bool = False,
    tracking_uri: str | None = None,
    report_path: str | Path | None = None,
    costs: Costs | None = None,
    label_from: str | None = None,
    held_out_only: bool = False,
    anomaly_value: str | None = None,
) -> Evaluation:
    """Evaluate on a labelled file; `costs` default to those the model's threshold weighed.
    `anomaly_value` is the label that marks an anomaly, where not the model's.

    A folder or IDX file of images goes to `evaluate_images`, with labels `label_from` folder
    names (or IDX labels) or a CSV.
    """
    from anomaly_vae.data.images import is_image_source
    from anomaly_vae.errors import InputError
    from pipelines.score import refuse_options

    # A mistyped image folder is neither kind: it read as a table, and --label-from was
    # refused as "for images", the folder's name not.
    if not Path(input_path).exists():
        raise InputError(f"{input_path}: file not found")
    # Options of the other input kind were ignored without a word: a table "evaluated on the
    # held-out rows only" was evaluated on all of them, and an image CSV given as --label (as
    # calibrate takes it) was not read.
    if is_image_source(input_path):
        if label is not None:
            raise InputError(
                f"{input_path}: --label names a table's label column; for images use "
                "--label-from folder or --label-from a path,label CSV"
            )
        tables_only = {"--allow-extra-columns": allow_extra, "--anomaly-value": anomaly_value}
        refuse_options(input_path, tables_only, "tables")
        from pipelines.evaluate_images import evaluate_images

        return evaluate_images(
            model_uri, input_path, label_from, held_out_only, tracking_uri, report_path, costs
        )
    options = {"--label-from": label_from is not None, "--held-out-only": held_out_only}
    refuse_options(input_path, options, "images")
    import mlflow

    from anomaly_vae.evaluation.report import check_report_path
    from anomaly_vae.evaluation.sections import common_sections, top_anomaly_sections
    from pipelines.score import scored_batches, table_detector

    if report_path is not None:
        check_report_path(report_path)
    detector = table_detector(model_uri, input_path, tracking_uri)
    label = label or detector.roles.label
    if not label:
        raise InputError("evaluate needs --label: the model's config names no label column")
    detector.check_label(label)
    source = str(input_path)
    scores, labels = [], []
    held = detector.roles.held_labels(label, anomaly_value)
    top_rows = pd.DataFrame()
    for part, scored in scored_batches(detector, input_path, allow_extra=True, top_rows=TOP_ROWS):
        batch = part.frame
        if label not in batch.columns:
            raise InputError(f"{part.source}: missing label column '{label}'")
        detector.check_columns([c for c in batch.columns if c != label], part.source, allow_extra)
        labels.append(
            detector.roles.labels(batch[label], part.source, part.first_row, anomaly_value)
        )
        held.add(batch[label])
        scores.append(scored["score"].to_numpy())
        if label not in scored.columns:  # an id column too: scored holds it already
            scored.insert(0, label, batch[label].to_numpy())
        top_rows = pd.concat([top_rows, scored.nlargest(TOP_ROWS, "score")]).nlargest(
            TOP_ROWS, "score"
        )
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    held.check(labels, source)
    evaluation, threshold, costs = evaluate_at_threshold(
        detector.threshold, scores, labels, costs, source
    )
    sections = common_sections(scores, labels, threshold, evaluation.confusion, costs)
    sections += top_anomaly_sections(top_rows)
    with evaluation_run(model_uri, detector, source, tracking_uri, evaluation, costs) as run:
        if anomaly_value is not None:  # the label that marked the anomalies, not the model's
            mlflow.log_param("test.anomaly_value", anomaly_value)
        (tn, fp), (fn, tp) = evaluation.confusion
        mlflow.log_dict(
            {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}, "confusion_matrix.json"
        )
        publish(evaluation, sections, report_path, model_uri, source, detector.threshold)
    evaluation.run_id = run.info.run_id
    return evaluation


@contextmanager
def evaluation_run(
    model_uri: str,
    detector: Any,  # a TabularDetector or ImageDetector
    source: str,
    tracking_uri: str | None,
    evaluation: Evaluation,
    costs: Costs | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """The evaluation's MLflow run, in the model's experiment and beneath the run that logged
    the model, holding the `test.*` metrics, the strategy that chose the threshold they
    were measured at and the `costs` behind `test.expected_cost`; the metrics are the logged
    model's too, so the model's page in `mlflow ui` lists every evaluation of it."""
    import mlflow

    from anomaly_vae.tracking import run_reading_model

    with run_reading_model("evaluation", model_uri, detector.info, source, tracking_uri) as read:
        if detector.threshold is not None:
            mlflow.set_tag("calibration.strategy", detector.threshold.strategy)
        (tn, fp), (fn, tp) = evaluation.confusion
        # The counts beside the rates: a recall of 0.9 on 10 anomalies is not one on 10,000.
        counts = {"rows": tn + fp + fn + tp, "anomalies": fn + tp, "flagged": fp + tp}
        metrics = {f"test.{k}": v for k, v in {**evaluation.metrics, **counts}.items()}
        mlflow.log_metrics(metrics, model_id=read.lineage.model_id, dataset=read.dataset)
        if costs is not None:
            # Evaluations of one version with other costs differed in test.expected_cost alone.
            mlflow.log_params({"test.cost_fn": costs.fn, "test.cost_fp": costs.fp})
        yield read.run


def publish(
    evaluation: Evaluation,
    sections: list[Section],
    report_path: str | Path | None,
    model_uri: str,
    source: str,
    threshold: Threshold | None,
    unit: str = "rows",
) -> None:
    """Log the figures to the active MLflow run and, with `report_path`, write the report;
    `unit` is what the data's count counts ("images" for images)."""
    import mlflow

    from anomaly_vae.evaluation.report import render_html, write_html

    for section in sections:
        if section.figure is not None:
            mlflow.log_figure(section.figure, f"figures/{section.name}.png")
    if report_path is None:
        return
    (tn, fp), (fn, tp) = evaluation.confusion
    run = mlflow.active_run().info.run_id
    # An alias moves: the version it named then keeps an archived report unambiguous.
    version = mlflow.get_run(run).data.tags.get("model_version")
    shown = (
        f"{model_uri} ({version})" if version and model_uri != f"models:/{version}" else model_uri
    )
    about = {
        "model": shown,
        "data": f"{source} ({tn + fp + fn + tp:,} {unit}, {fn + tp:,} anomalies)",
        "threshold": f"{threshold.value:.6g} (chosen by {threshold.strategy})"
        if threshold
        else "none",
        "MLflow run": run,
    }
    text = render_html(f"Evaluation of {shown}", about, evaluation.metrics, sections)
    evaluation.report = write_html(report_path, text)
    mlflow.log_artifact(str(evaluation.report))
