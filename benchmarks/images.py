"""Image benchmarks through the real pipelines: one-class MNIST per digit, magnetic tiles.

    python -m benchmarks.images mnist [--digits 0 1 ...] [--set training.epochs=5]
    python -m benchmarks.images magnetic_tile [--set ...]

MNIST: `configs/mnist.yaml` trains on one digit's training images and is evaluated on all
10,000 t10k images (other digits anomalous). Magnetic tiles: `configs/magnetic_tile.yaml`
trains on the MT_Free images its `image.holdout_fraction` does not hold out; the evaluation
set is the held-out MT_Free images plus every defect image (`evaluate --held-out-only`), with
pixel masks. Runs go to a throw-away MLflow store; the table and the command are printed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def run_case(
    config_path: str, overrides: list[str], test_path: Path, tracking: str, held_out: bool
) -> dict:
    """Train, then score and evaluate the test set; metrics and wall times."""
    from anomaly_vae.config import load_config
    from pipelines.evaluate import evaluate_file
    from pipelines.score import score_file
    from pipelines.train import train

    config = load_config(config_path, overrides)
    started = time.perf_counter()
    uri = train(config, tracking, echo=lambda line: print("  " + line, file=sys.stderr))
    train_seconds = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        summary = score_file(uri, test_path, Path(tmp) / "scores.csv", tracking_uri=tracking)
        score_seconds = time.perf_counter() - started
    evaluation = evaluate_file(uri, test_path, tracking_uri=tracking, held_out_only=held_out)
    return {
        **evaluation.metrics,
        "train_s": train_seconds,
        "score_s": score_seconds,
        "images_scored": summary.rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "magnetic_tile"])
    parser.add_argument("--digits", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    tracking = f"sqlite:///{tempfile.mkdtemp(prefix='bench-images-')}/mlflow.db"
    rows = []
    if args.dataset == "mnist":
        test = DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
        for digit in args.digits:
            overrides = [*args.overrides, f"image.normal_digits=[{digit}]", f"name=mnist-{digit}"]
            rows.append(
                (f"digit {digit}", run_case("configs/mnist.yaml", overrides, test, tracking, False))
            )
            print(f"digit {digit}: AUROC {rows[-1][1]['auroc']:.4f}", file=sys.stderr, flush=True)
    else:
        test = DATA / "magnetic_tile"
        rows.append(
            (
                "magnetic tile",
                run_case("configs/magnetic_tile.yaml", args.overrides, test, tracking, True),
            )
        )
    columns = ["auroc", "average_precision", "pixel_auroc", "train_s", "score_s", "images_scored"]
    print(f"$ python -m benchmarks.images {shlex.join(sys.argv[1:])}\n")
    print("| case | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, metrics in rows:
        cells = [_cell(metrics.get(c), seconds=c.endswith("_s")) for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if len(rows) > 1:
        mean = sum(m["auroc"] for _, m in rows) / len(rows)
        print(f"\nmean AUROC over {len(rows)} cases: {mean:.4f}")


def _cell(value: float | int | None, seconds: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.1f}" if seconds else f"{value:.4f}"


if __name__ == "__main__":
    main()
