"""Runs: an experiment's runs with their status and key metrics, to compare models from a
terminal.

The same runs, with every metric and figure, are in `mlflow ui`; this is the quick look.
"""

from __future__ import annotations

import pandas as pd

# Training runs log validation and calibration metrics, evaluation runs test metrics,
# calibration runs the new threshold; a run shows '-' for what it did not log.
KEY_METRICS = (
    "validation.auroc",
    "validation.average_precision",
    "test.auroc",
    "test.average_precision",
    "test.recall_at_fpr_0.01",
    "test.precision",
    "test.recall",
    "test.f1",
    "calibration.precision",
    "calibration.recall",
    "calibration.f1",
    "calibration.estimated_f1",  # calibrated without labels (estimated-f1)
    "threshold",
    "epochs",
)


def list_runs(
    experiment: str | None = None, tracking_uri: str | None = None, max_runs: int = 50
) -> pd.DataFrame:
    """The latest runs (of `experiment`, else of every experiment), newest first."""
    import mlflow

    from anomaly_vae.errors import InputError
    from anomaly_vae.tracking import configure_tracking

    configure_tracking(tracking_uri, create=False)
    if experiment is not None and mlflow.get_experiment_by_name(experiment) is None:
        known = ", ".join(e.name for e in mlflow.search_experiments()) or "none"
        raise InputError(f"experiment '{experiment}' not found (experiments: {known})")
    runs = mlflow.search_runs(
        experiment_names=[experiment] if experiment else None,
        search_all_experiments=experiment is None,
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    if runs.empty:
        return pd.DataFrame()
    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "started": runs["start_time"].dt.strftime("%Y-%m-%d %H:%M"),
            # A failed or interrupted run logs no metrics: without its status, its '-' read
            # like those of a finished run that had nothing to log.
            "status": runs["status"],
            "name": runs.get("tags.mlflow.runName"),
        }
    )
    if experiment is None:
        names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
        table.insert(3, "experiment", runs["experiment_id"].map(names))
    for metric in KEY_METRICS:
        if f"metrics.{metric}" in runs.columns:
            table[metric] = runs[f"metrics.{metric}"]
    return table


def format_runs(table: pd.DataFrame) -> str:
    if table.empty:
        return "no runs yet"
    return table.to_string(index=False, na_rep="-", float_format="{:.4g}".format)
