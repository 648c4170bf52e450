"""Train on images: list -> split -> fit the ConvVAE -> calibrate -> figures, MLflow run, registry.

The image counterpart of `pipelines.train`, with the same rules: anomalous images never reach
training, they join held-out normal images as the validation set the threshold is chosen on
(at most as many anomalies as normals: calibration needs examples, not all of them). Images
named by `image.holdout_fraction` are kept out of both, for `evaluate --held-out-only`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomaly_vae.config import Config
from anomaly_vae.data.images import ImageItem
from anomaly_vae.errors import InputError
from pipelines.tracked_training import (
    FIGURES,
    anomaly_weight,
    calibrate_and_log,
    closing_lines,
    detector_info,
    register_detector,
    split_normals,
    training_run,
)

MIN_NORMAL_IMAGES = 10


@dataclass
class ImageSplit:
    train: list[ImageItem]
    validation: list[ImageItem]
    validation_labels: np.ndarray  # True for anomalies
    anomaly_weight: float  # what each validation anomaly counts for (`anomaly_weight`)
    held_out: int


def split_images(config: Config, echo: Callable[[str], None] = print) -> ImageSplit:
    """Normal images split into training and validation; anomalies go to validation only."""
    from anomaly_vae.data.images import idx_labels_path, is_held_out, is_idx, list_images

    source, image = config.data.path, config.image
    listing = list_images(source, image)
    if note := listing.masks_note():
        echo(note)
    items = listing.labelled(image.labels_csv or None, source)
    if items[0].label is None:
        # Without its labels file an IDX file's images count as normal, every digit whatever
        # image.normal_digits says; that trained and registered without a word.
        labels_file = idx_labels_path(Path(source))
        echo(f"no labels file {labels_file.name} beside {source}: all images count as normal")
    labels = np.array([bool(item.label) for item in items])
    if labels.all() and (image.labels_csv or is_idx(source)):
        # The all-normal fallback is for folders without a normal one: applied to labels the
        # user gave, a digit missing from normal_digits ([9] on digits 0-5) trained on every
        # digit as normal, exit 0.
        given = image.labels_csv or f"image.normal_digits {image.normal_digits}"
        raise InputError(f"{source}: every image is an anomaly by {given}; none to train on")
    if labels.all():
        if empty := normal_folder_without_images(Path(source), image.normal):
            raise InputError(
                f"{empty}: the normal folder holds no images, so every image in {source} is an "
                "anomaly; none to train on"
            )
        _refuse_classes_without_a_normal_one(Path(source), items, image.normal)
        echo(f"no folder named {', '.join(image.normal)} in {source}: all images count as normal")
        labels[:] = False
    held = np.array(
        [is_held_out(item, image.holdout_fraction, config.training.seed) for item in items]
    )
    normal = np.flatnonzero(~labels & ~held)
    if len(normal) < MIN_NORMAL_IMAGES:
        images = "normal image" if len(normal) == 1 else "normal images"
        raise InputError(f"{source}: {len(normal)} {images}; at least {MIN_NORMAL_IMAGES} needed")
    rng = np.random.default_rng(config.training.seed)
    train_rows, val_normal = split_normals(normal, config.training, rng)
    anomalies = rng.permutation(np.flatnonzero(labels))[: len(val_normal)]
    val_rows = np.concatenate([val_normal, anomalies])
    return ImageSplit(
        train=[items[i] for i in train_rows],
        validation=[items[i] for i in val_rows],
        validation_labels=labels[val_rows],
        anomaly_weight=anomaly_weight(labels[val_rows], int((~labels).sum()), int(labels.sum())),
        held_out=int((held & ~labels).sum()),
    )


def _refuse_classes_without_a_normal_one(
    source: Path, items: list[ImageItem], normal: Sequence[str]
) -> None:
    """Refuse images in several folders of which none is named normal: `ok/` beside
    `scratch/` trained on the scratches as normal, said only "all images count as normal",
    and registered the champion. One folder of images (or none) is a set of normals."""
    placed = (Path(item.path).relative_to(source).parts for item in items)
    folders = sorted({parts[0] for parts in placed if len(parts) > 1})  # not source itself
    if len(folders) > 1:
        shown = ", ".join(folders[:5]) + (
            f" and {len(folders) - 5} more" if len(folders) > 5 else ""
        )
        raise InputError(
            f"{source}: images in {len(folders)} folders ({shown}), none named "
            f"{', '.join(normal)}: name the normal one (--set 'image.normal=[{folders[0]}]'), "
            "or train on a folder of normal images alone"
        )


def normal_folder_without_images(source: Path, normal: Sequence[str]) -> Path | None:
    """A folder below `source` named in `normal`, not hidden, when no image lies under one.
    With good/ empty (its images not copied yet) and crack/ full, the all-normal fallback said
    there was no folder named good and trained on the cracks as normal."""
    from anomaly_vae.data.images import is_normal_folder

    for folder in sorted(source.rglob("*")):
        hidden = any(part.startswith(".") for part in folder.relative_to(source).parts)
        if folder.is_dir() and not hidden and is_normal_folder(folder.name, normal):
            return folder
    return None


def train_images(
    config: Config,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = print,
    promote: bool | None = None,
) -> str:
    """Train, calibrate, log and register an image detector, as `pipelines.train.train`."""
    import pandas as pd
    import torch
    from torch.utils.data import TensorDataset

    from anomaly_vae.data.images import read_images
    from anomaly_vae.detector import ImageDetector, build_image_model
    from anomaly_vae.scoring import image_terms, score_images
    from anomaly_vae.training import fit_vae, is_ddp_worker

    started = time.perf_counter()
    # The images first: a folder of CSV parts, or an empty one, is an image source only for
    # want of Parquet files, and a table's settings in its config (model.activation) were
    # refused in its place, for an image model it could never train.
    split = split_images(config, echo)
    config.check_kind("image")
    size, channels = config.image.size, config.image.channels
    torch.manual_seed(config.training.seed)  # the initial weights too: one config, one model
    model = build_image_model(config.image, config.model.model_dump())
    train_pixels = read_images(split.train, size, channels)
    val_pixels = read_images(split.validation, size, channels)
    val_normal = ~split.validation_labels
    train_data: torch.utils.data.Dataset = TensorDataset(torch.from_numpy(train_pixels))
    if config.image.augment:
        train_data = RandomFlips(train_data)
    if config.image.train_noise:
        train_data = CoarseNoise(train_data, config.image.train_noise, config.image.noise_cells)

    def loss_terms(model, batch):  # noqa: ANN001, ANN202 - the LossTerms signature
        # A noisy training batch is (noisy, clean); a validation batch (clean,): validation
        # measures what scoring does, the clean image reconstructed from itself.
        nll, kl = image_terms(model, batch[-1], samples=1, inputs=batch[0])
        return nll.sum((1, 2, 3)), kl

    val_data = TensorDataset(torch.from_numpy(val_pixels[val_normal]))
    if is_ddp_worker():  # as in pipelines.train: rank 0 alone tracks and registers
        fit_vae(model, loss_terms, train_data, val_data, config.training, config.model.beta)
        raise SystemExit(0)
    counts = {
        "images.train": len(split.train),
        "images.validation_normal": int(val_normal.sum()),
        "images.validation_anomaly": int((~val_normal).sum()),
        "images.held_out": split.held_out,
    }
    with training_run(config, tracking_uri, config.data.path, counts, "image", promote) as (
        run,
        promoted,
    ):
        fit_started = time.perf_counter()
        fit = fit_vae(model, loss_terms, train_data, val_data, config.training, config.model.beta)
        fit_seconds = time.perf_counter() - fit_started
        val = score_images(
            model,
            val_pixels,
            config.scoring.samples,
            complexity_weight=config.image.complexity_weight,
        )
        calibration = calibrate_and_log(
            config, val.score, split.validation_labels, fit, fit_seconds, split.anomaly_weight
        )
        log_figures(model, val_pixels, split.validation_labels, config.model.latent)
        detector = ImageDetector(
            model=model,
            image=config.image,
            model_params=config.model.model_dump(),
            threshold=calibration.threshold,
            samples=config.scoring.samples,
            seed=config.training.seed,
            map_scale=float(np.quantile(val.maps[val_normal], 0.999)),
            info=detector_info(config, run, fit),
            probability=calibration.probability,
            normal=calibration.normal,
        )
        example = pd.DataFrame({"path": [item.path for item in split.train[:2]]})
        registration = register_detector(config, detector, example, promoted, fit)
    total = time.perf_counter() - started
    trained = f"{len(split.train):,} images"
    lines = closing_lines(
        trained, fit, fit_seconds, calibration, run.info.run_id, total, registration
    )
    for line in lines:
        echo(line)
    return registration.uri


def log_figures(model, pixels: np.ndarray, labels: np.ndarray, latent: int) -> None:  # noqa: ANN001
    """Reconstructions, the latent scatter and latent decodes, as figures of the active run."""
    import matplotlib.pyplot as plt
    import mlflow
    import torch

    from anomaly_vae import figures

    model.eval()
    with torch.inference_mode():
        mu = np.concatenate(
            [
                model.encode(torch.from_numpy(pixels[i : i + 512]))[0].numpy()
                for i in range(0, len(pixels), 512)
            ]
        )
    for name, figure in (
        ("reconstructions", figures.reconstruction_grid(model, pixels, labels)),
        ("latent_scatter", figures.latent_scatter(mu, labels)),
        ("latent_decodes", figures.latent_decodes(model, latent)),
    ):
        mlflow.log_figure(figure, f"{FIGURES}/{name}.png")
        plt.close(figure)


class RandomFlips:
    """Training images flipped left-right and top-bottom at random: light augmentation."""

    def __init__(self, data) -> None:  # noqa: ANN001 - any dataset of (pixels,) tuples
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple:
        import torch

        (x,) = self.data[index]
        for dim, flip in zip((-1, -2), torch.rand(2) < 0.5, strict=True):
            if flip:
                x = x.flip(dim)
        return (x,)


class CoarseNoise:
    """Training images as (noisy, clean) pairs, the noise drawn on a coarse grid of `cells` x
    `cells` values and enlarged bilinearly to the image: smooth patches of brighter and darker.

    Kascenas et al. ("Denoising autoencoders for unsupervised anomaly detection in brain MRI",
    MIDL 2022) train on such noise. A VAE trained on clean images reconstructs a broad
    brightness defect (the magnetic tiles' Uneven class) as faithfully as normal texture, so
    its maps barely mark it; taught to remove smooth noise, it repairs the defect instead, and
    the map marks the difference. Tiles, `likelihood: ssim`, 3 split seeds: pixel AUROC
    0.754 -> 0.788, image AUROC 0.894 -> 0.908 (benchmarks/results/image-tuning.md)."""

    def __init__(self, data, std: float, cells: int) -> None:  # noqa: ANN001 - as RandomFlips
        self.data, self.std, self.cells = data, std, cells

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple:
        import torch
        import torch.nn.functional as F

        (x,) = self.data[index]
        # One field for every channel: brightness, not colour, varies.
        noise = torch.randn(1, 1, self.cells, self.cells, dtype=x.dtype) * self.std
        noise = F.interpolate(noise, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return (x + noise[0]).clamp(0, 1), x
