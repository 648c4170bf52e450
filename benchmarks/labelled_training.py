"""The threshold `train` chooses with labelled anomalies, against held-out rows of the same data.

    python -m benchmarks.labelled_training

A user who trains on a file with a label column gets a threshold by F1 on the validation set,
which holds every labelled anomaly but only a fifth of the normal rows. Each table is cut, rows
shuffled with seed 0, into 70% to train on (labels included) and 30% to evaluate on; the table
prints what `train` reported for its threshold beside what `evaluate` measures on the 30%:
the closer the two, the more a user can trust the number `train` gave.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.protocol import SHARED_DATA, TRAIN_FRACTION

# (file, data section of the config): the anomalies' label and the columns to set aside.
TABLES = {
    "bank_marketing": ({"label": "y", "anomaly_value": "yes", "id_columns": ["Unnamed: 0"]}, {}),
    "creditcard_sample": (
        {"label": "label", "id_columns": ["Unnamed: 0"], "drop": ["Unnamed: 0.1"]},
        {"batch_size": 512},
    ),
}
REPORTED = ("alert_rate", "precision", "recall", "f1")


def measure(name: str, folder: Path) -> dict[str, dict[str, float]]:
    """What `train` reported for its threshold and what `evaluate` found on the held-out rows."""
    from anomaly_vae.config import parse_config
    from pipelines.evaluate import evaluate_file
    from pipelines.score import load_model
    from pipelines.train import train

    data, training = TABLES[name]
    frame = pd.read_parquet(SHARED_DATA / "tabular" / f"{name}.parquet")
    order = np.random.default_rng(0).permutation(len(frame))
    cut = int(TRAIN_FRACTION * len(frame))
    paths = folder / f"{name}_train.parquet", folder / f"{name}_test.parquet"
    frame.iloc[order[:cut]].to_parquet(paths[0])
    frame.iloc[order[cut:]].to_parquet(paths[1])
    tracking = f"sqlite:///{folder / 'mlflow.db'}"
    config = parse_config(
        {"data": {"path": str(paths[0]), **data}, "training": training, "name": name}
    )
    model_uri = train(config, tracking, echo=lambda line: None)
    reported = load_model(model_uri, tracking).threshold.metrics
    measured = evaluate_file(model_uri, paths[1], label=data["label"], tracking_uri=tracking)
    return {"train": reported, "held out": measured.metrics}


def main() -> None:
    missing = [
        name for name in TABLES if not (SHARED_DATA / "tabular" / f"{name}.parquet").is_file()
    ]
    if missing:
        raise SystemExit(f"needs {SHARED_DATA}/tabular ({', '.join(missing)}), absent here")
    print("| table | measured on | " + " | ".join(REPORTED) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in REPORTED) + " |")
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-labelled-") as tmp:
        for name in TABLES:
            for where, metrics in measure(name, Path(tmp)).items():
                cells = " | ".join(f"{metrics[key]:.3f}" for key in REPORTED)
                print(f"| {name} | {where} | {cells} |")


if __name__ == "__main__":
    main()
