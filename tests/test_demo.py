"""The demo's closing hint."""

from pipelines.demo import browse_hint


def test_the_demo_points_mlflow_ui_at_the_store_its_runs_went_to() -> None:
    """With MLFLOW_TRACKING_URI set (as the README allows), the demo's runs went there, but
    its last line still sent the reader to `sqlite:///mlruns/mlflow.db`."""
    ui = "Browse the runs and the registered model: mlflow ui --backend-store-uri "
    assert browse_hint(None) == ui + "sqlite:///mlruns/mlflow.db"
    assert browse_hint("sqlite:////tmp/runs/mlflow.db") == ui + "sqlite:////tmp/runs/mlflow.db"
    assert browse_hint("http://mlflow.internal:5000") == (
        "Browse the runs and the registered model: open http://mlflow.internal:5000"
    )
