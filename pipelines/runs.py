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
    "test.pixel_auroc",  # image models with masks
    "calibration.precision",
    "calibration.recall",
    "calibration.f1",
    "calibration.estimated_f1",  # calibrated without labels (estimated-f1)
    "threshold",
    "epochs",
    "best_val_loss",
)


def list_runs(
    experiment: str | None = None, tracking_uri: str | None = None, max_runs: int = 50
) -> pd.DataFrame:
    """The latest runs (of `experiment`, else of every experiment), newest first; MLflow
    points where the caller pointed it afterwards, as after the other commands."""
    from anomaly_vae.tracking import tracking_for_call

    with tracking_for_call(tracking_uri, create=False):
        return _runs_table(experiment, max_runs)


def _runs_table(experiment: str | None, max_runs: int) -> pd.DataFrame:
    import mlflow

    from anomaly_vae.errors import InputError
    from anomaly_vae.tracking import refuse_deleted

    if experiment is not None:
        found = mlflow.get_experiment_by_name(experiment)
        if found is None:
            known = ", ".join(e.name for e in mlflow.search_experiments()) or "none"
            raise InputError(f"experiment '{experiment}' not found (experiments: {known})")
        refuse_deleted(found)
    runs = mlflow.search_runs(
        experiment_names=[experiment] if experiment else None,
        search_all_experiments=experiment is None,
        order_by=["attributes.start_time DESC"],
        max_results=max_runs,
    )
    if runs.empty:
        return pd.DataFrame()
    runs["status"] = _ended_if_gone(runs)
    table = pd.DataFrame(
        {
            "run_id": runs["run_id"],
            "started": _local_times(runs["start_time"]),
            # A failed or interrupted run logs no metrics: without its status, its '-' read
            # like those of a finished run that had nothing to log.
            "status": runs["status"],
            "name": runs.get("tags.mlflow.runName"),
            "model": _model_versions(runs),
        }
    )
    if experiment is None:
        names = {e.experiment_id: e.name for e in mlflow.search_experiments()}
        table.insert(3, "experiment", runs["experiment_id"].map(names))
    for metric in KEY_METRICS:
        if f"metrics.{metric}" in runs.columns:
            table[metric] = runs[f"metrics.{metric}"]
    return table


def _local_times(times: pd.Series) -> pd.Series:
    """The start times (MLflow gives them in UTC) in this machine's time zone, as `mlflow ui`
    and `date` show them: in New York a run started at 14:34 was listed as started at 19:34,
    with no zone to say so. Each time gets its own date's offset, summer time or not."""
    return times.map(lambda time: time.to_pydatetime().astimezone().strftime("%Y-%m-%d %H:%M"))


def _ended_if_gone(runs: pd.DataFrame) -> pd.Series:
    """The runs' statuses, a RUNNING run whose process has certainly ended (killed outright:
    kill -9, the OOM killer) marked KILLED, in the store as here; only this machine's own runs
    can be checked, and those of other machines stay RUNNING."""
    from anomaly_vae.tracking import HOST_TAG, PID_TAG, PROCESS_TAG, end_run_of_gone_process

    status = runs["status"].copy()
    keys = (HOST_TAG, PID_TAG, PROCESS_TAG)
    if not all(f"tags.{key}" in runs.columns for key in keys):
        return status
    for index, run in runs[status == "RUNNING"].iterrows():
        tags = {key: run[f"tags.{key}"] for key in keys if isinstance(run[f"tags.{key}"], str)}
        if end_run_of_gone_process(run["run_id"], tags):
            status[index] = "KILLED"
    return status


def _model_versions(runs: pd.DataFrame) -> pd.Series:
    """The version each run registered (training, calibration), else the one it read
    (evaluation): without it, which run made or judged which model took `mlflow ui`."""
    versions = pd.Series(None, index=runs.index, dtype=object)
    for tag in ("tags.model_version", "tags.registered_model_version"):
        if tag in runs.columns:
            versions = runs[tag].where(runs[tag].notna(), versions)
    return versions


def format_runs(table: pd.DataFrame, width: int | None = None) -> str:
    """The table as text, one line a run; within `width` characters, its columns wrapped in
    blocks, each led by the run ids. Training, evaluation and calibration runs together fill
    up to 16 metric columns: a line of 350 characters or more, which a terminal broke
    mid-column."""
    if table.empty:
        return "no runs yet"
    shown = {"na_rep": "-", "float_format": "{:.4g}".format}
    if width is None:
        return table.to_string(index=False, **shown)
    return table.set_index("run_id").to_string(line_width=width, **shown)
