"""The README's first command: train, score and evaluate on data that ships with scikit-learn.

Benign tumours are the normal class and malignant ones the anomalies. Half the malignant rows
go with 70% of the benign ones into the training file (the anomalies only calibrate the
threshold), the rest form a labelled test file. Each step runs the real command line.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUTPUT = Path("demo_output")
CONFIG = "configs/breast_cancer.yaml"


def write_breast_cancer(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Train and test Parquet files from scikit-learn's breast-cancer table."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer(as_frame=True)
    frame = data.data.copy()
    frame.insert(0, "id", np.arange(len(frame)))
    frame["label"] = (data.target == 0).astype(int)  # sklearn: 0 = malignant
    rng = np.random.default_rng(seed)
    normal = rng.permutation(np.flatnonzero(frame["label"] == 0))
    anomalous = rng.permutation(np.flatnonzero(frame["label"] == 1))
    n_train, n_anomalous = int(0.7 * len(normal)), len(anomalous) // 2
    train_rows = np.concatenate([normal[:n_train], anomalous[:n_anomalous]])
    test_rows = np.concatenate([normal[n_train:], anomalous[n_anomalous:]])
    folder.mkdir(parents=True, exist_ok=True)
    train_path, test_path = folder / "breast_cancer_train.parquet", folder / "breast_cancer_test.parquet"
    frame.iloc[train_rows].to_parquet(train_path, index=False)
    frame.iloc[test_rows].to_parquet(test_path, index=False)
    return train_path, test_path


def run(*args: str) -> str:
    print("$ anomaly-vae " + " ".join(args), flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], check=True, stdout=subprocess.PIPE, text=True
    )
    print(result.stdout, end="", flush=True)
    return result.stdout


def main() -> None:
    _, test_path = write_breast_cancer(OUTPUT)
    model_uri = run("train", CONFIG).strip().splitlines()[-1]
    scored = OUTPUT / "breast_cancer_scored.parquet"
    run("score", model_uri, str(test_path), "-o", str(scored), "--allow-extra-columns")
    print(pd.read_parquet(scored).sort_values("score", ascending=False).head(5).to_string(index=False))
    run("evaluate", model_uri, str(test_path))
    print("\nBrowse the runs and the registered model: mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db")


if __name__ == "__main__":
    main()
