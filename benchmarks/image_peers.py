"""The tabular peers on images: flattened, downscaled pixels, to show what the ConvVAE buys.

    from benchmarks.image_peers import pixel_split, run_peers
    split = pixel_split(config, test_path, size=14, held_out_only=False)
    rows = run_peers(split, ("IsolationForest", "PyOD ECOD"), seed=0)

Each peer sees the images our model's config trains and is evaluated on, read by the same
code (`anomaly_vae.data.images`, `pipelines.train_images.split_images`): the training images
are the normal ones `split_images` does not hold out (our model spends a fifth of them on
validation, as `run_ours` does for tables; the peers have no validation step, so they get all
of them); the test images are `test_path`'s, with `held_out_only` keeping the anomalies and
only the normal images `image.holdout_fraction` kept out of training, as
`evaluate --held-out-only` does. Pixels are resized to `size` x `size` (antialiased bilinear)
and flattened into one feature per pixel and channel; `benchmarks.detectors.run_peer` then
scales them on the training images and fits the peer. Peers have no pixel maps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anomaly_vae.config import Config
from benchmarks.detectors import run_peer, time_scoring
from benchmarks.report import outcome_metrics

# Downscaled so the peers' feature counts stay tabular: 196 for MNIST, 1,024 for the tiles.
PEER_SIZES = {"mnist": 14, "magnetic_tile": 32}


@dataclass
class PixelSplit:
    train: np.ndarray  # (images, size * size * channels), the normal training images
    test: np.ndarray  # (images, size * size * channels)
    labels: np.ndarray  # test labels, True for anomalies
    read_seconds: float  # listing, reading and resizing both sets


def pixel_split(
    config: Config,
    test_path: str,
    size: int,
    held_out_only: bool,
    echo: Callable[[str], None] = print,
) -> PixelSplit:
    """Flattened `size` x `size` pixels of the images `config` trains on and of the test set."""
    from anomaly_vae.data import images
    from anomaly_vae.errors import InputError
    from pipelines.train_images import split_images

    started = time.perf_counter()
    split = split_images(config, echo)
    normal_validation = [
        item
        for item, anomalous in zip(split.validation, split.validation_labels, strict=True)
        if not anomalous
    ]
    train_items = [*split.train, *normal_validation]
    test_items = images.list_images(test_path, config.image).items
    if any(item.label is None for item in test_items):
        raise InputError(f"{test_path}: unlabelled test images")
    if held_out_only:
        fraction, seed = config.image.holdout_fraction, config.training.seed
        test_items = images.held_out_only(test_items, fraction, seed)
    channels = config.image.channels
    train = images.read_images(train_items, size, channels).reshape(len(train_items), -1)
    test = images.read_images(test_items, size, channels).reshape(len(test_items), -1)
    labels = np.array([bool(item.label) for item in test_items])
    return PixelSplit(train, test, labels, time.perf_counter() - started)


def run_peers(split: PixelSplit, peers: Sequence[str], seed: int) -> list[tuple[str, dict]]:
    """(peer, metrics) per peer, with the keys of our model's rows in `benchmarks.images`."""
    train, test = pd.DataFrame(split.train), pd.DataFrame(split.test)
    outcomes = {name: run_peer(name, train, test, seed) for name in peers}
    time_scoring(outcomes.values())
    rows = []
    for name, outcome in outcomes.items():
        metrics = outcome_metrics(split.labels, outcome)
        rows.append(
            (
                name,
                {
                    "auroc": metrics["auroc"],
                    "average_precision": metrics["ap"],
                    "pixel_auroc": None,
                    "train_s": outcome.fit_seconds,
                    "score_s": outcome.score_seconds,
                    "images_scored": len(split.labels),
                },
            )
        )
    return rows
