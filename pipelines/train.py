"""Train: config -> split -> preprocess -> fit the VAE -> calibrate -> MLflow run and registry.

Rows labelled anomalous never reach training; they join the held-out normal rows as the
validation set the threshold is chosen on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from anomaly_vae.config import Config
from anomaly_vae.errors import InputError
from pipelines.tracked_training import (
    anomaly_weight,
    calibrate_and_log,
    closing_lines,
    detector_info,
    register_detector,
    split_normals,
    training_run,
)

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
    anomaly_weight: float  # what each validation anomaly counts for (`anomaly_weight`)
    features: list[str]
    may_miss: list[str]  # features with missing values in any row, split or not


def split_table(frame: pd.DataFrame, config: Config) -> TabularSplit:
    """Normals split into training and validation; labelled anomalies go to validation only."""
    data, source = config.data, config.data.path
    from anomaly_vae.data.preprocessing import check_training_rows
    from anomaly_vae.data.schema import (
        anomaly_labels,
        check_anomaly_value_matches,
        check_columns,
        check_kept_columns,
    )
    from anomaly_vae.detector import ColumnRoles

    roles = ColumnRoles(data.id_columns, data.label, data.drop)
    check_columns(
        list(frame.columns), roles.known, (), source, allow_extra=True, named_by=data.role_keys()
    )
    # An id named like a score column ('score') is refused before training, not by the
    # signature example once the model had trained: a FAILED run, and "input:" for the file.
    check_kept_columns(data.id_columns, source)
    features = [c for c in frame.columns if c not in set(roles.known)]
    for name in features:
        _reject_row_counter(frame[name], name, source)
    may_miss = check_training_rows(frame, features, source, data.categorical)
    if data.label:
        labels = anomaly_labels(frame[data.label], data.anomaly_value, source)
        check_anomaly_value_matches(frame[data.label], labels, data.anomaly_value, source)
    else:
        labels = np.zeros(len(frame), dtype=bool)
    normal = np.flatnonzero(~labels)
    if not len(normal) and len(frame):
        # "0 normal rows; at least 20 needed" left the user to find that the label was wrong.
        marks = f"'{data.anomaly_value}'" if data.anomaly_value else "a non-zero number or true"
        raise InputError(
            f"{source}: label column '{data.label}' marks every row an anomaly ({marks}); "
            "a model trains on normal rows: check data.label and data.anomaly_value"
        )
    if len(normal) < MIN_NORMAL_ROWS:
        rows = "normal row" if len(normal) == 1 else "normal rows"
        raise InputError(f"{source}: {len(normal)} {rows}; at least {MIN_NORMAL_ROWS} needed")
    rng = np.random.default_rng(config.training.seed)
    train_rows, val_normal = split_normals(normal, config.training, rng)
    val_rows = np.concatenate([val_normal, np.flatnonzero(labels)])
    return TabularSplit(
        train=frame.iloc[train_rows].reset_index(drop=True),
        validation=frame.iloc[val_rows].reset_index(drop=True),
        validation_labels=labels[val_rows],
        anomaly_weight=anomaly_weight(labels[val_rows], len(normal), int(labels.sum())),
        features=features,
        may_miss=may_miss,
    )


def _reject_row_counter(column: pd.Series, name: str, source: str) -> None:
    """Refuse a feature that counts the rows (a saved pandas index, a sequence number): as a
    feature it ranks later files by their row numbers, not by their transactions. So does a
    text column of numbers (a zero-padded 00001, 00002, ... which a CSV's reader keeps as text,
    as Parquet does): as categories, each of its values is seen once."""
    if len(column) < MIN_NORMAL_ROWS:
        return
    if not pd.api.types.is_numeric_dtype(column):
        if not (pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)):
            return
        # Two values tell whether the column can count; only such a column is converted.
        if pd.to_numeric(column.iloc[:2], errors="coerce").isna().any():
            return
        column = pd.to_numeric(column, errors="coerce")
        if column.isna().any():
            return
    steps = np.diff(column.to_numpy(dtype=np.float64))
    if abs(steps[0]) == 1 and (steps == steps[0]).all():
        counts = f"counts the rows ({column.iloc[0]:g}, {column.iloc[1]:g}, ...)"
        if name:
            raise InputError(
                f"{source}: column '{name}' {counts}: list it in data.id_columns (or "
                "data.drop) rather than learn from it"
            )
        raise InputError(
            f"{source}: the unnamed column {counts}, a saved index: list '' in data.drop, or "
            "write the file without it (pandas: index=False)"
        )


def signature_example(frame: pd.DataFrame, number_columns: Sequence[str]) -> pd.DataFrame:
    """A few rows of `frame`, from which MLflow infers the model's signature.

    Numeric and binary features are doubles: CSV readers and JSON payloads turn integers into
    floats as soon as a value is missing, and MLflow would refuse those. A column of pandas'
    category dtype (a Parquet dictionary column) holds its values: MLflow declared it a
    string, then refused the category example, and the trained run ended in a traceback.
    Columns of types MLflow cannot declare hold text (`_untyped_by_mlflow`). An integer column
    with a missing value, read in its Arrow type where pandas' float64 would lose digits
    (`anomaly_vae.data.tables._inexact_as_float`), is declared text: as a long, MLflow refused
    every missing value in it, and as a double (pandas' type for it) it lost those digits in
    a request or a Spark batch, where codes 9007199254740992 and ...993 scored as one. As text
    they come exactly, and Spark casts its longs to that text. Rows with a missing value
    MLflow cannot check come last (`_checkable_first`).
    """
    example = _checkable_first(frame, EXAMPLE_ROWS)
    categories = [c for c in example.columns if isinstance(example[c].dtype, pd.CategoricalDtype)]
    return example.astype(
        {
            **{c: object for c in categories},
            **{c: str for c in example.columns if _untyped_by_mlflow(example[c].dtype)},
            **dict.fromkeys(number_columns, "float64"),
            **{c: "string" for c in example.columns if _arrow_integer(example[c].dtype)},
        }
    )


EXAMPLE_ROWS = 5


def _checkable_first(frame: pd.DataFrame, rows: int) -> pd.DataFrame:
    """The first `rows` rows of `frame`, those without a missing value in a column of pandas'
    nullable integers or booleans (`Int64`, `boolean`) before the others. MLflow checks the
    example against the signature it infers from it and cannot convert such a missing value
    to the column's type: a Parquet file written from those dtypes (an id missing in some
    rows) trained, then ended in a traceback when one of the first rows had one."""
    nullable = [c for c, dtype in frame.dtypes.items() if _is_nullable_extension(dtype)]
    if not nullable:
        return frame.head(rows)
    complete = frame[nullable].notna().all(axis=1).to_numpy()
    first = np.flatnonzero(complete)[:rows]
    rest = np.flatnonzero(~complete)[: rows - len(first)]
    return frame.iloc[np.concatenate([first, rest])]


def _is_nullable_extension(dtype: object) -> bool:
    return isinstance(dtype, pd.api.extensions.ExtensionDtype) and dtype.kind in "iub"


def _arrow_integer(dtype: object) -> bool:
    return isinstance(dtype, pd.ArrowDtype) and pd.api.types.is_integer_dtype(dtype)


def _untyped_by_mlflow(dtype: object) -> bool:
    """Whether MLflow's signature cannot hold a column of `dtype`: times with a time zone
    (an event time among the ids) and durations. Their example rows failed the signature
    MLflow inferred, or its JSON, once the model had trained; they go in as text."""
    return isinstance(dtype, pd.DatetimeTZDtype) or pd.api.types.is_timedelta64_dtype(dtype)


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

    nll, kl, _ = tabular_terms(model, *batch, samples=1)
    return nll.sum(1), kl


def train(
    config: Config,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = print,
    promote: bool | None = None,
) -> str:
    """Train, calibrate, log and register a detector; returns `models:/<name>@champion`, or
    the version's own URI where it did not take `champion` (`takes_champion`)."""
    from anomaly_vae.data.images import is_image_source
    from anomaly_vae.data.tables import input_table_format, read_table

    if is_image_source(config.data.path, config.data.kind):
        from pipelines.train_images import train_images

        return train_images(config, tracking_uri, echo, promote)

    # data.path decides the kind of model: one that is neither kind is named before the
    # likelihood, which a single image's config chose for images ("bernoulli is for images").
    input_table_format(config.data.path)
    config.check_kind("table")
    import torch

    from anomaly_vae.data.preprocessing import TabularPreprocessor
    from anomaly_vae.detector import ColumnRoles, TabularDetector, build_tabular_model
    from anomaly_vae.scoring import score_tabular, typical_terms
    from anomaly_vae.training import fit_vae, is_ddp_worker

    started = time.perf_counter()
    # Categorical columns as the text they hold: a zip code keeps its leading zero, and a code
    # column whose first rows are digits may hold letters later. The table read is not kept:
    # held through the fit beside the split's copies, 1M rows of 30 columns peaked at 1,820 MiB
    # against 1,598 without (`/usr/bin/time -v anomaly-vae train`, one epoch).
    split = split_table(
        read_table(
            config.data.path,
            [*config.data.id_columns, *(config.data.categorical or [])],
            padded_as_text=config.data.categorical is None,
        ),
        config,
    )
    source = config.data.path
    preprocessor = TabularPreprocessor.fit(
        split.train, split.features, config.data.categorical, split.may_miss, source
    )
    train_enc = preprocessor.transform(split.train, source)
    val_enc = preprocessor.transform(split.validation, source)
    val_normal = ~split.validation_labels

    torch.manual_seed(config.training.seed)  # the initial weights too: one config, one model
    model = build_tabular_model(preprocessor, config.model.model_dump())
    train_data = tabular_dataset(train_enc)
    val_data = tabular_dataset(val_enc, np.flatnonzero(val_normal))
    if is_ddp_worker():
        # Lightning's `ddp` launcher re-ran this command in a helper process only to join the
        # fit; the process that launched it (rank 0) tracks, calibrates and registers, once.
        fit_vae(model, tabular_loss_terms, train_data, val_data, config.training, config.model.beta)
        raise SystemExit(0)
    counts = {
        "rows.train": len(split.train),
        "rows.validation_normal": int(val_normal.sum()),
        "rows.validation_anomaly": int((~val_normal).sum()),
        "features.numeric": len(preprocessor.numeric),
        "features.binary": len(preprocessor.binary),
        "features.categorical": len(preprocessor.categorical),
    }
    with training_run(
        config, tracking_uri, source, counts, "tabular", promote, preprocessor.feature_names
    ) as (run, promoted):
        fit_started = time.perf_counter()
        fit = fit_vae(
            model, tabular_loss_terms, train_data, val_data, config.training, config.model.beta
        )
        fit_seconds = time.perf_counter() - fit_started
        validated = score_tabular(model, val_enc, config.scoring.samples, keep_terms=True)
        val_scores = validated.score
        calibration = calibrate_and_log(
            config, val_scores, split.validation_labels, fit, fit_seconds, split.anomaly_weight
        )
        detector = TabularDetector(
            model=model,
            preprocessor=preprocessor,
            roles=ColumnRoles(
                config.data.id_columns,
                config.data.label,
                config.data.drop,
                config.data.anomaly_value,
            ),
            model_params=config.model.model_dump(),
            threshold=calibration.threshold,
            samples=config.scoring.samples,
            top_features=config.scoring.top_features,
            info=detector_info(config, run, fit),
            probability=calibration.probability,
            normal=calibration.normal,
            typical_terms=typical_terms(validated.terms[val_normal], val_enc.observed[val_normal]),
        )
        example = signature_example(
            split.train[[*config.data.id_columns, *split.features]],
            [c.name for c in preprocessor.number_columns],
        )
        registration = register_detector(config, detector, example, promoted, fit)
    total = time.perf_counter() - started
    trained = f"{len(split.train):,} rows"
    lines = closing_lines(
        trained, fit, fit_seconds, calibration, run.info.run_id, total, registration
    )
    for line in lines:
        echo(line)
    return registration.uri
