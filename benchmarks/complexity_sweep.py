"""Image AUROC against `image.complexity_weight`, from one trained model per case.

    python -m benchmarks.complexity_sweep mnist [--digits 8 2] [--set training.epochs=5]
    python -m benchmarks.complexity_sweep magnetic_tile

Each case trains once through the real pipeline (as `benchmarks.images` does), then scores its
test images once: the weight only shifts each image's score by weight * ln 2 * its
`compressed_bits`, so every weight is judged on the same model and the comparison is paired.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile

import numpy as np

from benchmarks.images import cases

WEIGHTS = (0.0, 0.25, 0.5, 1.0)


def sweep_case(config_path: str, overrides: list[str], test: str, held_out: bool) -> list[float]:
    """Test AUROC at each of `WEIGHTS` for one trained model."""
    import torch
    from sklearn.metrics import roc_auc_score

    from anomaly_vae.config import load_config
    from anomaly_vae.scoring import compressed_bits
    from pipelines.score import load_model
    from pipelines.train import train

    torch.set_num_threads(1)
    tracking = f"sqlite:///{tempfile.mkdtemp(prefix='bench-complexity-')}/mlflow.db"
    config = load_config(config_path, [*overrides, "image.complexity_weight=0"])
    detector = load_model(train(config, tracking, echo=lambda line: None), tracking)
    items = detector.list_images(test).items
    if held_out:
        items = detector.held_out_only(items)
    scores, bits, labels = [], [], []
    for batch, pixels, batch_scores in detector.scored_batches(items):
        scores.append(batch_scores.score)
        bits.append(compressed_bits(pixels))
        labels += [item.label for item in batch]
    score, credit = np.concatenate(scores), math.log(2) * np.concatenate(bits)
    return [float(roc_auc_score(labels, score - weight * credit)) for weight in WEIGHTS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "magnetic_tile"])
    parser.add_argument("--digits", type=int, nargs="*", default=list(range(10)))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    header = " | ".join(f"weight {w}" for w in WEIGHTS)
    lines = [f"| case | {header} |", "|---" * (len(WEIGHTS) + 1) + "|"]
    rows = []
    for case, config_path, overrides, test, held_out in cases(
        args.dataset, args.digits, args.overrides
    ):
        aurocs = sweep_case(config_path, overrides, str(test), held_out)
        print(f"{case}: " + ", ".join(f"{a:.4f}" for a in aurocs), file=sys.stderr, flush=True)
        rows.append(aurocs)
        lines.append(f"| {case} | " + " | ".join(f"{a:.4f}" for a in aurocs) + " |")
    if len(rows) > 1:
        lines.append("| mean | " + " | ".join(f"{a:.4f}" for a in np.mean(rows, axis=0)) + " |")
    print(f"$ python -m benchmarks.complexity_sweep {' '.join(sys.argv[1:])}\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
