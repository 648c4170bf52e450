"""Score images: a model URI and a folder (or IDX file) in, one row per image out.

Each row carries the image's `path`, so labels kept elsewhere can be joined back. Images stream
through in batches with a progress bar. With `--maps DIR`, a heatmap overlay PNG per image is
written into a temporary folder beside DIR that becomes DIR only once every image has scored;
the table is written the same way, so a failure leaves neither behind.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from anomaly_vae.data.files import check_output_folder
from anomaly_vae.data.images import ImageItem, is_idx, is_image_file
from anomaly_vae.errors import InputError
from pipelines.score import ScoreSummary

# Heatmaps are at least this many pixels on their longer side (small images enlarged by a
# whole factor) and at most MAP_LONGEST_SIDE (large photos shrunk).
MAP_DISPLAY_SIZE = 224
MAP_LONGEST_SIDE = 1024


def image_detector(model_uri: str, input_path: str | Path, tracking_uri: str | None = None):  # noqa: ANN201
    """The model behind `model_uri`, checked to be an image model."""
    from pipelines.score import load_model

    detector = load_model(model_uri, tracking_uri)
    if detector.kind != "image":
        raise InputError(images_for_a_table_model(model_uri, input_path))
    return detector


def images_for_a_table_model(model_uri: str, input_path: str | Path) -> str:
    """The line for images given to a model trained on a table."""
    what = (
        "an IDX file of images"
        if is_idx(input_path)
        else "an image"
        if is_image_file(input_path)
        else "a folder without Parquet files"
    )
    return (
        f"{input_path}: {what}, but model '{model_uri}' was trained on a table: give a CSV "
        "or Parquet file, or a folder of Parquet files"
    )


def kept_out_of_training(
    detector,  # noqa: ANN001 - an ImageDetector
    items: list[ImageItem],
    model_uri: str,
    source: str | Path,
) -> tuple[list[ImageItem], str]:
    """The anomalies and the normal images `image.holdout_fraction` kept out of the model's
    training, chosen by file name (`--held-out-only`), and a line saying how many normal ones
    it kept: matched by name, a new batch keeps a share of them and a renamed copy of the
    training folder most of them, where the summary said nothing. None of the normal ones is
    refused: calibrate chose a threshold on the anomalies alone, and evaluate said there were
    no images under a normal folder that held 97."""
    if not detector.image.holdout_fraction:
        raise InputError(f"model '{model_uri}': trained with no image.holdout_fraction")
    kept = detector.held_out_only(items)
    normal = sum(not item.label for item in items)  # unlabelled ones kept by name too
    held = sum(not item.label for item in kept)
    if normal and not held:
        raise InputError(
            f"{source}: --held-out-only kept none of the {normal:,} normal images: "
            "image.holdout_fraction held out none of their file names"
        )
    return kept, (
        f"--held-out-only kept {held:,} of the {normal:,} normal images, those whose file "
        "names image.holdout_fraction held out of training"
    )


def scored_image_batches(detector, items: list[ImageItem]) -> Iterator:  # noqa: ANN001
    """The detector's (items, pixels, scores) batches, with a progress bar on a terminal."""
    from tqdm import tqdm

    from anomaly_vae.terminal import stderr_is_terminal

    terminal = stderr_is_terminal()
    with tqdm(total=len(items), unit="images", disable=not terminal, leave=False) as bar:
        for batch in detector.scored_batches(items):
            bar.update(len(batch[0]))
            yield batch


def score_images_file(
    model_uri: str,
    input_path: str | Path,
    output_path: str | Path,
    maps_dir: str | Path | None = None,
    tracking_uri: str | None = None,
) -> ScoreSummary:
    from anomaly_vae.data.tables import AtomicTableWriter

    writer = AtomicTableWriter(output_path)  # checks the output's extension and folder first
    maps = MapWriter(maps_dir, input_path) if maps_dir else None
    if maps:
        maps.check_apart_from(Path(output_path))
    detector = image_detector(model_uri, input_path, tracking_uri)
    listing = detector.list_images(input_path)
    items = listing.items
    if maps:
        maps.check_names(items)
    started = time.perf_counter()
    anomalies = 0
    with writer, maps or nullcontext():
        for batch, pixels, scores in scored_image_batches(detector, items):
            scored = detector.frame(batch, scores)
            anomalies += int(scored["is_anomaly"].sum())
            writer.write(scored, str(input_path))
            if maps:
                maps.write(batch, pixels, scores.maps, detector.map_scale)
    seconds = time.perf_counter() - started
    return ScoreSummary(
        writer.rows_written, anomalies, seconds, Path(output_path), "images", listing.masks_note()
    )


class MapWriter:
    """Heatmap overlay PNGs mirroring the input's folders, moved into place on success."""

    def __init__(self, maps_dir: str | Path, input_path: str | Path) -> None:
        self.target = Path(maps_dir)
        self.root = Path(input_path)
        if self.target.exists() and (not self.target.is_dir() or any(self.target.iterdir())):
            raise InputError(f"{self.target}: --maps needs a new or empty folder")
        # A link to an empty folder: the maps go into the folder it names. The link itself
        # cannot be replaced by a folder, and after every image had scored that ended in a
        # traceback (NotADirectoryError) with the maps left in a temporary folder.
        self.destination = self.target.resolve()
        check_output_folder(self.destination)
        # Heatmaps are PNG images: written among the input's, the next run over the folder
        # scored them as images (an RGB model without a word), as a table's next read would
        # take a scores file written into its folder as a part. One image's folder counts.
        folder = self.root.parent if is_image_file(self.root) else self.root
        if folder.resolve() in (self.destination, *self.destination.parents):
            raise InputError(
                f"{self.target}: --maps inside the input folder; the next run over "
                f"{folder} would read the heatmaps as images"
            )
        self.tmp: Path | None = None

    def check_apart_from(self, output: Path) -> None:
        """Refuse a scores file that is the maps folder or lies in it: the heatmaps moved into
        place first, then the table's rename onto that folder (or the folder's rename over the
        table's temporary file) failed in a traceback, leaving the heatmaps and a temporary file
        behind."""
        resolved = output.resolve()
        if self.destination in (resolved, *resolved.parents):
            raise InputError(
                f"{self.target}: --maps is or holds the scores file {output}; give the "
                "heatmaps a folder of their own"
            )

    def __enter__(self) -> MapWriter:
        # mkdir, not mkdtemp: mkdtemp makes an owner-only folder (0700) whatever the umask,
        # and the rename kept that mode, so nobody else could open the heatmaps.
        folder, name = self.destination.parent, self.destination.name
        self.tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        self.tmp.mkdir()
        return self

    def name(self, item: ImageItem) -> Path:
        file, _, index = item.path.rpartition("#")
        if is_idx(file):
            return Path(f"{int(index):05d}.png")
        if Path(item.path) == self.root:  # one image given
            return Path(self.root.name).with_suffix(".png")
        return Path(item.path).relative_to(self.root).with_suffix(".png")

    def check_names(self, items: list[ImageItem]) -> None:
        """Refuse two images whose heatmaps share a name (a.jpg and a.bmp in one folder both
        draw a.png): the second overwrote the first without a word. So is a heatmap named as a
        folder of heatmaps (x.jpg's x.png beside a folder x.png/): writing the second ended in
        a traceback (FileExistsError) after the images before it had scored."""
        first_of: dict[Path, str] = {}
        folders: dict[Path, str] = {}  # each folder of heatmaps: the first image drawn in it
        for item in items:
            name = self.name(item)
            if name in first_of:
                raise InputError(
                    f"{item.path}: its heatmap {name} would overwrite that of {first_of[name]}; "
                    "rename one of them"
                )
            if name in folders:
                raise _folder_clash(item.path, name, folders[name])
            for folder in name.parents[:-1]:  # the last is '.', the maps folder itself
                if folder in first_of:
                    raise _folder_clash(first_of[folder], folder, item.path)
                folders.setdefault(folder, item.path)
            first_of[name] = item.path

    def write(
        self, items: list[ImageItem], pixels: np.ndarray, maps: np.ndarray, scale: float
    ) -> None:
        """Each map drawn on its image as viewers show it, read again at its own shape: on
        the model's square input a photo was squeezed, and a defect's place on it had to be
        guessed."""
        from PIL import Image

        from anomaly_vae.data.images import as_shown
        from anomaly_vae.figures import overlay

        for item, square, square_heat in zip(items, pixels, maps, strict=True):
            image, heat = as_shown(item.path, square, square_heat, MAP_LONGEST_SIDE)
            picture = Image.fromarray(overlay(image, heat, scale))
            if max(picture.size) < MAP_DISPLAY_SIZE:  # small images, in whole pixels
                factor = -(-MAP_DISPLAY_SIZE // max(picture.size))
                picture = picture.resize(
                    (picture.width * factor, picture.height * factor), Image.NEAREST
                )
            path = self.tmp / self.name(item)
            path.parent.mkdir(parents=True, exist_ok=True)
            # zlib's fastest level: at its default (6), encoding a tile's overlay at its own
            # size took 45 ms, most of `--maps`' time; at 1, 13 ms for a file 16% larger.
            picture.save(path, compress_level=1)

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        assert self.tmp is not None
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.destination.exists():
            self.destination.rmdir()  # empty, checked in __init__
        os.replace(self.tmp, self.destination)


def _folder_clash(image: str, heatmap: Path, inside: str) -> InputError:
    """`image`'s heatmap would be named as the folder that holds `inside`'s heatmap."""
    return InputError(
        f"{image}: its heatmap {heatmap} would be named as the folder holding the heatmap of "
        f"{inside}; rename one of them"
    )
