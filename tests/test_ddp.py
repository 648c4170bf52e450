"""Training with two CPU processes (Lightning's `ddp` strategy over gloo) through the CLI.

Lightning's `ddp` launcher re-runs the command in a second process, so the CLI runs in a
subprocess here: re-running pytest itself would start the test session again.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import yaml
from conftest import REPO
from sklearn.metrics import roc_auc_score

from anomaly_vae.tracking import configure_tracking

EPOCHS = 4


def test_two_process_training_tracks_once_and_registers_a_working_model(
    breast_cancer_files: tuple[Path, Path], tmp_path: Path, tracking_uri: str
) -> None:
    train_path, test_path = breast_cancer_files
    config = tmp_path / "ddp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data": {"path": str(train_path), "label": "label", "id_columns": ["id"]},
                "training": {
                    "epochs": EPOCHS,
                    "batch_size": 32,
                    "early_stopping_patience": 0,
                    "trainer": {"accelerator": "cpu", "devices": 2, "strategy": "ddp"},
                },
                "mlflow": {"registered_model": "ddp-model"},
            }
        )
    )
    command = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "train",
        str(config),
        "--tracking-uri",
        tracking_uri,
    ]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines() == ["models:/ddp-model@champion"]  # rank 0 only
    configure_tracking(tracking_uri)  # tracking and registry: earlier tests may have set either
    runs = mlflow.search_runs(search_all_experiments=True)
    assert len(runs) == 1  # the second process trained but did not track
    run = runs.iloc[0]
    assert run["metrics.processes"] == 2
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "val_loss")
    assert sorted(m.step for m in history) == list(range(EPOCHS))  # each epoch logged once
    versions = mlflow.MlflowClient().search_model_versions("name='ddp-model'")
    assert len(versions) == 1

    model = mlflow.pyfunc.load_model("models:/ddp-model@champion")
    test = pd.read_parquet(test_path)
    scored = model.predict(test.drop(columns=["label"]))
    assert scored["id"].tolist() == test["id"].tolist()
    assert roc_auc_score(test["label"], scored["score"]) > 0.8
