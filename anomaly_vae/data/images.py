"""Reading images: folders of PNG/JPEG/BMP/TIFF/WebP files or MNIST-style IDX files.

An image source is a list of `ImageItem`s (where each image comes from, its label when known,
its mask file when there is one); pixels are read only when a batch needs them, so scoring a
large folder keeps a bounded number of images in memory. Every image becomes a float32 array
(channels, size, size) in [0, 1]: grayscale files are replicated for RGB models, colour files
given to a grayscale model are an error rather than a silent conversion.

Labels come from folder names (an image under a folder named in `normal` is normal, any other
is an anomaly), from a `path,label` CSV, or from an IDX labels file and the normal digits.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import warnings
import zlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from anomaly_vae.data.files import (
    files_below,
    real_paths,
    refuse_broken_links,
    refuse_repeated_files,
)
from anomaly_vae.data.tables import CSV_COMPRESSIONS, csv_compression, parquet_parts
from anomaly_vae.errors import InputError, first_line

if TYPE_CHECKING:
    # Annotations only: the config module builds pydantic models, a fifth of a second that
    # scoring a table (which asks this module whether its input is images) should not pay.
    from anomaly_vae.config import ImageConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# Photos in formats not read as images: a phone's HEIC, a GIF, Windows' .jfif JPEGs, a
# camera's raw files. Passed over, they went unscored and untrained on without a word.
_UNREAD_SUFFIXES = {".heic", ".heif", ".avif", ".gif", ".jfif", ".jp2", ".dng", ".cr2", ".nef"}
_IDX_IMAGES = re.compile(r"-images-idx3-ubyte(\.gz)?$")
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"}
# What Pillow raises on a file it cannot decode. Its guard against decompression bombs (an image
# of more than twice `Image.MAX_IMAGE_PIXELS`, 179 million pixels) is none of the usual kinds
# and ended `score` in a traceback.
_UNREADABLE = (
    OSError,
    UnidentifiedImageError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)


# Photos are decoded (JPEG) and box-averaged (any format) down to this many times the model's
# size before the antialiased resize to it. At full size, a 12-megapixel photo took a second to
# read for a 128-pixel model, most of it converting and resizing pixels that the resize then
# averaged away; a gap of 4 leaves the resize enough pixels that its result barely moves.
REDUCING_GAP = 4
# How far apart (in 8-bit levels) a pixel's channels may lie and still be a gray, by format.
# WebP has no grayscale mode: lossy WebP stores a gray photo as YUV and decodes nearly every
# one with channels a level apart, so a grayscale model refused every gray WebP as colour.
_GRAY_SPREAD = {"WEBP": 1}
# The most pixels converted to float at a time (`_resized_in_strips`): 16 MB as float32.
_STRIP_PIXELS = 1 << 22
# The modes `_reduced` averages down, and the mode it averages them in.
_REDUCED_AS = {"1": "L", "L": "L", "LA": "L"}
_REDUCED_AS_COLOUR = {**_REDUCED_AS, "RGB": "RGB", "RGBA": "RGB"}
# The formats that store a mask's pixels lossily (MPO: a camera's JPEG with a preview).
_LOSSY_FORMATS = ("JPEG", "MPO")
# A mode's alpha band: straight (RGBA, LA, PA) or premultiplied (a TIFF's RGBa).
_ALPHA_BANDS = ("A", "a")
# The EXIF orientation tag and the turn that shows each stored orientation upright.
_EXIF_ORIENTATION = 0x0112
_EXIF_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# The orientations that swap an image's width and height.
_SIDES_SWAPPED = (5, 6, 7, 8)


@dataclass(frozen=True)
class ImageItem:
    path: str  # the file, or "<idx file>#<index>" for an image inside an IDX file
    label: bool | None = None  # True for an anomaly; None when unknown
    mask: Path | None = None


@dataclass(frozen=True)
class ImageListing:
    """The images of a source, and the files `image.mask_rule` took as their masks, which are
    read as masks only, never as images: under the default {stem}.png, x.png beside x.jpg is
    x.jpg's mask. Commands say how many they set aside (`masks_note`); they went unscored and
    unmentioned, and x.png may be a second image rather than a mask."""

    items: list[ImageItem]
    masks: list[Path]
    mask_rule: str = ""

    def labelled(self, labels_csv: str | Path | None, root: str | Path) -> list[ImageItem]:
        """The images, labelled by their folders, or by `labels_csv` when there is one."""
        return self.items if labels_csv is None else labels_from_csv(self, labels_csv, root)

    def masks_note(self) -> str | None:
        """One line naming the files read as masks, or None when there were none."""
        if not self.masks:
            return None
        if len(self.masks) == 1:
            return (
                f"1 file read as a mask by image.mask_rule '{self.mask_rule}', not as an "
                f"image: {self.masks[0]}"
            )
        return (
            f"{len(self.masks):,} files read as masks by image.mask_rule '{self.mask_rule}', "
            f"not as images (the first: {self.masks[0]})"
        )


def is_image_source(path: str | Path, kind: str = "auto") -> bool:
    """Images for `kind: image`, or under `auto` an *-idx3-ubyte(.gz) file or a folder, unless
    the folder holds Parquet files and no images: then it is a table in parts. (A scores file
    written into a folder of images leaves it a folder of images.)"""
    if kind != "auto":
        return kind == "image"
    path = Path(path)
    if path.is_dir():
        # Images first: a folder of images stops at its first one, where looking for Parquet
        # parts walked all of it.
        return next(image_files(path), None) is not None or not parquet_parts(path)
    return is_idx(path)


def is_image_file(path: str | Path) -> bool:
    """Whether `path` is one image file, which `score` takes beside folders of them."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(folder: Path, suffixes: Collection[str] = IMAGE_SUFFIXES) -> Iterator[Path]:
    """The paths below `folder` with an image suffix (`files_below`), under no name starting
    with '.': copies such as .ipynb_checkpoints/ were read as images (and labelled by their
    folder). Unlike Parquet parts, a name starting with '_' is an image like any other."""
    return files_below(folder, suffixes, hidden=(".",))


def _csv_hint(folder: Path) -> str:
    """What to do with a folder of CSV files, as Spark writes a table in parts: without
    Parquet files it reads as a folder of images, and was refused for having none. The parts
    are found as Parquet parts are (`files_below`): through links, none hidden."""
    parts = files_below(folder, {".csv", *CSV_COMPRESSIONS}, hidden=(".", "_"))
    first = min(
        (p for p in parts if p.suffix.lower() == ".csv" or csv_compression(p)), default=None
    )
    if first is None:
        return ""
    return f", but CSV files ({first.name}): a table is one CSV file or a folder of Parquet files"


def is_idx(path: str | Path) -> bool:
    return bool(_IDX_IMAGES.search(Path(path).name))


def list_images(source: str | Path, image: ImageConfig) -> ImageListing:
    """The images of a folder (recursively, sorted) or an IDX file, with labels and masks."""
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source}: no such folder or file")
    if is_idx(source):
        return ImageListing(_idx_items(source, image), [])
    if is_image_file(source):  # `score` on one photo, unlabelled
        return ImageListing([ImageItem(str(source))], [])
    if not source.is_dir():
        raise InputError(f"{source}: expected a folder of images or an *-idx3-ubyte(.gz) file")
    files = sorted(image_files(source, IMAGE_SUFFIXES | _UNREAD_SUFFIXES))
    refuse_broken_links(files, "image")
    _refuse_names_not_utf8(files)
    real = real_paths(p for p in files if p.is_file())  # each path resolved once
    mask_of = _masks_of(real, image.mask_rule)
    mask_files = set(mask_of.values())
    masks = [p for p, r in real.items() if r in mask_files]
    images = [p for p, r in real.items() if r not in mask_files]
    _refuse_unread_formats(images, source)
    if not images:
        raise InputError(
            f"{source}: no PNG, JPEG, BMP, TIFF or WebP images in this folder{_csv_hint(source)}"
        )
    # An image read twice was scored and counted twice in evaluate's and calibrate's metrics,
    # labelled by each folder's name: good/a.png normal, good_copy/a.png an anomaly.
    refuse_repeated_files(images, real, "an image")
    items = [
        ImageItem(str(p), folder_label(p, source, image.normal), mask_of.get(p)) for p in images
    ]
    return ImageListing(items, masks, image.mask_rule)


def unread_format(path: str | Path) -> bool:
    """Whether `path` is a photo in a format not read as an image (HEIC, GIF, raw files)."""
    return Path(path).suffix.lower() in _UNREAD_SUFFIXES


def _refuse_unread_formats(files: Sequence[Path], source: Path) -> None:
    """One line for a photo in a format not read as an image (a mask in one is read)."""
    if unread := next((p for p in files if unread_format(p)), None):
        raise InputError(
            f"{unread}: a {unread.suffix} file, which is not read as an image (PNG, JPEG, BMP, "
            f"TIFF or WebP); convert it, or move it out of {source}"
        )


def _refuse_names_not_utf8(files: Sequence[Path]) -> None:
    """One line for a file whose name is not UTF-8 (a zip made on Windows, an old share): the
    path column of `score`'s output and the runs' data digest are UTF-8 text, and every
    command ended in a UnicodeEncodeError traceback, after scoring for `score`."""
    for path in files:
        try:
            str(path).encode()
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode(errors="backslashreplace")
            raise InputError(
                f"{shown}: the file name is not UTF-8 text, which the scores' path column and "
                "the run's record need; rename it"
            ) from None


def folder_label(path: Path, root: Path, normal: Sequence[str]) -> bool:
    """Anomalous unless a folder between `root` (itself included) and the file is normal.
    The folders are named as the user gave them: a root `good` linked to shots_2026/ was
    labelled by the link's target, its images all anomalies (and a link named `crack` to a
    folder `good` all normal). `.` or `good/..` still name the folder they stand for."""
    folders = (Path(os.path.abspath(root)).name, *path.relative_to(root).parts[:-1])
    return not any(is_normal_folder(folder, normal) for folder in folders)


def is_normal_folder(name: str, normal: Sequence[str]) -> bool:
    """Whether a folder `name` is one of the `normal` names, whatever its case: a Windows
    share's Good/ under image.normal [good] held anomalies, and evaluate scored its normal
    images as defects (train, finding no normal folder, took the cracks for normal)."""
    return name.casefold() in {folder.casefold() for folder in normal}


def _masks_of(real: dict[Path, Path], rule: str) -> dict[Path, Path]:
    """Each listed file's mask by `rule` (the mask's real path), its name matched whatever its
    case: cameras and exporters write CRACK_1.PNG or crack_1_MASK.png, and matched exactly,
    on a case-sensitive file system such a mask was scored as an image and its image had no
    mask; on a case-insensitive one (macOS, Windows) it was both. A rule such as {stem}.png
    names a PNG image itself: that image has no mask. Each folder is listed once."""
    names: dict[str, dict[str, list[str]]] = {}  # by real folder: its names by their casefold
    masks = {}
    for path, real_path in real.items():
        named = path.parent / rule.format(stem=path.stem, name=path.name, parent=path.parent.name)
        folder = os.path.realpath(named.parent)
        if folder not in names:
            names[folder] = _names_by_case(folder)
        found = names[folder].get(named.name.casefold(), [])
        if len(found) > 1:
            raise InputError(
                f"{path}: its mask by image.mask_rule '{rule}' could be "
                f"{named.parent / found[0]} or {found[1]}, whose names differ only in case; "
                "keep one of them"
            )
        if found and (mask := Path(folder, found[0]).resolve()) != real_path and mask.is_file():
            masks[path] = mask
    return masks


def _names_by_case(folder: str) -> dict[str, list[str]]:
    """The names in `folder` (none where it is missing), sorted, by their casefold."""
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return {}
    names: dict[str, list[str]] = {}
    for name in entries:
        names.setdefault(name.casefold(), []).append(name)
    return names


def labels_from_csv(
    listing: ImageListing, csv_path: str | Path, root: str | Path
) -> list[ImageItem]:
    """The listing's images, labelled by a `path,label` CSV (paths relative to `root`, or to
    the working directory as `score` writes them, or absolute). The CSV labels every image
    once and names nothing else: an image it left out was dropped, so metrics described a
    subset nobody chose; a row for a moved or misspelt file lost its label, and a second row
    for an image, however its path is spelled ("a.png", "./a.png", absolute), replaced the
    first's; all without a word."""
    import pandas as pd

    try:
        table = pd.read_csv(csv_path, dtype={"path": str})
    except (OSError, ValueError) as exc:
        raise InputError(f"{csv_path}: cannot read labels CSV ({first_line(exc)})") from None
    if not {"path", "label"} <= set(table.columns):
        raise InputError(f"{csv_path}: a labels CSV needs the columns path and label")
    root = Path(root)
    keyed = [(item, str(Path(item.path).resolve())) for item in listing.items]
    images = {key for _, key in keyed}
    labels, rows = {}, {}  # by resolved path: each image's label and the row that gave it
    for row, (path, label) in enumerate(zip(table["path"], table["label"], strict=True)):
        if pd.isna(label):  # read as NaN, it was named "label nan"
            raise InputError(f"{csv_path}: row {row + 1}: no label")
        if label not in (0, 1, True, False):
            raise InputError(f"{csv_path}: row {row + 1}: label {label!r} is not 0 or 1")
        if not isinstance(path, str):  # an empty cell, NaN: a traceback in Path()
            raise InputError(f"{csv_path}: row {row + 1}: no path")
        key = str((root / path).resolve())  # an absolute path stays itself
        if key not in images and (here := str(Path(path).resolve())) in images:
            key = here  # as `score` writes it: from where it was run
        if key not in images:
            why = _not_an_image(Path(key), listing, root)
            raise InputError(f"{csv_path}: row {row + 1}: {path} {why}")
        if key in rows:  # the last row's label won, whatever the first said
            raise InputError(
                f"{csv_path}: row {row + 1}: {path} is labelled already, in row {rows[key]}"
            )
        labels[key], rows[key] = bool(label), row + 1
    if unlabelled := [item.path for item, key in keyed if key not in labels]:
        raise InputError(
            f"{csv_path}: no label for {len(unlabelled):,} of the {len(keyed):,} images in "
            f"{root} (the first: {unlabelled[0]})"
        )
    return [ImageItem(item.path, labels[key], item.mask) for item, key in keyed]


def _not_an_image(path: Path, listing: ImageListing, root: Path) -> str:
    """Why a labels CSV's `path` (resolved) is none of the listing's images."""
    if not path.exists():
        return "does not exist"
    if path in {mask.resolve() for mask in listing.masks}:
        return f"is read as a mask by image.mask_rule '{listing.mask_rule}', not as an image"
    return f"is not one of the images in {root}"


def is_held_out(item: ImageItem, fraction: float, seed: int) -> bool:
    """A deterministic choice from the file name and seed, so train and evaluate agree.

    The name alone (not the folder) is hashed, so the same image is held out whether the
    folder given is the normal class or the data set's root.
    """
    if fraction <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{Path(item.path).name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def held_out_only(items: list[ImageItem], fraction: float, seed: int) -> list[ImageItem]:
    """The anomalies and the normal images `is_held_out` kept out of training: the test set of
    `evaluate --held-out-only`, which the benchmarks' peers are judged on too."""
    return [item for item in items if item.label or is_held_out(item, fraction, seed)]


def read_image(path: str | Path, size: int, channels: int) -> np.ndarray:
    """One image file as float32 (channels, size, size) in [0, 1]."""
    return _read_pixels(path, channels, size, lambda width, height: (size, size))


def read_picture(path: str | Path, longest: int, channels: int) -> np.ndarray:
    """One image file as float32 (channels, height, width) in [0, 1], as viewers show it:
    its own shape, shrunk so that its longer side is at most `longest` pixels. Heatmaps are
    drawn on it, so that a product photo's defect is shown where it lies on the photo, not on
    the model's square."""

    def shape(width: float, height: float) -> tuple[int, int]:
        scale = min(1.0, longest / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))

    return _read_pixels(path, channels, longest, shape)


def as_shown(
    path: str, pixels: np.ndarray, heat: np.ndarray, longest: int
) -> tuple[np.ndarray, np.ndarray]:
    """The image at `path` as viewers show it (`read_picture`) and its anomaly map stretched
    over it from the model's square; an image inside an IDX file is its square `pixels`."""
    if is_idx(path.rpartition("#")[0]):
        return pixels, heat
    picture = read_picture(path, longest, len(pixels))
    return picture, resample(heat[None], picture.shape[:0:-1])[0]


def _read_pixels(
    path: str | Path,
    channels: int,
    side: int,
    shape_of: Callable[[float, float], tuple[int, int]],
) -> np.ndarray:
    """An image file resized to `shape_of(width, height)` of its stored sides, then turned
    upright; `side` bounds how far a JPEG may be decoded down."""
    try:
        with _open(path) as img:
            _refuse_frames(img, path, "image")
            # A JPEG decodes straight to 1/2, 1/4 or 1/8 of its size, no smaller than this
            # (Pillow says which part of the smaller image the photo spans); other formats
            # decode whole.
            drafted = img.draft(img.mode, (REDUCING_GAP * side, REDUCING_GAP * side))
            extent = drafted[1] if drafted else (0, 0, *img.size)
            img.load()
            left, top, right, bottom = extent
            shape = shape_of(right - left, bottom - top)
            reduced, extent = _reduced(img, extent, shape, channels)
            pixels = _resized_in_strips(
                reduced, lambda strip: _to_float(strip, path, channels), shape, extent
            )
            return _upright(pixels, img)
    except InputError:
        raise
    except _UNREADABLE as exc:
        raise InputError(f"{path}: unreadable image ({first_line(exc)})") from None


@contextlib.contextmanager
def _open(path: str | Path) -> Iterator[Image.Image]:
    """`Image.open` without Pillow's DecompressionBombWarning, which it printed amid the output
    of `score` for every image of 89 to 179 million pixels: legitimate line-scan photos, read
    reduced (`_reduced`). Larger ones are still refused. Only our own reads are silenced.

    A TIFF whose orientation tag swaps its sides (5 to 8) is opened again from the open file:
    an uncompressed image opened by name Pillow memory-maps, and such a TIFF it maps at the
    upright size rather than the stored one. In the modes it maps (L, P, RGBA, CMYK, 16-bit)
    every row was cut at the wrong width and the scrambled picture turned back to the stored
    shape: the resize refused it ("box can't exceed original image size"), and a mask was read
    so without a word. Decoded from the file, it is turned upright by Pillow as it loads, its
    tag dropped, so `_upright` turns it no further. Every other image keeps the map: read from
    the file, a 48-megapixel gray TIFF or BMP took 28 ms where the map took 15."""
    with contextlib.ExitStack() as stack:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = stack.enter_context(Image.open(path))
            if img.format == "TIFF" and img.getexif().get(_EXIF_ORIENTATION, 1) in _SIDES_SWAPPED:
                img = stack.enter_context(Image.open(stack.enter_context(open(path, "rb"))))
        yield img


def _reduced(
    img: Image.Image,
    extent: tuple[float, float, float, float],
    shape: tuple[int, int],
    channels: int,
) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """The image shrunk by a whole factor (averaging boxes of pixels) while each side stays
    at least `REDUCING_GAP` times that of `shape` (width, height), as Pillow's own
    `reducing_gap` resizing does, and the part of it the original spans (the last box holds
    what is left over). The float conversion and the antialiased resize that follow then see
    a fraction of the pixels.

    Only 1-bit, 8-bit gray and (for a colour model) RGB images: an average would hide what
    `_to_float` checks pixel by pixel, a 16-bit or float value out of range or a coloured
    pixel in an image a grayscale model reads, so those are read whole."""
    factor = min(side // (REDUCING_GAP * to) for side, to in zip(img.size, shape, strict=True))
    reading = _REDUCED_AS.get(img.mode) if channels == 1 else _REDUCED_AS_COLOUR.get(img.mode)
    if factor < 2 or reading is None:
        return img, extent
    converted = img if img.mode == reading else img.convert(reading)
    return converted.reduce(factor), tuple(edge / factor for edge in extent)


def _upright(pixels: np.ndarray, img: Image.Image) -> np.ndarray:
    """The (channels, size, size) pixels as viewers show the image, turned by its EXIF
    orientation. Cameras and phones store a photo as the sensor saw it and record the turn:
    read as stored, such photos lay on their side among upright ones (anomalies for being
    turned), and their heatmaps and masks, drawn over the picture people see, did not line up
    with it. Turning the resized square rather than the whole photo gives the same pixels."""
    turn = _EXIF_TURNS.get(img.getexif().get(_EXIF_ORIENTATION))
    if turn is None:
        return pixels
    return np.stack([np.asarray(Image.fromarray(c, mode="F").transpose(turn)) for c in pixels])


def _to_float(img: Image.Image, path: str | Path, channels: int) -> np.ndarray:
    gray = img.mode in _GRAY_MODES
    if not gray and channels == 1:
        return _gray_content(img, path)
    if img.mode.startswith("I"):
        pixels = _within(np.asarray(img), 65535, img.mode, path)
        pixels = pixels.astype(np.float32)[..., None] / 65535.0
    elif img.mode == "F":
        pixels = np.asarray(img, dtype=np.float32)
        # NaN passes any range check: such an image scored NaN and was never flagged, and
        # training on one failed as if the learning rate were too high.
        if not np.isfinite(pixels).all():
            raise InputError(f"{path}: pixel values are not finite (NaN or infinity)")
        pixels = _within(pixels, 1, img.mode, path)[..., None]
    else:
        pixels = np.asarray(img.convert("L" if gray else "RGB"), dtype=np.float32) / 255.0
        pixels = pixels.reshape(*pixels.shape[:2], -1)
    if pixels.shape[2] != channels:
        pixels = np.repeat(pixels, channels, axis=2)
    return pixels.transpose(2, 0, 1)


def _within(pixels: np.ndarray, top: int, mode: str, path: str | Path) -> np.ndarray:
    """`pixels` when they lie in 0..top, the range an image of that mode is read in. Mode I is
    32-bit signed and was divided by 65535 whatever it held (values up to 19, or negative,
    were scored), and a float image was clipped to [0, 1] (one in 0..255 became all white)."""
    low, high = pixels.min(), pixels.max()
    if low < 0 or high > top:
        raise InputError(
            f"{path}: pixel values {low}..{high} lie outside 0..{top}, the range of a "
            f"mode {mode} image"
        )
    return pixels


def _gray_content(img: Image.Image, path: str | Path) -> np.ndarray:
    """(1, h, w) pixels of an image stored in colour whose colours are all grays: cameras and
    converters often save grayscale as RGB or with a palette, and judged by the file's mode
    such a set could not be scored by the grayscale model it is. A colour would be lost.
    A gray is its channels' mean, which is the gray itself where they are equal."""
    rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    if (spread > _GRAY_SPREAD.get(img.format, 0)).any():
        raise InputError(
            f"{path}: a colour image ({img.mode}), but the model reads grayscale; train with "
            "image.channels: 3 for colour images"
        )
    return rgb.mean(axis=2)[None] / 255.0


def resize(
    pixels: np.ndarray, size: int, extent: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """(channels, h, w) -> (channels, size, size), antialiased bilinear per channel, of the
    `extent` (left, top, right, bottom) of the image when given, else of all of it."""
    return resample(pixels, (size, size), extent)


def resample(
    pixels: np.ndarray,
    shape: tuple[int, int],
    box: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """(channels, h, w) -> (channels, height, width) for a `shape` (width, height), as
    `resize` does it."""
    if pixels.shape[:0:-1] == shape and box in (None, (0, 0, *shape)):
        return np.ascontiguousarray(pixels, dtype=np.float32)
    return np.stack(
        [
            np.asarray(Image.fromarray(c, mode="F").resize(shape, Image.BILINEAR, box=box))
            for c in pixels.astype(np.float32, copy=False)
        ]
    )


def _resized_in_strips(
    img: Image.Image,
    to_float: Callable[[Image.Image], np.ndarray],
    shape: tuple[int, int],
    extent: tuple[float, float, float, float] | None = None,
) -> np.ndarray:
    """`resample(to_float(img), shape, extent)` for a `shape` (width, height), converting
    `_STRIP_PIXELS` at a time. As float32 whole, a 10000 x 10000 16-bit image took 1.3 GB to
    read (2.3 GB for a colour model) and a mask of that size 1 GB, several times the decoded
    file. Each strip of rows is narrowed to the shape's width, and the strips stacked are
    resized down: the same pixels as Pillow's one resize where it goes across first, as it
    does for an image at least as wide as tall; for a taller one, Pillow 13 may go down
    first, and a pixel may differ by a float32 rounding (6e-8 at most seen, in 0..1). An
    image of one strip is one resize."""
    width, height = img.size
    if _strip_rows(img) >= height:
        return resample(to_float(img), shape, extent)
    left, top, right, bottom = extent or (0, 0, width, height)
    narrowed = []
    for strip in _strips(img):
        pixels = to_float(strip)
        narrowed.append(
            resample(pixels, (shape[0], pixels.shape[1]), (left, 0, right, pixels.shape[1]))
        )
    return resample(np.concatenate(narrowed, axis=1), shape, (0, top, shape[0], bottom))


def _strip_rows(img: Image.Image) -> int:
    """How many of `img`'s rows make a strip of at most `_STRIP_PIXELS` (one at least)."""
    return max(1, _STRIP_PIXELS // img.width)


def _strips(img: Image.Image) -> Iterator[Image.Image]:
    """`img` cut into strips of `_strip_rows` rows, from the top."""
    rows = _strip_rows(img)
    for y in range(0, img.height, rows):
        strip = img.crop((0, y, img.width, min(y + rows, img.height)))
        strip.format = img.format  # a crop has none, and `_gray_content` reads it
        yield strip


def _refuse_frames(img: Image.Image, path: str | Path, kind: str) -> None:
    """Refuse a file of several images or masks (`kind`). Pillow reads the first page of a
    multi-page TIFF (the first frame of an animated WebP or PNG): the others went unscored,
    or marked no pixel of a mask, without a word. A camera's JPEG with a preview or depth map
    after the photo (MPO) is one image, the first."""
    if (frames := getattr(img, "n_frames", 1)) > 1 and img.format != "MPO":
        raise InputError(
            f"{path}: {frames} pages or frames in one file; save each {kind} on its own"
        )


def read_mask(path: Path, size: int, image: str | Path | None = None) -> np.ndarray:
    """A mask file as a boolean (size, size) array of its defects (`_marking`).

    Given its `image`, a mask of another size is refused. Both are resized to the model's
    square, so a mask of another shape (a mask of another image, one cropped or exported at
    another size) was stretched over the picture and marked pixels it does not cover, and
    pixel AUROC was computed against it without a word."""
    try:
        with _open(path) as img:
            _refuse_frames(img, path, "mask")
            if image is not None:
                _check_same_size(path, _size_shown(img), image)
            marking = _marking(img, path)
            marked = _resized_in_strips(img, lambda strip: marking(strip)[None], (size, size))
            return _upright(marked, img)[0] >= 0.5
    except InputError:  # the size check's own line (a ValueError, as some unreadable files')
        raise
    except _UNREADABLE as exc:
        raise InputError(f"{path}: unreadable mask ({first_line(exc)})") from None


def _marking(img: Image.Image, path: str | Path) -> Callable[[Image.Image], np.ndarray]:
    """How a mask's pixels mark its defects: by their alpha where some pixel is not opaque
    (`_painted`), by their brightness in a lossy file (`_bright`), else any that is not
    black."""
    if _has_transparency(img):
        return _painted
    return _bright if _is_lossy(img, path) else _marked


def _is_lossy(img: Image.Image, path: str | Path) -> bool:
    """Whether a file stores its pixels lossily: a JPEG always, a WebP when its image data is
    a lossy 'VP8 ' chunk rather than a lossless 'VP8L' one, which Pillow does not tell."""
    if img.format == "WEBP":
        return _webp_image_chunk(path) == b"VP8 "
    return img.format in _LOSSY_FORMATS


def _webp_image_chunk(path: str | Path) -> bytes | None:
    """The kind of a WebP file's first image chunk ('VP8 ', 'VP8L' or an animation frame's
    'ANMF'), past the RIFF header and the chunks before it (VP8X, ICCP, ANIM, ALPH)."""
    with open(path, "rb") as file:
        file.seek(12)  # "RIFF", the size, "WEBP"
        while len(header := file.read(8)) == 8:
            kind, length = header[:4], int.from_bytes(header[4:], "little")
            if kind in (b"VP8 ", b"VP8L", b"ANMF"):
                return kind
            file.seek(length + length % 2, os.SEEK_CUR)  # chunks are padded to even sizes
    return None


def _bright(img: Image.Image) -> np.ndarray:
    """The pixels of a lossy mask above half the range (128 of 255) in some channel. JPEG and
    lossy WebP leave faint values around a mask's strokes and spread a colour's noise further: any
    non-zero pixel widened every defect. Half the range is where most code binarizes a
    mask; a lossless mask's every value is as drawn, class ids 1 and 2 included."""
    return _marked(img.point(lambda value: 255 if value > 127 else 0))


def _marked(img: Image.Image) -> np.ndarray:
    """The pixels of a mask that are not zero in any channel. Through 8-bit gray, a float
    mask's 0.3 and an RGB mask's dark red (1, 0, 0) rounded to 0: defects dropped unseen."""
    if img.mode != "P" and len(img.getbands()) == 1:  # a palette's index is no colour
        return np.asarray(img) != 0
    return np.asarray(img.convert("RGB")).any(axis=2)


def _has_transparency(img: Image.Image) -> bool:
    """Whether some pixel of a mask is not opaque: an alpha channel below 255, a palette
    index or a colour given as transparent. Editors save many masks with an alpha channel
    that is opaque everywhere, and those are read by their colour."""
    if not img.has_transparency_data:
        return False
    if img.getbands()[-1] in _ALPHA_BANDS:
        return img.getextrema()[-1][0] < 255
    return any(_alpha(strip).getextrema()[0] < 255 for strip in _strips(img))


def _painted(img: Image.Image) -> np.ndarray:
    """The pixels of a mask with transparency that are not transparent, whatever their colour.
    Strokes drawn on a transparent layer lie over the layer's colour, often white: read by
    their colour, such masks marked the whole image; and a stroke may be black."""
    return np.asarray(_alpha(img)) != 0


def _alpha(img: Image.Image) -> Image.Image:
    """The alpha channel of `img`, as Pillow gives it for a palette's or a colour's
    transparency when the image has no alpha channel of its own."""
    if img.getbands()[-1] not in _ALPHA_BANDS:
        img = img.convert("RGBA")
    return img.getchannel(len(img.getbands()) - 1)


def _check_same_size(mask: Path, mask_size: tuple[int, int], image: str | Path) -> None:
    image_size = _shown_size(image)
    if mask_size != image_size:
        raise InputError(
            f"{mask}: a mask of {mask_size[0]}x{mask_size[1]} pixels, but its image {image} "
            f"is {image_size[0]}x{image_size[1]}; a mask marks the pixels of its own image"
        )


def _shown_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file as viewers show it (`_size_shown`); only the header
    is read."""
    try:
        with _open(path) as img:
            return _size_shown(img)
    except _UNREADABLE as exc:
        raise InputError(f"{path}: unreadable image ({first_line(exc)})") from None


def _size_shown(img: Image.Image) -> tuple[int, int]:
    """(width, height) of an open image, turned by its EXIF orientation. Pillow gives a
    TIFF's size turned already."""
    width, height = img.size
    turned = img.getexif().get(_EXIF_ORIENTATION, 1) in _SIDES_SWAPPED
    return (height, width) if turned and img.format != "TIFF" else (width, height)


def iter_image_batches(
    items: Sequence[ImageItem], size: int, channels: int, batch_size: int
) -> Iterator[tuple[Sequence[ImageItem], np.ndarray]]:
    """(items, pixels) batches; IDX images are sliced from one cached decoded file."""
    idx_cache: dict[str, np.ndarray] = {}
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        yield batch, np.stack([_pixels(item, size, channels, idx_cache) for item in batch])


def read_images(items: Sequence[ImageItem], size: int, channels: int) -> np.ndarray:
    """All pixels at once, for training sets."""
    if not items:
        return np.zeros((0, channels, size, size), dtype=np.float32)
    return np.concatenate([px for _, px in iter_image_batches(items, size, channels, 1024)])


def _pixels(
    item: ImageItem, size: int, channels: int, idx_cache: dict[str, np.ndarray]
) -> np.ndarray:
    file, sep, index = item.path.rpartition("#")
    if not sep or not is_idx(file):
        return read_image(item.path, size, channels)
    if file not in idx_cache:
        idx_cache.clear()
        idx_cache[file] = _idx_images(Path(file))
    pixels = _idx_image(idx_cache[file], item.path, index).astype(np.float32)[None] / 255.0
    if channels != 1:
        pixels = np.repeat(pixels, channels, axis=0)
    return resize(pixels, size)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array of its declared shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # zlib's: a damaged .gz, was a traceback
        raise InputError(f"{path}: cannot read IDX file ({first_line(exc)})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise InputError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX file (its header is cut short)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if (found := len(raw) - header) != expected:
        problem = "truncated IDX file" if found < expected else "IDX file longer than its shape"
        raise InputError(f"{path}: {problem} ({found} data bytes, {expected} expected)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip-compressed for a .gz name)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if Path(path).suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def idx_labels_path(images_path: Path) -> Path:
    return images_path.with_name(_IDX_IMAGES.sub(r"-labels-idx1-ubyte\1", images_path.name))


def _idx_images(path: Path) -> np.ndarray:
    """The images of an IDX file, checked to be bytes of shape (images, height, width)."""
    images = read_idx(path)
    # Pixels are read as bytes over 255: a float, int16 or NaN file was scored as if it held
    # bytes (every image flagged, or a NaN score never flagged), and a 2-D file as one-row
    # images.
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(
            f"{path}: IDX images are unsigned bytes of shape (images, height, width); this "
            f"file holds {images.dtype.name} of shape {images.shape}"
        )
    return images


def _idx_image(images: np.ndarray, path: str, index: str) -> np.ndarray:
    """Image `index` of an IDX file's `images`, named `path` ("<file>#<index>"). Listing names
    only images that exist, but a pyfunc request may name any: an index past the end was an
    IndexError traceback, one that is not a number a ValueError, and #-1 scored the last."""
    if not (index.isdecimal() and int(index) < len(images)):
        raise InputError(
            f"{path}: no such image; the IDX file holds images #0 to #{len(images) - 1}"
        )
    return images[int(index)]


def _idx_items(path: Path, image: ImageConfig) -> list[ImageItem]:
    images = _idx_images(path)
    count = len(images)
    labels_path = idx_labels_path(path)
    if labels_path.is_file():
        digits = read_idx(labels_path)
        if len(digits) != count:
            raise InputError(f"{labels_path}: {len(digits)} labels for {count} images in {path}")
        labels = [bool(d not in image.normal_digits) for d in digits]
    else:
        labels = [None] * count
    if not count:
        raise InputError(f"{path}: the IDX file holds no images")
    return [ImageItem(f"{path}#{i}", label) for i, label in enumerate(labels)]
