"""Calibrate: re-choose a model's threshold on new data and register it as a new version.

Data drifts and alert budgets change; retraining for a new threshold would be slow and would
change the scores too. The new version copies the detector's weights byte for byte and
changes only `detector.json` (threshold and, with labels, the calibrated probability). The
`champion` alias moves to it only with `promote`, so a threshold can be reviewed with
`anomaly-vae evaluate models:/<name>/<version>` before the scoring jobs pick it up.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from anomaly_vae.calibration import Costs, Threshold

_REGISTRY_URI = re.compile(r"^models:/([^/@]+)[/@]")


@dataclass
class Calibration:
    threshold: Threshold
    rows: int
    model_uri: str  # the new version: models:/<name>/<version>
    promoted: bool
    probability: str | None  # the probability method fitted, if any
    run_id: str
    unit: str = "rows"  # what `rows` counts: "images" for an image model
    held_out: str | None = None  # how many images --held-out-only kept (`kept_out_of_training`)

    def lines(self) -> list[str]:
        metrics = json.dumps({k: round(v, 4) for k, v in self.threshold.metrics.items()})
        alias = (
            "champion now points to it"
            if self.promoted
            else "champion unchanged (pass --promote to move it)"
        )
        return [
            *([self.held_out] if self.held_out else []),
            f"threshold {self.threshold.value:.6g} by {self.threshold.strategy} on "
            f"{self.rows:,} {self.unit}: {metrics}",
            *self._clean_batch_note(),
            *([f"calibrated probability: {self.probability}"] if self.probability else []),
            f"registered {self.model_uri}; {alias}; run {self.run_id}",
        ]

    def _clean_batch_note(self) -> list[str]:
        """estimated-f1 on a batch that shows no anomalies beyond chance places the threshold
        just above the highest normal validation score the model kept, an F1 it does not
        estimate: the line said only `{"alert_rate": 0.0003, "estimated_anomaly_share": ...}`
        and a threshold far above the others, with nothing to say why."""
        from anomaly_vae.calibration import ESTIMATED_F1

        metrics = self.threshold.metrics
        if self.threshold.strategy != ESTIMATED_F1 or "estimated_f1" in metrics:
            return []
        # The estimate beside it (`estimated_anomaly_share` 0.0154) read as anomalies found,
        # where the batch was read as clean: it lies within the noise of that many rows.
        share = metrics.get("estimated_anomaly_share")
        within = f" (the estimated {share:.2%} is within chance)" if share else ""
        return [
            f"no more anomalies than chance among these {self.rows:,} {self.unit}{within}, a "
            "clean batch: the threshold lies just above the highest normal validation score "
            "the model kept; with a label column (--label), or --strategy fpr<=F, it is chosen "
            "otherwise"
        ]


def calibrate_model(
    model_uri: str,
    input_path: str | Path,
    strategy: str,
    label: str | None = None,
    costs: Costs | None = None,
    promote: bool = False,
    probability: str = "isotonic",
    allow_extra: bool = False,
    tracking_uri: str | None = None,
    anomaly_value: str | None = None,
    held_out_only: bool = False,
) -> Calibration:
    """Score `input_path` with the model, choose a threshold by `strategy`, register it.
    `anomaly_value` is the label that marks an anomaly, where not the model's;
    `held_out_only` keeps the images `image.holdout_fraction` kept out of training.

    Labels come from `label`, else from the model's label column when the file has it (for
    images: folder names, or `label` as a path,label CSV); without labels only `fpr<=F`
    (every row taken as normal), `quantile=Q` and `estimated-f1` apply. `auto` is f1 with
    labels and estimated-f1 without.
    """
    import mlflow

    from anomaly_vae.calibration import check_strategy, choose_threshold, recalibration_strategy
    from anomaly_vae.data.images import is_image_source
    from anomaly_vae.detector import ARTIFACT_FILE, load_detector
    from anomaly_vae.errors import InputError
    from anomaly_vae.probability import fit_probability
    from anomaly_vae.tracking import log_detector, resolve_detector_dir, run_reading_model
    from pipelines.score import refuse_options, table_for_an_image_model
    from pipelines.score_images import images_for_a_table_model

    if strategy != "auto":
        check_strategy(strategy, costs)  # a typo fails before the file is scored
    source_dir = resolve_detector_dir(model_uri, tracking_uri)
    detector = load_detector(source_dir)
    source = str(input_path)
    if detector.kind != "image" and is_image_source(input_path):
        # As score and evaluate say it: an IDX file was refused for its '.gz' extension.
        raise InputError(images_for_a_table_model(model_uri, input_path))
    if detector.kind == "image" and Path(input_path).exists() and not is_image_source(input_path):
        # A table for an image model was refused as "expected a folder of images or an
        # *-idx3-ubyte(.gz) file" (a folder of Parquet parts as "no ... images in this
        # folder"), naming no model: as if the file, not the model, were wrong.
        raise InputError(table_for_an_image_model(model_uri, input_path))
    if detector.kind == "image":
        tables_only = {"--allow-extra-columns": allow_extra, "--anomaly-value": anomaly_value}
        refuse_options(input_path, tables_only, "tables")
        scores, labels, example, held = _image_scores_and_labels(
            detector, input_path, label, model_uri if held_out_only else None
        )
    else:
        refuse_options(input_path, {"--held-out-only": held_out_only}, "images")
        held = None
        scores, labels, example = _scores_and_labels(
            detector, input_path, label, allow_extra, anomaly_value
        )
        example = _logged_example(source_dir, example)
    if strategy == "auto":
        _refuse_anomalies_only(input_path, labels)
        strategy = recalibration_strategy(labels, detector.normal)
    threshold = choose_threshold(scores, labels, strategy, costs, detector.normal)
    fitted = fit_probability(scores, labels, probability)
    if fitted is not None or probability == "none":
        detector.probability = fitted
    detector.threshold = threshold

    registered = _registered_name(model_uri, detector.info)
    with run_reading_model("calibration", model_uri, detector.info, source, tracking_uri) as read:
        mlflow.set_tag("calibration.strategy", strategy)
        # The options behind the threshold, named as a training run's config params: two
        # calibrations by cost with other costs differed in their threshold alone.
        mlflow.log_params(
            {
                "calibration.cost_fn": costs.fn if costs else None,
                "calibration.cost_fp": costs.fp if costs else None,
                "calibration.probability": probability,
                # The label that marked the anomalies, where not the model's own.
                "calibration.anomaly_value": anomaly_value,
                # Which images chose it, as evaluate logs it.
                "held_out_only": held_out_only,
            }
        )
        mlflow.log_metrics(
            {
                "threshold": threshold.value,
                "rows": float(len(scores)),
                **{f"calibration.{k}": v for k, v in threshold.metrics.items()},
            }
        )
        detector.info = {
            **detector.info,
            # The version an alias pointed at: "from models:/fraud@champion" in the version's
            # description no longer said which model once the alias moved.
            "calibrated_from": (
                f"models:/{read.lineage.version}" if read.lineage.version else model_uri
            ),
            "calibration_run_id": read.run.info.run_id,
            "calibration_data": source,
        }
        with tempfile.TemporaryDirectory() as tmp:
            new_dir = Path(shutil.copytree(source_dir, Path(tmp) / "detector"))
            (new_dir / ARTIFACT_FILE).write_text(json.dumps(detector.to_state(), indent=2))
            registration = log_detector(
                new_dir, example, detector.score_frame(example), registered, promote=promote
            )
    return Calibration(
        threshold=threshold,
        rows=len(scores),
        model_uri=f"models:/{registration.label}",
        promoted=promote,
        probability=fitted.method if fitted else None,
        run_id=read.run.info.run_id,
        unit="images" if detector.kind == "image" else "rows",
        held_out=held,
    )


def _logged_example(detector_dir: Path, fallback: pd.DataFrame) -> pd.DataFrame:
    """The input example the source version was logged with, so that the new version keeps
    its signature; `fallback`, from the calibration file, for a bare detector directory.

    Taken from the calibration file, the signature followed that file: one without the id
    columns registered a version whose REST and Spark answers carried no ids, string ids one
    that refused the rows the source version took. Images keep the file's example: the paths
    logged at training need not exist where calibrate runs."""
    from mlflow.models import Model

    model_dir = detector_dir.parent.parent
    if detector_dir.parent.name != "artifacts" or not (model_dir / "MLmodel").is_file():
        return fallback
    logged = Model.load(model_dir).load_input_example(model_dir)
    return logged if isinstance(logged, pd.DataFrame) else fallback


def _scores_and_labels(
    detector,  # noqa: ANN001 - a TabularDetector
    input_path: str | Path,
    label: str | None,
    allow_extra: bool,
    anomaly_value: str | None,
) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame]:
    """All scores of the file, its labels (or None) and a few rows as the model's example."""
    from anomaly_vae.errors import InputError
    from pipelines.score import scored_batches
    from pipelines.train import signature_example

    explicit = label is not None
    label = label or detector.roles.label
    if label:
        detector.check_label(label)
    scores, labels, example = [], [], None
    held = detector.roles.held_labels(label, anomaly_value) if label else None
    for part, scored in scored_batches(detector, input_path, allow_extra=True, top_rows=0):
        batch = part.frame
        if example is None:
            if label and label not in batch.columns and not explicit:
                label = None  # the model's label column is optional here
            known = [*detector.roles.id_columns, *detector.feature_names]
            # As training's example: MLflow refused a category (a Parquet dictionary column)
            # or a missing value in pandas' Int64, in a traceback once the file had scored.
            numbers = [c.name for c in detector.preprocessor.number_columns]
            example = signature_example(batch[[c for c in known if c in batch.columns]], numbers)
        if label and label not in batch.columns:  # asked for, or absent from a later part
            raise InputError(f"{part.source}: missing label column '{label}'")
        detector.check_columns([c for c in batch.columns if c != label], part.source, allow_extra)
        if label:
            labels.append(
                detector.roles.labels(batch[label], part.source, part.first_row, anomaly_value)
            )
            held.add(batch[label])
        scores.append(scored["score"].to_numpy())
    if not label:
        if anomaly_value is not None:  # it read no label: taken without a word, it did nothing
            raise InputError(
                f"{input_path}: --anomaly-value reads labels, and this file has no label "
                "column the model knows: name it with --label"
            )
        return np.concatenate(scores), None, example
    flags = np.concatenate(labels)
    held.check(flags, str(input_path))  # as training and evaluate refuse an unmatched value
    return np.concatenate(scores), flags, example


def _refuse_anomalies_only(input_path: str | Path, labels: np.ndarray | None) -> None:
    """Labels that mark every row an anomaly leave the default for labelled data, f1, without
    the normals it needs: the refusal named "calibration 'f1'", a strategy nobody had given."""
    from anomaly_vae.errors import InputError

    if labels is not None and labels.all():
        raise InputError(
            f"{input_path}: every label marks an anomaly; calibrating labelled data without "
            "--strategy chooses by f1, which needs labelled normals too: add some, or pass "
            "--strategy estimated-f1 or quantile=Q"
        )


def _image_scores_and_labels(
    detector,  # noqa: ANN001 - an ImageDetector
    input_path: str | Path,
    labels_csv: str | None,
    held_out_of: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None, pd.DataFrame, str | None]:
    """Scores of every image, labels from folder names (or a path,label CSV), an example,
    and, for the model URI `held_out_of`, the images it kept out of training alone with a
    line saying how many (`kept_out_of_training`): calibrated on a folder that held its training
    images, an fpr<=0.05 threshold flagged 6.9% of the normals it had not seen.

    Labels are None when some image has none (an IDX file without its labels) or when no
    image is anomalous: then only the strategies that need normals alone apply. So are folder
    names that name no normal folder: a flat folder of new images is a batch nobody labelled,
    not a batch of anomalies (auto chose f1 on it and stopped for want of normals).
    """
    from pipelines.score_images import kept_out_of_training, scored_image_batches

    items = detector.list_images(input_path).labelled(labels_csv or None, input_path)
    if labels_csv is None and all(item.label for item in items):
        # No folder named normal: a batch nobody labelled, its images normal to the strategies
        # that need normals alone, and to --held-out-only, which kept every image of such a
        # folder as an anomaly and chose the threshold on the training images themselves.
        items = [dataclasses.replace(item, label=False) for item in items]
    note = None
    if held_out_of is not None:
        items, note = kept_out_of_training(detector, items, held_out_of, input_path)
    scores = np.concatenate([s.score for _, _, s in scored_image_batches(detector, items)])
    known = [item.label for item in items]
    labels = None if None in known else np.array(known, dtype=bool)
    if labels is not None and not labels.any():
        labels = None
    example = pd.DataFrame({"path": [str(item.path) for item in items[:2]]})
    return scores, labels, example, note


def _registered_name(model_uri: str, info: dict) -> str:
    """The registered model a new version joins: the URI's, else the one training named."""
    match = _REGISTRY_URI.match(model_uri)
    if match:
        return match.group(1)
    config = info.get("config", {})
    return config.get("mlflow", {}).get("registered_model") or config.get("name") or "anomaly-vae"
