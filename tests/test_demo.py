"""The demo's steps and closing hint."""

from pathlib import Path

import pytest

from pipelines.demo import browse_hint, run


def test_the_demo_points_mlflow_ui_at_the_store_its_runs_went_to() -> None:
    """With MLFLOW_TRACKING_URI set (as the README allows), the demo's runs went there, but
    its last line still sent the reader to `sqlite:///mlruns/mlflow.db`."""
    ui = "Browse the runs and the registered model: mlflow ui --backend-store-uri "
    assert browse_hint(None) == ui + "sqlite:///mlruns/mlflow.db"
    assert browse_hint("sqlite:////tmp/runs/mlflow.db") == ui + "sqlite:////tmp/runs/mlflow.db"
    assert browse_hint("http://mlflow.internal:5000") == (
        "Browse the runs and the registered model: open http://mlflow.internal:5000"
    )


def test_a_failed_demo_step_ends_with_its_own_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # The command's one-line error was followed by the demo's CalledProcessError traceback.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/missing/mlflow.db")
    with pytest.raises(SystemExit) as info:
        run("runs")
    assert info.value.code == 1
    err = capfd.readouterr().err
    assert "no MLflow tracking store there" in err and "Traceback" not in err
