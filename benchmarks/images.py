"""Image benchmarks through the real pipelines, beside the tabular peers on pixels.

    python -m benchmarks.images mnist [--digits 0 1 ...] [--set training.epochs=5]
    python -m benchmarks.images magnetic_tile [--seeds 3] [--set ...] [--no-peers | --no-ours]

MNIST: `configs/mnist.yaml` trains on one digit's training images and is evaluated on all
10,000 t10k images (other digits anomalous). Magnetic tiles: `configs/magnetic_tile.yaml`
trains on the MT_Free images its `image.holdout_fraction` does not hold out; the evaluation
set is the held-out MT_Free images plus every defect image (`evaluate --held-out-only`), with
pixel masks. Which tiles are held out follows `training.seed`, so the tiles run once per split
seed, as the tabular benchmark does: with a few hundred test images one split moves image AUROC
by several hundredths (seeds 0-2: 0.845, 0.835, 0.883). Our model trains on `--jobs` cases at a
time, each in its own process and throw-away MLflow store; the table and the command are
printed.

The peers of the tabular benchmark (IsolationForest, PyOD VAE, PyOD ECOD) run on the same
training and test images, flattened after downscaling (MNIST 14 x 14, tiles 32 x 32):
`benchmarks.image_peers`. Their seconds are fitting (with scaling) and scoring, not reading.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks.detectors import OURS, peers_available

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "images"


def run_case(config_path: str, overrides: list[str], test_path: Path, held_out: bool) -> dict:
    """Train, then score and evaluate the test set; metrics and wall times."""
    from anomaly_vae.config import load_config
    from pipelines.evaluate import evaluate_file
    from pipelines.score import score_file
    from pipelines.train import train

    config = load_config(config_path, overrides)
    # One store per case (cases may run in parallel processes), removed with its models after.
    with tempfile.TemporaryDirectory(prefix="bench-images-") as tmp:
        tracking = f"sqlite:///{tmp}/mlflow.db"
        started = time.perf_counter()
        uri = train(config, tracking, echo=lambda line: _echo("  " + line))
        train_seconds = time.perf_counter() - started
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


def cases(dataset: str, digits: list[int], overrides: list[str], seeds: int = 1) -> list[tuple]:
    """(case name, config path, overrides, test path, held-out only) per case; the tiles once
    per split seed when `seeds` > 1."""
    if dataset == "magnetic_tile":
        test = DATA / "magnetic_tile"
        if seeds == 1:
            return [("magnetic tile", "configs/magnetic_tile.yaml", overrides, test, True)]
        return [
            (
                f"magnetic tile, seed {seed}",
                "configs/magnetic_tile.yaml",
                [*overrides, f"training.seed={seed}"],
                test,
                True,
            )
            for seed in range(seeds)
        ]
    test = DATA / "mnist" / "t10k-images-idx3-ubyte.gz"
    return [
        (
            f"digit {digit}",
            "configs/mnist.yaml",
            [*overrides, f"image.normal_digits=[{digit}]", f"name=mnist-{digit}"],
            test,
            False,
        )
        for digit in digits
    ]


def peer_rows(
    dataset: str,
    config_path: str,
    overrides: list[str],
    test: Path,
    held_out: bool,
    peers: Sequence[str],
) -> list[tuple[str, dict]]:
    """The peers' (detector, metrics) on the case's flattened, downscaled pixels."""
    from anomaly_vae.config import load_config
    from benchmarks.image_peers import PEER_SIZES, pixel_split, run_peers

    config = load_config(config_path, overrides)
    split = pixel_split(config, str(test), PEER_SIZES[dataset], held_out, echo=_echo)
    _echo(
        f"peers: {len(split.train):,} training, {len(split.test):,} test images of "
        f"{split.train.shape[1]:,} pixels, read in {split.read_seconds:.1f} s"
    )
    return run_peers(split, peers, config.training.seed)


def run_ours(specs: list[tuple], jobs: int, threads: int) -> list[dict]:
    """`run_case` on each (config path, overrides, test path, held-out only), `jobs` at a time
    in separate processes with `threads` torch threads each.

    The cases left over after the full rounds (the third of three tiles seeds on two jobs) run
    after them with the rounds' threads shared out, instead of leaving cores idle."""
    if jobs == 1:
        return [run_case(*spec) for spec in specs]
    rounds = len(specs) - len(specs) % jobs
    return _in_processes(specs[:rounds], jobs, threads) + _in_processes(
        specs[rounds:], len(specs) - rounds, jobs * threads // max(1, len(specs) - rounds)
    )


def _in_processes(specs: list[tuple], jobs: int, threads: int) -> list[dict]:
    if not specs:
        return []
    # spawn, not fork: the parent has torch loaded, and forked torch thread pools can hang.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, context, _set_torch_threads, (threads,)) as pool:
        return list(pool.map(run_case, *zip(*specs, strict=True)))


def _set_torch_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def results_table(rows: list[tuple[str, str, dict]]) -> list[str]:
    """The Markdown table, then each detector's mean AUROC (and pixel AUROC) over the cases."""
    columns = ["auroc", "average_precision", "pixel_auroc", "train_s", "score_s", "images_scored"]
    lines = ["| case | detector | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for case, detector, metrics in rows:
        cells = [_cell(metrics.get(c), seconds=c.endswith("_s")) for c in columns]
        name = f"**{detector}**" if detector == OURS else detector
        lines.append(f"| {case} | {name} | " + " | ".join(cells) + " |")
    detectors = list(dict.fromkeys(detector for _, detector, _ in rows))
    cases = len({case for case, _, _ in rows})
    if cases > 1:
        lines.append("")
        for detector in detectors:
            for metric, label in (("auroc", "AUROC"), ("pixel_auroc", "pixel AUROC")):
                values = [
                    m[metric] for _, d, m in rows if d == detector and m.get(metric) is not None
                ]
                if values:
                    lines.append(
                        f"mean {label} over {len(values)} cases, {detector}: "
                        f"{np.mean(values):.4f} (lowest {min(values):.4f}, highest {max(values):.4f})"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", choices=["mnist", "magnetic_tile"])
    parser.add_argument("--digits", type=int, nargs="*", default=list(range(10)))
    parser.add_argument(
        "--seeds", type=int, default=3, help="magnetic tiles: split seeds, one model each"
    )
    parser.add_argument(
        "--jobs", type=int, default=2, help="cases our model trains on at a time (processes)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--no-peers", action="store_true", help="run only our model")
    parser.add_argument(
        "--no-ours", action="store_true", help="run only the peers (our model is not trained)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for our model and PyOD's VAE"
    )
    args = parser.parse_args()
    if args.no_peers and args.no_ours:
        parser.error("--no-peers and --no-ours leave nothing to run")
    import torch

    torch.set_num_threads(args.threads)
    peers = () if args.no_peers else peers_available()
    specs = cases(args.dataset, args.digits, args.overrides, args.seeds)
    ours = [] if args.no_ours else run_ours([spec[1:] for spec in specs], args.jobs, args.threads)
    rows: list[tuple[str, str, dict]] = []
    for i, (case, config_path, overrides, test, held_out) in enumerate(specs):
        case_rows = [(OURS, ours[i])] if ours else []
        if peers:
            case_rows += peer_rows(args.dataset, config_path, overrides, test, held_out, peers)
        for detector, metrics in case_rows:
            _echo(f"{case} {detector}: AUROC {metrics['auroc']:.4f}, {metrics['train_s']:.1f} s")
            rows.append((case, detector, metrics))
    print(f"$ python -m benchmarks.images {shlex.join(sys.argv[1:])}\n")
    print("\n".join(results_table(rows)))


def _echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _cell(value: float | int | None, seconds: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:,}" if isinstance(value, int) else f"{value:.1f}" if seconds else f"{value:.4f}"


if __name__ == "__main__":
    main()
