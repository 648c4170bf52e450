"""Train: config -> split -> preprocess -> fit the VAE -> calibrate -> MLflow run and registry.

Rows labelled anomalous never reach training; they join the held-out normal rows as the
validation set the threshold is chosen on.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from anomaly_vae.config import Config
from anomaly_vae.errors import InputError

if TYPE_CHECKING:
    import torch
    from torch.utils.data import TensorDataset

    from anomaly_vae.data.preprocessing import EncodedTable
    from anomaly_vae.models.tabular_vae import TabularVAE

MIN_NORMAL_ROWS = 20


@dataclass
class TabularSplit:
    train: pd.DataFrame
    validation: pd.DataFrame
    validation_labels: np.ndarray  # True for anomalies
    features: list[str]


def split_table(frame: pd.DataFrame, config: Config) -> TabularSplit:
    """Normals split into training and validation; labelled anomalies go to validation only."""
    data, source = config.data, config.data.path
    from anomaly_vae.data.schema import anomaly_labels, check_columns
    from anomaly_vae.detector import ColumnRoles

    roles = ColumnRoles(data.id_columns, data.label, data.drop)
    check_columns(list(frame.columns), roles.known, (), source, allow_extra=True)
    features = [c for c in frame.columns if c not in set(roles.known)]
    if data.label:
        labels = anomaly_labels(frame[data.label], data.anomaly_value, source)
    else:
        labels = np.zeros(len(frame), dtype=bool)
    normal = np.flatnonzero(~labels)
    if len(normal) < MIN_NORMAL_ROWS:
        raise InputError(f"{source}: {len(normal)} normal rows; at least {MIN_NORMAL_ROWS} needed")
    rng = np.random.default_rng(config.training.seed)
    normal = rng.permutation(normal)
    n_val = max(1, round(config.training.val_fraction * len(normal)))
    train_rows = normal[n_val:]
    if config.training.max_train_rows:
        train_rows = train_rows[: config.training.max_train_rows]
    val_rows = np.concatenate([normal[:n_val], np.flatnonzero(labels)])
    return TabularSplit(
        train=frame.iloc[train_rows].reset_index(drop=True),
        validation=frame.iloc[val_rows].reset_index(drop=True),
        validation_labels=labels[val_rows],
        features=features,
    )


def tabular_dataset(encoded: EncodedTable, rows: np.ndarray | slice = slice(None)) -> TensorDataset:
    """Encoded rows as the (numeric, observed, codes) tensors `tabular_loss_terms` expects."""
    import torch
    from torch.utils.data import TensorDataset

    return TensorDataset(
        torch.from_numpy(encoded.numeric[rows]),
        torch.from_numpy(encoded.observed[rows]),
        torch.from_numpy(encoded.codes[rows]),
    )


def tabular_loss_terms(
    model: TabularVAE, batch: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LossTerms of a TabularVAE: the score's terms with one sampled z per row."""
    from anomaly_vae.scoring import tabular_terms

    nll, kl = tabular_terms(model, *batch, samples=1)
    return nll.sum(1), kl


def train(
    config: Config, tracking_uri: str | None = None, echo: Callable[[str], None] = print
) -> str:
    """Train, calibrate, log and register a detector; returns `models:/<name>@champion`."""
    from anomaly_vae.data.images import is_image_source

    if is_image_source(config.data.path, config.data.kind):
        from pipelines.train_images import train_images

        return train_images(config, tracking_uri, echo)

    import mlflow
    from sklearn.metrics import average_precision_score, roc_auc_score

    from anomaly_vae.calibration import choose_threshold, default_strategy
    from anomaly_vae.data.preprocessing import TabularPreprocessor
    from anomaly_vae.data.tables import read_table
    from anomaly_vae.detector import ColumnRoles, TabularDetector, build_tabular_model
    from anomaly_vae.probability import fit_probability
    from anomaly_vae.scoring import score_tabular
    from anomaly_vae.tracking import configure_tracking, flatten_params, log_detector, use_experiment
    from anomaly_vae.training import fit_vae, is_ddp_worker

    started = time.perf_counter()
    frame = read_table(config.data.path)
    split = split_table(frame, config)
    source = config.data.path
    preprocessor = TabularPreprocessor.fit(split.train, split.features, config.data.categorical)
    train_enc = preprocessor.transform(split.train, source)
    val_enc = preprocessor.transform(split.validation, source)
    val_normal = ~split.validation_labels

    model = build_tabular_model(preprocessor, config.model.model_dump())
    train_data = tabular_dataset(train_enc)
    val_data = tabular_dataset(val_enc, np.flatnonzero(val_normal))
    if is_ddp_worker():
        # Lightning's `ddp` launcher re-ran this command in a helper process only to join the
        # fit; the process that launched it (rank 0) tracks, calibrates and registers, once.
        fit_vae(model, tabular_loss_terms, train_data, val_data, config.training, config.model.beta)
        raise SystemExit(0)
    name = config.name or "anomaly-vae"
    configure_tracking(tracking_uri)
    use_experiment(config.mlflow.experiment or name)
    with mlflow.start_run(run_name=f"train {Path(source).name}") as run:
        mlflow.log_params(flatten_params(config.model_dump()))
        mlflow.log_dict(config.model_dump(), "config.json")
        mlflow.log_params(
            {
                "rows.train": len(split.train),
                "rows.validation_normal": int(val_normal.sum()),
                "rows.validation_anomaly": int((~val_normal).sum()),
                "features.numeric": len(preprocessor.numeric),
                "features.categorical": len(preprocessor.categorical),
            }
        )
        fit_started = time.perf_counter()
        fit = fit_vae(
            model, tabular_loss_terms, train_data, val_data, config.training, config.model.beta
        )
        fit_seconds = time.perf_counter() - fit_started
        val_scores = score_tabular(
            model, val_enc.numeric, val_enc.observed, val_enc.codes, config.scoring.samples
        ).score
        has_anomalies = bool(split.validation_labels.any())
        strategy = config.calibration.strategy
        if strategy == "auto":
            strategy = default_strategy(has_anomalies)
        # Precision and recall mean nothing without anomalies to find: report the alert rate.
        val_labels = split.validation_labels if has_anomalies else None
        threshold = choose_threshold(val_scores, val_labels, strategy, config.calibration.costs())
        probability = fit_probability(val_scores, val_labels, config.calibration.probability)
        metrics = {f"calibration.{k}": v for k, v in threshold.metrics.items()}
        metrics.update(
            threshold=threshold.value,
            epochs=fit.epochs,
            fit_seconds=fit_seconds,
            processes=fit.processes,
        )
        if has_anomalies:
            metrics["validation.auroc"] = roc_auc_score(split.validation_labels, val_scores)
            metrics["validation.average_precision"] = average_precision_score(
                split.validation_labels, val_scores
            )
        mlflow.log_metrics(metrics)
        mlflow.set_tag("calibration.strategy", strategy)

        registered = config.mlflow.registered_model or name
        detector = TabularDetector(
            model=model,
            preprocessor=preprocessor,
            roles=ColumnRoles(
                config.data.id_columns, config.data.label, config.data.drop, config.data.anomaly_value
            ),
            model_params=config.model.model_dump(),
            threshold=threshold,
            samples=config.scoring.samples,
            top_features=config.scoring.top_features,
            info={
                "config": config.model_dump(),
                "run_id": run.info.run_id,
                "experiment": config.mlflow.experiment or name,
                "epochs": fit.epochs,
            },
            probability=probability,
        )
        # Numeric features are doubles in the signature: CSV readers and JSON payloads turn
        # integers into floats as soon as a value is missing, and MLflow would refuse those.
        example = split.train[[*config.data.id_columns, *split.features]].head(5).astype(
            {c.name: "float64" for c in preprocessor.numeric}
        )
        with tempfile.TemporaryDirectory() as tmp:
            detector_dir = detector.save(Path(tmp) / "detector")
            uri = log_detector(detector_dir, example, detector.score_frame(example), registered)
    echo(
        f"trained on {len(split.train):,} rows in {fit_seconds:.1f} s ({fit.epochs} epochs); "
        f"threshold {threshold.value:.4g} by {strategy}: "
        + json.dumps({k: round(v, 4) for k, v in threshold.metrics.items()})
    )
    echo(f"run {run.info.run_id} in {time.perf_counter() - started:.1f} s")
    return uri
