"""The evaluation protocol every comparison uses, and the tables it runs on.

"Train on normal" (../shared/data/README.md): with a fixed seed, 70% of the normal rows train;
the other 30% of normals plus every anomaly are the test set. Anything fitted (scalers,
thresholds) sees training rows only. Every detector in one run gets the same split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

TRAIN_FRACTION = 0.7
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ADBENCH_TABLES = (
    "6_cardio",
    "38_thyroid",
    "32_shuttle",
    "30_satellite",
    "24_mnist",
    "16_http",
    "34_smtp",
    "5_campaign",
)
CREDITCARD = "creditcard"


@dataclass
class Table:
    name: str
    features: pd.DataFrame
    labels: np.ndarray  # True for anomalies


@dataclass
class Split:
    train: np.ndarray  # row indices, normals only
    test: np.ndarray  # the remaining normals and every anomaly
    train_rows_available: int  # before any cap on training rows


def protocol_split(labels: np.ndarray, seed: int, max_train_rows: int | None = None) -> Split:
    """Row indices of the protocol's train and test sets.

    `max_train_rows` keeps the first rows of the seeded permutation, so a cap subsamples the
    training normals at random without changing the test set.
    """
    labels = np.asarray(labels, dtype=bool)
    normal = np.random.default_rng(seed).permutation(np.flatnonzero(~labels))
    n_train = int(round(TRAIN_FRACTION * len(normal)))
    train = normal[:n_train]
    test = np.sort(np.concatenate([normal[n_train:], np.flatnonzero(labels)]))
    return Split(train=train[:max_train_rows], test=test, train_rows_available=n_train)


def load_table(name: str, data_dir: Path = SHARED_DATA) -> Table:
    """An ADBench `.npz` by stem, or the credit-card sample, as features and labels."""
    if name == CREDITCARD:
        frame = pd.read_parquet(data_dir / "tabular" / "creditcard_sample.parquet")
        labels = frame["label"].to_numpy() != 0
        features = frame.drop(
            columns=[c for c in frame.columns if c.startswith("Unnamed")] + ["label"]
        )
        return Table(name, features.reset_index(drop=True), labels)
    with np.load(data_dir / "adbench" / f"{name}.npz", allow_pickle=False) as npz:
        x, y = npz["X"], npz["y"]
    features = pd.DataFrame(x, columns=[f"x{j}" for j in range(x.shape[1])])
    return Table(name, features, y != 0)


def available_tables(data_dir: Path = SHARED_DATA) -> list[str]:
    """The benchmark's nine tables, in report order."""
    return [*ADBENCH_TABLES, CREDITCARD] if data_dir.is_dir() else []


def write_split_files(source: Path, label: str, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """The protocol's train and test rows of a labelled table, as Parquet files for the CLI.

    Every column is kept (ids and the label too), so `anomaly-vae train` sees what a user's
    file holds and `evaluate` can read the labels back from the test file.
    """
    frame = pd.read_parquet(source)
    split = protocol_split(frame[label].to_numpy() != 0, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.parquet", out / "test.parquet"
    frame.iloc[split.train].to_parquet(paths[0], index=False)
    frame.iloc[split.test].to_parquet(paths[1], index=False)
    return paths


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=write_split_files.__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a labelled Parquet table")
    parser.add_argument("--label", required=True, help="the label column (non-zero = anomaly)")
    parser.add_argument("--out", type=Path, required=True, help="folder for train/test.parquet")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for path in write_split_files(args.source, args.label, args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
