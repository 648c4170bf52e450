"""The README's first command: train, score and evaluate on data that ships with scikit-learn.

Benign tumours are the normal class and malignant ones the anomalies. Half the malignant rows
go with 70% of the benign ones into the training file (the anomalies only calibrate the
threshold), the rest form a labelled test file. The image demo does the same with
scikit-learn's 8x8 digits written as PNG folders: zeros are the normal `good/` images, every
other digit an anomaly. Each step runs the real command line.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

OUTPUT = Path("demo_output")
CONFIG = "configs/breast_cancer.yaml"
DIGITS_CONFIG = "configs/digits.yaml"


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
    train_path, test_path = (
        folder / "breast_cancer_train.parquet",
        folder / "breast_cancer_test.parquet",
    )
    frame.iloc[train_rows].to_parquet(train_path, index=False)
    frame.iloc[test_rows].to_parquet(test_path, index=False)
    return train_path, test_path


def write_digits(folder: Path, seed: int = 0, anomalies_per_digit: int = 20) -> tuple[Path, Path]:
    """`train/good/` (70% of the zeros) and a labelled `test/` folder of 8x8 digit PNGs.

    `test/good/` holds the other zeros, `test/digit_<d>/` a few of each other digit.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    zeros = rng.permutation(np.flatnonzero(digits.target == 0))
    n_train = int(0.7 * len(zeros))
    groups = {folder / "train" / "good": zeros[:n_train], folder / "test" / "good": zeros[n_train:]}
    for digit in range(1, 10):
        rows = rng.permutation(np.flatnonzero(digits.target == digit))[:anomalies_per_digit]
        groups[folder / "test" / f"digit_{digit}"] = rows
    for target, rows in groups.items():
        target.mkdir(parents=True, exist_ok=True)
        for row in rows:
            pixels = (digits.images[row] * (255 / 16)).round().astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(target / f"{row:04d}.png")
    return folder / "train", folder / "test"


def run(*args: str) -> str:
    print("$ anomaly-vae " + " ".join(args), flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], stdout=subprocess.PIPE, text=True
    )
    print(result.stdout, end="", flush=True)
    if result.returncode != 0:
        # The command has said why in one line on stderr; a CalledProcessError traceback
        # of the demo's own followed it.
        raise SystemExit(result.returncode)
    return result.stdout


def main() -> None:
    _, test_path = write_breast_cancer(OUTPUT)
    model_uri = run("train", CONFIG).strip().splitlines()[-1]
    scored = OUTPUT / "breast_cancer_scored.parquet"
    run("score", model_uri, str(test_path), "-o", str(scored), "--allow-extra-columns")
    print(
        pd.read_parquet(scored).sort_values("score", ascending=False).head(5).to_string(index=False)
    )
    run("evaluate", model_uri, str(test_path))
    images_demo()
    print("\n" + browse_hint(os.environ.get("MLFLOW_TRACKING_URI")))


def browse_hint(tracking_uri: str | None) -> str:
    """Where to browse the demo's runs: the store its commands used, which
    MLFLOW_TRACKING_URI moves (the hint named the default store whatever it was)."""
    from anomaly_vae.tracking import DEFAULT_TRACKING_URI

    uri = tracking_uri or DEFAULT_TRACKING_URI
    if uri.startswith(("http://", "https://")):
        return f"Browse the runs and the registered model: open {uri}"
    return f"Browse the runs and the registered model: mlflow ui --backend-store-uri {uri}"


def images_demo() -> None:
    """Train on `good/` digit images, then score a folder with heatmaps and evaluate it."""
    _, test_dir = write_digits(OUTPUT / "digits")
    model_uri = run("train", DIGITS_CONFIG).strip().splitlines()[-1]
    scored, maps = OUTPUT / "digits_scored.csv", OUTPUT / "digit_maps"
    shutil.rmtree(maps, ignore_errors=True)  # --maps wants a new folder; the demo may rerun
    run("score", model_uri, str(test_dir), "-o", str(scored), "--maps", str(maps))
    print(pd.read_csv(scored).sort_values("score", ascending=False).head(5).to_string(index=False))
    run("evaluate", model_uri, str(test_dir), "--label-from", "folder")


if __name__ == "__main__":
    main()
