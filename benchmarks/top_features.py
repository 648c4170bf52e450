"""How often `top_features` names the column that was made anomalous, on the mixed-type bank data.

    python -m benchmarks.top_features

Trains the defaults on 70% of the bank table's normal rows (`y` = "no"), then corrupts one
column, drawn at random, of each remaining normal row: a numeric value moved 8 interquartile
ranges above its training median, or a category replaced by the training rows' rarest one.
Prints how often that column is named first, and among the three, by the committed ranking
(terms above each column's typical value) and by the raw terms (as models saved before it).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.protocol import SHARED_DATA, TRAIN_FRACTION

BANK = SHARED_DATA / "tabular" / "bank_marketing.parquet"
SHIFT_IQRS = 8


def corrupted(rows: pd.DataFrame, train: pd.DataFrame, rng: np.random.Generator) -> list[str]:
    """Corrupt one random column of each row of `rows` in place; the columns corrupted."""
    columns = list(rows.columns)
    which = [columns[i] for i in rng.integers(len(columns), size=len(rows))]
    for i, name in enumerate(which):
        if pd.api.types.is_numeric_dtype(train[name]):
            q1, median, q3 = train[name].quantile([0.25, 0.5, 0.75])
            spread = (q3 - q1) or train[name].std() or 1.0
            rows.loc[i, name] = type(rows.loc[i, name])(round(median + SHIFT_IQRS * spread))
        else:
            by_count = train[name].value_counts().index
            rows.loc[i, name] = next(v for v in reversed(by_count) if v != rows.loc[i, name])
    return which


def hit_rates(detector, rows: pd.DataFrame, which: list[str]) -> tuple[float, float]:  # noqa: ANN001
    from anomaly_vae.detector import without_direction

    named = [
        [without_direction(name) for name in joined.split(",")]
        for joined in detector.score_frame(rows)["top_features"]
    ]
    first = np.mean([w == top[0] for w, top in zip(which, named, strict=True)])
    three = np.mean([w in top for w, top in zip(which, named, strict=True)])
    return float(first), float(three)


def main() -> None:
    from anomaly_vae.config import parse_config
    from pipelines.score import load_model
    from pipelines.train import train

    if not BANK.is_file():
        raise SystemExit(f"needs {BANK}, the shared data, which is absent on this machine")
    frame = pd.read_parquet(BANK)
    normal = frame[frame["y"] == "no"].drop(columns="y").reset_index(drop=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(normal))
    cut = int(TRAIN_FRACTION * len(normal))
    train_rows = normal.iloc[order[:cut]].reset_index(drop=True)
    test_rows = normal.iloc[order[cut:]].reset_index(drop=True)
    with tempfile.TemporaryDirectory(prefix="anomaly-vae-top-features-") as tmp:
        folder = Path(tmp)
        train_rows.to_parquet(folder / "train.parquet")
        tracking = f"sqlite:///{folder / 'mlflow.db'}"
        config = parse_config({"data": {"path": str(folder / "train.parquet")}, "name": "bank"})
        detector = load_model(train(config, tracking, echo=lambda line: None), tracking)
    which = corrupted(test_rows, train_rows, rng)
    ranked = hit_rates(detector, test_rows, which)
    detector.typical_terms = None
    raw = hit_rates(detector, test_rows, which)
    print(f"bank data, {len(test_rows)} normal test rows, one column of each corrupted\n")
    print("| ranking | corrupted column named first | among the top three |")
    print("| --- | --- | --- |")
    print(f"| above each column's typical term (the default) | {ranked[0]:.1%} | {ranked[1]:.1%} |")
    print(f"| raw terms (models saved before it) | {raw[0]:.1%} | {raw[1]:.1%} |")


if __name__ == "__main__":
    main()
