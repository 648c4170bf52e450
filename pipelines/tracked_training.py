"""What every training pipeline does around the fit, whatever the data: the MLflow run, the
threshold and probability chosen on validation scores, and the closing summary.

Tables and images differ in how they read, split and score data; the run they leave behind
(params, config, calibration metrics, tags) is the same, so runs compare in the MLflow UI.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anomaly_vae.config import Config, TrainingConfig
from anomaly_vae.errors import InputError

# What a training run logs at the top of its artifacts, besides the config file: every key
# of the config, defaults included, and the folder of figures.
RESOLVED_CONFIG = "config.json"
FIGURES = "figures"
RUN_ARTIFACTS = frozenset({RESOLVED_CONFIG, FIGURES})

if TYPE_CHECKING:
    import mlflow

    from anomaly_vae.calibration import NormalScores, Threshold
    from anomaly_vae.probability import ProbabilityMap
    from anomaly_vae.tracking import Registration
    from anomaly_vae.training import FitResult


@dataclass
class Calibration:
    strategy: str
    threshold: Threshold
    probability: ProbabilityMap | None
    normal: NormalScores
    # The share of anomalies the metrics are at (the training file's), when it has any.
    anomaly_share: float | None = None

    def summary(self) -> str:
        metrics = {k: round(v, 4) for k, v in self.threshold.metrics.items()}
        share = (
            f" at the training file's {self.anomaly_share:.2%} anomalies"
            if self.anomaly_share is not None
            else ""
        )
        return (
            f"threshold {self.threshold.value:.4g} by {self.strategy}{share}: {json.dumps(metrics)}"
        )


def closing_lines(
    trained: str, fit: FitResult, fit_seconds: float, calibration: Calibration, run_id: str,
    total_seconds: float, registration: Registration,
) -> list[str]:  # fmt: skip
    """What `train` reports on stderr once the model is registered; `trained`: '1,000 rows'.
    The version is named as `calibrate` names it, 'models:/name/3'."""
    unmoved = "" if registration.promoted else " (champion unchanged)"
    lines = [
        f"trained on {trained} in {fit_seconds:.1f} s "
        f"({fit.epochs} epoch{'' if fit.epochs == 1 else 's'}); " + calibration.summary(),
        f"registered models:/{registration.label}{unmoved}; run {run_id} in {total_seconds:.1f} s",
    ]
    if fit.diverged_epoch is not None:
        # Early stopping ends a fit at its first NaN validation loss without a word: the
        # README's `--set training.epochs=20` on the credit-card sample stopped at its third
        # epoch and kept the first's weights, reported only as "(3 epochs)".
        lines.insert(
            1,
            f"training diverged: the validation loss was not finite from epoch "
            f"{fit.diverged_epoch + 1}; the model keeps epoch {fit.best_epoch + 1}'s weights; "
            "a lower training.learning_rate may train longer",
        )
    return lines


def anomaly_weight(labels: np.ndarray, normals: int, anomalies: int) -> float:
    """What each anomaly among the validation `labels` counts for, so that validation holds
    anomalies at the share of the data, of `normals` and `anomalies` in all: validation takes
    every anomaly (or as many as its normals) but a fifth of the normals, and judged at that
    share, the F1 threshold flagged 45% of a bank table whose anomalies are 12% of its rows
    and reported a precision of 0.6 where a day of the same data got 0.2."""
    in_validation = int(labels.sum())
    if not in_validation:
        return 1.0
    return (anomalies / normals) / (in_validation / int((~labels).sum()))


def split_normals(
    normal: np.ndarray, training: TrainingConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The normal rows shuffled into (training, validation): `val_fraction` of them (at least
    one) for validation, the rest, up to `max_train_rows`, for training."""
    normal = rng.permutation(normal)
    n_val = max(1, round(training.val_fraction * len(normal)))
    if n_val >= len(normal):
        raise InputError(
            f"training.val_fraction: {training.val_fraction:g} of the {len(normal)} normal "
            "samples leaves none to train on"
        )
    return normal[n_val:][: training.max_train_rows], normal[:n_val]


def run_name(config: Config) -> str:
    return config.name or "anomaly-vae"


@contextmanager
def training_run(
    config: Config,
    tracking_uri: str | None,
    data: str | Path,
    counts: dict[str, int],
    kind: str,
    promote: bool | None = None,
    features: Sequence[str] = (),
) -> Iterator[tuple[mlflow.ActiveRun, bool]]:
    """An MLflow run in the config's experiment holding the config, its params and `counts`,
    and whether the new version is to take `champion` (`takes_champion`), decided before the
    fit. `kind` is the detector's ('tabular' or 'image'), `features` a table's columns."""
    import mlflow

    from anomaly_vae.tracking import (
        flatten_params,
        log_data,
        tracked_run,
        tracking_for_call,
        use_experiment,
    )

    with tracking_for_call(tracking_uri):
        promoted = takes_champion(config, kind, features, promote)
        experiment = config.mlflow.experiment or run_name(config)
        use_experiment(experiment)
        name = training_run_name(data, config.overrides)
        # Configs that share an experiment (mlflow.experiment) trained runs named alike:
        # cc.yaml and cc_small.yaml both 'train cc_train.parquet'.
        if config.name and config.name != experiment:
            name = f"{config.name}: {name}"
        with tracked_run(name) as run:
            settings = config.settings_for("table" if kind == "tabular" else "image")
            mlflow.log_params(flatten_params(settings))
            mlflow.log_dict(config.model_dump(), RESOLVED_CONFIG)
            mlflow.log_params(counts)
            log_data(config.data.path, "training")
            if config.source_file is not None:
                log_config_file(config.source_file)
            if config.overrides:
                mlflow.set_tag("overrides", " ".join(f"--set {o}" for o in config.overrides))
            yield run, promoted


def registered_name(config: Config) -> str:
    """The registered model a training run's detector becomes a version of."""
    return config.mlflow.registered_model or run_name(config)


_DATA_OF_KIND = {"tabular": "a table", "image": "images"}


def takes_champion(
    config: Config, kind: str, features: Sequence[str], promote: bool | None
) -> bool:
    """Whether the version this training registers is to take `champion` (`promote`: True,
    False, or None for when it fits the champion's callers).

    A `kind` detector for a registered model of the other kind is refused whatever `promote`
    says: the new version took `champion`, and every scoring job on it then failed (an image
    model given tables, or the reverse). So is, unless `promote` decides, a table model that
    reads other columns than the champion: those jobs failed on missing or unexpected
    columns, and a sweep over configs had no way to register without moving the alias."""
    from anomaly_vae.tracking import CHAMPION_ALIAS, registered_state

    name = registered_name(config)
    held = registered_state(name)
    if held is None:
        return promote is not False
    state, uri = held
    key = "mlflow.registered_model" if config.mlflow.registered_model else "name"
    if state["kind"] != kind:
        raise InputError(
            f"{key}: '{name}' holds {state['kind']} models ({uri}), and this config trains on "
            f"{_DATA_OF_KIND[kind]}: register it under another name "
            "(--set mlflow.registered_model=...)"
        )
    if promote is not None or kind != "tabular" or not uri.endswith(f"@{CHAMPION_ALIAS}"):
        return promote is not False
    from anomaly_vae.data.preprocessing import TabularPreprocessor
    from anomaly_vae.data.schema import quoted_names
    from anomaly_vae.detector import ColumnRoles

    read = TabularPreprocessor.from_dict(state["preprocessor"]).feature_names
    added = [c for c in features if c not in set(read)]
    # The champion's callers send its features and may send its ids, label and dropped
    # columns; a column this config names as an id, the label or one to drop is taken and set
    # aside. Refused, any of them failed every scoring job on the new champion.
    roles = state.get("columns") or {}
    sent = [*read, *ColumnRoles(**roles).known] if roles else read
    accepted = {*features, *config.data.id_columns, *config.data.drop, config.data.label}
    dropped = list(dict.fromkeys(c for c in sent if c not in accepted))
    if not added and not dropped:
        return True
    differences = [
        *([f"it would need {quoted_names(added)}"] if added else []),
        *([f"refuse {quoted_names(dropped)}"] if dropped else []),
    ]
    raise InputError(
        f"{key}: '{name}' has a champion ({uri}) that reads other columns: "
        f"{' and '.join(differences)}, and the champion's scoring jobs would fail; train with "
        "--no-promote to register this model without moving champion, --promote to move it "
        "anyway, or --set mlflow.registered_model=... to give it a name of its own"
    )


def log_config_file(path: str) -> None:
    """Tag the run with the config file's path and log the file as written, under its own name
    at the top of the run's artifacts; a file named as something the run logs there itself
    goes under `config_file/`, as its tag is named: a config.json overwrote the resolved
    config, and a file named figures blocked the folder of figures."""
    import mlflow

    mlflow.set_tag("config_file", str(Path(path).resolve()))
    mlflow.log_artifact(path, "config_file" if Path(path).name in RUN_ARTIFACTS else None)


def training_run_name(data: str | Path, overrides: tuple[str, ...]) -> str:
    """`train <data>`, followed by the `--set` overrides that set this run apart from the other
    runs of its config (their names were all alike); long lists are cut at 200 characters.
    Where `data.path` was set, the data is named with its file's folder, or runs on
    2024/october.parquet and 2023/october.parquet would be named alike, and the override is
    left out (its whole path, which filled the `runs` table, is in the `overrides` tag)."""
    from anomaly_vae.tracking import data_title

    paths = [o for o in overrides if o.partition("=")[0] == "data.path"]
    path = Path(data)
    title = f"{path.parent.name}/{path.name}" if paths and path.parent.name else data_title(path)
    name = " ".join(["train", title, *(o for o in overrides if o not in paths)])
    return name if len(name) <= 200 else name[:199] + "…"


def calibrate_and_log(
    config: Config,
    scores: np.ndarray,
    labels: np.ndarray,
    fit: FitResult,
    fit_seconds: float,
    weight: float = 1.0,
) -> Calibration:
    """Choose the threshold (and probability map) on validation scores; log what they reach.

    `labels` flags the validation anomalies, each counting as `weight` rows (`anomaly_weight`);
    without any, precision and recall mean nothing, so the threshold is judged by its alert
    rate alone.
    """
    import mlflow
    from sklearn.metrics import average_precision_score, roc_auc_score

    from anomaly_vae.calibration import (
        NormalScores,
        choose_threshold,
        default_strategy,
        row_weights,
    )
    from anomaly_vae.evaluation.figures import score_histogram_figure
    from anomaly_vae.probability import fit_probability

    has_anomalies = bool(labels.any())
    strategy = config.calibration.strategy
    if strategy == "auto":
        strategy = default_strategy(has_anomalies)
    known = labels if has_anomalies else None
    threshold = choose_threshold(
        scores, known, strategy, config.calibration.costs(), anomaly_weight=weight
    )
    probability = fit_probability(scores, known, config.calibration.probability, weight)
    metrics: dict[str, Any] = {f"calibration.{k}": v for k, v in threshold.metrics.items()}
    metrics.update(
        threshold=threshold.value,
        epochs=fit.epochs,
        # The model keeps the weights of its best epoch; the last val_loss is another epoch's.
        best_val_loss=fit.best_val_loss,
        best_epoch=fit.best_epoch,
        fit_seconds=fit_seconds,
        processes=fit.processes,
    )
    if has_anomalies:
        rows = row_weights(labels, weight)
        metrics["validation.auroc"] = roc_auc_score(labels, scores)
        metrics["validation.average_precision"] = average_precision_score(
            labels, scores, sample_weight=rows
        )
        metrics["validation.anomaly_share"] = float(rows[labels].sum() / rows.sum())
    mlflow.log_metrics(metrics, step=fit.best_epoch)  # the model's step (`register_detector`)
    mlflow.set_tag("calibration.strategy", strategy)
    # Where the threshold fell among the validation scores, as evaluate's report draws it.
    histogram = score_histogram_figure(scores, labels, threshold.value)
    mlflow.log_figure(histogram, f"{FIGURES}/validation_scores.png")
    return Calibration(
        strategy,
        threshold,
        probability,
        NormalScores.from_scores(scores[~labels]),
        metrics.get("validation.anomaly_share"),
    )


def register_detector(
    config: Config, detector: Any, example: Any, promote: bool, fit: FitResult
) -> Registration:
    """Log the detector as the run's pyfunc model, registered under the config's name, and
    moved to `champion` if `promote`. The model is logged at the step of the epoch whose
    weights it keeps (`calibrate_and_log` logs there too): MLflow links the run's metrics of
    that step to it, and at step 0 the model's page showed the first epoch's losses.

    `example` is a few input rows: MLflow infers the signature from them and their scores.
    """
    from anomaly_vae.tracking import log_detector

    with tempfile.TemporaryDirectory() as tmp:
        detector_dir = detector.save(Path(tmp) / "detector")
        registered = registered_name(config)
        return log_detector(
            detector_dir,
            example,
            detector.score_frame(example),
            registered,
            promote,
            step=fit.best_epoch,
        )


def detector_info(config: Config, run: mlflow.ActiveRun, fit: FitResult) -> dict[str, Any]:
    """Where a detector came from, stored in its detector.json."""
    return {
        "config": config.model_dump(),
        "run_id": run.info.run_id,
        "experiment": config.mlflow.experiment or run_name(config),
        "epochs": fit.epochs,
    }
