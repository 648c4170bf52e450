"""The whole suite (`make bench`): tabular, image and scoring-speed benchmarks, one results file.

    python -m benchmarks                       # everything, results in benchmarks/results/<date>.md
    python -m benchmarks --seeds 1 --rows 1000000 --no-images   # a reduced run

The image benchmarks (`benchmarks.images`) run as separate processes and their tables are
copied into the results file as they print them.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from benchmarks import scoring_speed, tabular
from benchmarks.report import write_results

IMAGE_DATASETS = ("mnist", "magnetic_tile")


def image_section(no_peers: bool = False) -> str:
    """The image benchmarks' own printed tables, under one heading."""
    if no_peers:
        parts = ["## Images (our model only)", ""]
    else:
        parts = [
            "## Images: our model and the tabular peers on pixels",
            "",
            "IsolationForest, PyOD VAE and PyOD ECOD (as in the tabular section) see the same "
            "training and test images as our model, downscaled (MNIST 14 x 14, tiles 32 x 32 "
            "grayscale) and flattened into one feature per pixel; they make no pixel maps. Our "
            "model holds a fifth of the training images out for validation, the peers train on "
            "all of them. Our seconds include reading the images and logging to MLflow, the "
            "peers' only scaling, fitting and scoring. The tiles run on three split seeds (the "
            "held-out tiles follow the seed); the lines under each table give the means.",
            "",
        ]
    for dataset in IMAGE_DATASETS:
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks.images", dataset, *(["--no-peers"] * no_peers)],
            capture_output=True,
            text=True,
        )
        parts += [f"### {dataset}", ""]
        parts.append(done.stdout if done.returncode == 0 else f"failed: {done.stderr[-500:]}")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    tabular.add_arguments(parser)
    scoring_speed.add_arguments(parser)
    parser.add_argument("--no-images", action="store_true", help="skip the image benchmarks")
    args = parser.parse_args()
    runs = [lambda: tabular.run_from_args(args), lambda: scoring_speed.run_from_args(args)]
    if not args.no_images:
        runs.insert(1, lambda: image_section(args.no_peers))
    sections: list[str] = []
    for run in runs:
        sections.append(run())
        print(sections[-1], flush=True)
        # Rewritten after each part, so an hour's results survive a later failure.
        path = write_results(sections)
    print(f"written to {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
