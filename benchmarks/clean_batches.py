"""How much `estimated-f1` flags on batches that hold no anomaly at all.

    python -m benchmarks.clean_batches                 # 300 batches of each size
    python -m benchmarks.clean_batches --batches 100

A clean day is the batch a label-free threshold most often sees, and every row it flags there
is a false alarm. The reference is 5,000 normal scores and each batch is drawn from the same
distribution (seeded), so any row flagged is noise read as anomalies.
"""

from __future__ import annotations

import argparse

import numpy as np

from anomaly_vae.calibration import NormalScores, choose_threshold

REFERENCE_ROWS = 5_000
BATCH_ROWS = (200, 1_000, 5_000)


def flagged_shares(batch_rows: int, batches: int) -> np.ndarray:
    """The share of each clean batch's rows that its own estimated-f1 threshold flags."""
    normal = NormalScores.from_scores(np.random.default_rng(0).normal(0, 1, REFERENCE_ROWS))
    shares = np.empty(batches)
    for seed in range(batches):
        batch = np.random.default_rng(seed + 1).normal(0, 1, batch_rows)
        threshold = choose_threshold(batch, None, "estimated-f1", normal=normal).value
        shares[seed] = np.mean(batch >= threshold)
    return shares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=300)
    batches = parser.parse_args().batches
    print(f"$ python -m benchmarks.clean_batches --batches {batches}")
    print("| batch rows | mean share flagged | batches flagging > 5% |")
    print("| --- | --- | --- |")
    for rows in BATCH_ROWS:
        shares = flagged_shares(rows, batches)
        print(f"| {rows:,} | {shares.mean():.1%} | {np.mean(shares > 0.05):.1%} |")


if __name__ == "__main__":
    main()
