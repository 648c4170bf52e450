"""Time the encoding of categorical columns, the part of scoring that runs per value in Python.

    python -m benchmarks.categorical_codes                # 1,000,000 rows
    python -m benchmarks.categorical_codes --rows 100000

A zero-padded text column of 300 codes (a zip code read from a CSV) and a float column of
100 codes (a merchant category code), beside one number; the preprocessor is fitted on the
first 50,000 rows and `TabularPreprocessor.transform` timed on all of them, best of three.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from anomaly_vae.data.preprocessing import TabularPreprocessor

FIT_ROWS = 50_000
REPEATS = 3


def coded_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    zips = np.array([f"{i:05d}" for i in range(300)])
    return pd.DataFrame(
        {
            "zip": zips[rng.integers(0, len(zips), rows)],
            "mcc": rng.integers(1000, 1100, rows).astype(float),
            "amount": rng.lognormal(size=rows),
        }
    )


def best_transform_seconds(rows: int) -> float:
    frame = coded_rows(rows)
    features = list(frame.columns)
    preprocessor = TabularPreprocessor.fit(
        frame.iloc[:FIT_ROWS], features, categorical=["zip", "mcc"]
    )
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        preprocessor.transform(frame, "benchmark")
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    rows = parser.parse_args().rows
    seconds = best_transform_seconds(rows)
    print(f"$ python -m benchmarks.categorical_codes --rows {rows}")
    print(
        f"transform of {rows:,} rows with two categorical columns: {seconds:.3f} s "
        f"(best of {REPEATS}), {rows / seconds:,.0f} rows/s"
    )


if __name__ == "__main__":
    main()
