"""Images: reading folders and IDX files, the conv VAE through the CLI, maps, pixel AUROC."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import stat
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from anomaly_vae.config import Config, ImageConfig
from anomaly_vae.data.images import (
    ImageItem,
    is_held_out,
    is_image_source,
    list_images,
    read_idx,
    read_image,
    read_images,
    read_mask,
)
from anomaly_vae.detector import ImageDetector, build_image_model
from anomaly_vae.errors import InputError
from anomaly_vae.scoring import compressed_bits, score_images
from tests.conftest import REPO, run_cli


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format by hand: magic (0, 0, type 0x08 = uint8, ndim), big-endian sizes, data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_with_labels_choosing_the_normal_digits(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(5, 4, 6), dtype=np.uint8)
    write_idx(tmp_path / "tiny-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "tiny-labels-idx1-ubyte.gz", np.array([0, 3, 0, 7, 3]))

    assert np.array_equal(read_idx(tmp_path / "tiny-images-idx3-ubyte.gz"), images)
    items = list_images(
        tmp_path / "tiny-images-idx3-ubyte.gz", ImageConfig(normal_digits=[0, 7])
    ).items
    assert [item.label for item in items] == [False, True, False, False, True]
    pixels = read_images(items, size=6, channels=1)
    assert pixels.shape == (5, 1, 6, 6)

    with gzip.open(tmp_path / "tiny-images-idx3-ubyte.gz") as f:
        raw = f.read()
    with gzip.open(tmp_path / "cut-images-idx3-ubyte.gz", "wb") as f:
        f.write(raw[:-7])
    with pytest.raises(InputError, match="cut-images-idx3-ubyte.gz: truncated IDX file"):
        read_idx(tmp_path / "cut-images-idx3-ubyte.gz")


def test_folders_of_grayscale_and_rgb_images_of_any_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "good" / "deep").mkdir(parents=True)
    (tmp_path / "scratch").mkdir()
    Image.fromarray(rng.integers(0, 256, (13, 7), dtype=np.uint8), "L").save(
        tmp_path / "good" / "a.png"
    )
    Image.fromarray(rng.integers(0, 256, (9, 20, 3), dtype=np.uint8), "RGB").save(
        tmp_path / "good" / "deep" / "b.jpg"
    )
    Image.fromarray(np.full((5, 5), 255, np.uint8), "L").save(tmp_path / "scratch" / "c.bmp")
    mask = np.zeros((5, 5), np.uint8)
    mask[:, :2] = 255
    Image.fromarray(mask, "L").save(tmp_path / "scratch" / "c.png")  # c.bmp's mask
    Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8), "L").save(tmp_path / "d.tiff")
    Image.fromarray(rng.integers(0, 256, (7, 7, 3), dtype=np.uint8), "RGB").save(
        tmp_path / "good" / "e.webp"
    )
    (tmp_path / "notes.txt").write_text("not an image")

    items = list_images(tmp_path, ImageConfig(normal=["good"])).items

    names = {Path(item.path).name: item for item in items}
    assert sorted(names) == ["a.png", "b.jpg", "c.bmp", "d.tiff", "e.webp"]  # the mask is none
    assert [names[n].label for n in ("a.png", "b.jpg", "c.bmp", "d.tiff", "e.webp")] == [
        False,
        False,
        True,
        True,
        False,
    ]
    assert names["c.bmp"].mask == (tmp_path / "scratch" / "c.png").resolve()
    pixels = read_images(items, size=8, channels=3)
    assert pixels.shape == (5, 3, 8, 8) and pixels.dtype == np.float32
    assert pixels.min() >= 0 and pixels.max() <= 1
    grey = pixels[[i for i, item in enumerate(items) if item.path.endswith("a.png")][0]]
    assert np.array_equal(grey[0], grey[1])  # grayscale replicated into the RGB channels
    assert (
        read_mask(names["c.bmp"].mask, 10)[:, :4].all()
        and not read_mask(names["c.bmp"].mask, 10)[:, 4:].any()
    )
    with pytest.raises(InputError, match="b.jpg: a colour image") as info:
        read_images(items, size=8, channels=1)
    assert "unreadable" not in str(info.value)  # it was read; it has the wrong channels
    assert "image.channels: 3" in str(info.value)


def test_grayscale_stored_in_colour_reads_as_the_grayscale_it_is(tmp_path: Path) -> None:
    gray = np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1), "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(gray, "L").convert("P").save(tmp_path / "palette.png")
    Image.fromarray(gray, "L").convert("RGBA").save(tmp_path / "rgba.png")

    expected = read_image(tmp_path / "gray.png", 6, channels=1)
    for name in ("rgb.png", "palette.png", "rgba.png"):
        assert np.array_equal(read_image(tmp_path / name, 6, channels=1), expected), name
    tinted = np.stack([gray] * 3, -1)
    tinted[2, 3, 1] += 1  # one pixel off gray is colour the model would lose
    Image.fromarray(tinted, "RGB").save(tmp_path / "tinted.png")
    with pytest.raises(InputError, match="tinted.png: a colour image"):
        read_image(tmp_path / "tinted.png", 6, channels=1)


def test_a_gray_photo_saved_as_lossy_webp_reads_as_grayscale(tmp_path: Path) -> None:
    # WebP has no grayscale mode; lossy WebP decodes a gray photo with channels a level apart.
    rows, columns = np.mgrid[0:32, 0:32]
    gray = Image.fromarray((rows * 4 + columns * 3).astype(np.uint8), "L")
    gray.save(tmp_path / "gray.png")
    gray.save(tmp_path / "gray.webp", quality=80)
    decoded = np.asarray(Image.open(tmp_path / "gray.webp").convert("RGB")).astype(int)
    assert np.ptp(decoded, axis=2).max() == 1  # what made it "a colour image" before

    read = read_image(tmp_path / "gray.webp", 32, channels=1)
    assert read.shape == (1, 32, 32)
    assert np.abs(read - read_image(tmp_path / "gray.png", 32, channels=1)).mean() < 0.01
    tinted = np.stack([np.asarray(gray)] * 3, -1)
    tinted[..., 0] //= 2  # a real colour is still refused
    Image.fromarray(tinted, "RGB").save(tmp_path / "tinted.webp", quality=80)
    with pytest.raises(InputError, match="tinted.webp: a colour image"):
        read_image(tmp_path / "tinted.webp", 32, channels=1)


def test_a_large_photo_is_read_from_fewer_pixels_to_nearly_the_same_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomaly_vae.data import images

    rows, columns = np.mgrid[0:900, 0:1200]
    smooth = 128 + 60 * np.sin(columns / 90) * np.cos(rows / 70)
    noise = np.random.default_rng(0).normal(0, 6, (900, 1200, 3))
    photo = np.clip(smooth[..., None] + noise, 0, 255).astype(np.uint8)
    Image.fromarray(photo, "RGB").save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(photo, "RGB").save(tmp_path / "photo.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned a quarter anticlockwise, shown turned back
    turned = Image.fromarray(np.ascontiguousarray(np.rot90(photo)), "RGB")
    turned.save(tmp_path / "turned.jpg", quality=90, exif=exif)
    converted: list[tuple[int, int]] = []
    to_float = images._to_float

    def recording(img: Image.Image, path: Path, channels: int) -> np.ndarray:
        converted.append(img.size)
        return to_float(img, path, channels)

    monkeypatch.setattr(images, "_to_float", recording)
    with Image.open(tmp_path / "photo.png") as img:  # every pixel, then resized
        full = images.resize(to_float(img, "photo.png", 3), 16)
    for name in ("photo.jpg", "photo.png", "turned.jpg"):
        converted.clear()
        read = read_image(tmp_path / name, 16, channels=3)
        # JPEG decodes at 1/8 of the size, PNG is averaged in 14 x 14 boxes: both sides
        # stay at least 4 x 16 pixels, and the result moves by a grey level at most.
        assert all(64 <= side <= 160 for side in converted[0]), (name, converted)
        difference = np.abs(read - full)
        assert difference.max() < 1 / 255 and difference.mean() < 0.2 / 255, name


@pytest.mark.parametrize("mode", ["1", "L"])
def test_a_large_grayscale_image_is_averaged_down_in_8_bits(tmp_path: Path, mode: str) -> None:
    from anomaly_vae.data import images

    rows, columns = np.mgrid[0:900, 0:1200]
    shade = 128 + 100 * np.sin(columns / 90) * np.cos(rows / 70)
    gray = np.clip(shade + np.random.default_rng(0).normal(0, 20, shade.shape), 0, 255)
    img = Image.fromarray(gray.astype(np.uint8), "L")
    img = img.convert("1") if mode == "1" else img  # dithered, as scanners store bilevel
    img.save(tmp_path / "scan.png")
    with Image.open(tmp_path / "scan.png") as whole:
        expected = images.resize(images._to_float(whole, "scan.png", 1), 16)
    reduced = read_image(tmp_path / "scan.png", 16, channels=1)
    assert np.abs(reduced - expected).max() < (0.03 if mode == "1" else 2 / 255)


def test_pixels_that_their_checks_need_whole_are_not_averaged_away(tmp_path: Path) -> None:
    """One coloured pixel in a grayscale model's image, one 32-bit value past 16 bits: a box
    average would hide either, so such images are read whole however large."""
    gray = np.full((900, 1200, 3), 120, np.uint8)
    gray[450, 600] = (121, 120, 120)
    Image.fromarray(gray, "RGB").save(tmp_path / "tinted.png")
    with pytest.raises(InputError, match="tinted.png: a colour image"):
        read_image(tmp_path / "tinted.png", 16, channels=1)
    wide = np.full((900, 1200), 30_000, np.int32)
    wide[450, 600] = 70_000
    Image.fromarray(wide, "I").save(tmp_path / "wide.tif")
    with pytest.raises(InputError, match=r"wide.tif: pixel values 30000\.\.70000 lie outside"):
        read_image(tmp_path / "wide.tif", 16, channels=1)


# Every mode Pillow writes as TIFF but RGBX, which reads back as RGB, and LAB, which Pillow
# cannot convert to RGB or gray: such a TIFF is unreadable however it is turned.
TIFF_MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "I;16B", "F"]


def random_image(mode: str, width: int, height: int) -> Image.Image:
    """Random pixels of `mode` over its whole range: converted from 8 bits, a 16-bit or float
    image would hold a 256th of it, and an F image values over 1."""
    rng = np.random.default_rng(0)
    if mode == "F":
        return Image.fromarray(rng.random((height, width), np.float32), "F")
    values = rng.integers(0, 65536, (height, width))
    if mode == "I":
        return Image.fromarray(values.astype(np.int32), "I")
    if mode.startswith("I;16"):
        order = ">u2" if mode == "I;16B" else "<u2"
        return Image.frombytes(mode, (width, height), values.astype(order).tobytes())
    colours = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(colours, "RGB").convert(mode)


def save_turned_and_upright(image: Image.Image, orientation: int, folder: Path) -> None:
    """turned.tif: `image` as stored, tagged to be shown turned by `orientation`; upright.tif:
    the picture shown, stored upright and untagged."""
    from anomaly_vae.data.images import _EXIF_TURNS

    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(folder / "turned.tif", exif=exif)
    image.transpose(_EXIF_TURNS[orientation]).save(folder / "upright.tif")


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
@pytest.mark.parametrize("mode", TIFF_MODES)
def test_a_tiff_whose_orientation_swaps_its_sides_reads_upright(
    tmp_path: Path, mode: str, orientation: int
) -> None:
    """Pillow turns a TIFF upright itself as it loads it. Opened by name, a non-square L, P,
    RGBA, CMYK or 16-bit one was memory-mapped at its upright size, its rows cut at the wrong
    width, and refused: "unreadable image (box can't exceed original image size)"."""
    save_turned_and_upright(random_image(mode, 12, 8), orientation, tmp_path)
    np.testing.assert_array_equal(
        read_image(tmp_path / "turned.tif", 6, channels=3),
        read_image(tmp_path / "upright.tif", 6, channels=3),
    )


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_a_tiff_mask_whose_orientation_swaps_its_sides_reads_upright(
    tmp_path: Path, orientation: int
) -> None:
    """Memory-mapped as an image was (above), such a mask was read scrambled, without a word."""
    defects = np.random.default_rng(0).random((8, 12)) < 0.5
    save_turned_and_upright(Image.fromarray(defects).convert("L"), orientation, tmp_path)
    turned, upright = read_mask(tmp_path / "turned.tif", 6), read_mask(tmp_path / "upright.tif", 6)
    assert upright.any() and not upright.all()
    np.testing.assert_array_equal(turned, upright)


def test_a_file_pillow_cannot_identify_is_named_by_its_path(tmp_path: Path) -> None:
    """Given the open file (`_open`), Pillow named it by the file object's repr:
    "cannot identify image file <_io.BufferedReader name='...'>"."""
    (tmp_path / "notes.png").write_text("not an image")
    for read, what in (
        (lambda p: read_image(p, 8, 1), "image"),
        (lambda p: read_mask(p, 8), "mask"),
    ):
        with pytest.raises(InputError) as refused:
            read(tmp_path / "notes.png")
        assert str(refused.value) == (
            f"{tmp_path / 'notes.png'}: unreadable {what} (cannot identify image file "
            f"'{tmp_path / 'notes.png'}')"
        )


def test_an_image_too_large_for_pillow_is_one_unreadable_line(tmp_path, monkeypatch) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8), "L").save(tmp_path / "huge.png")
    # Pillow refuses twice this many pixels as a decompression bomb (179 million by default).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    with pytest.raises(InputError, match="huge.png: unreadable image .*exceeds limit"):
        read_image(tmp_path / "huge.png", 8, channels=1)
    with pytest.raises(InputError, match="huge.png: unreadable mask"):
        read_mask(tmp_path / "huge.png", 8)


def write_bilevel_png(path: Path, width: int, height: int, white: tuple[int, int]) -> None:
    """A 1-bit PNG, black but for a white (columns, rows) rectangle at the top left, written row
    by row: some 100 million pixels take a few kilobytes, and no memory to make."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row_bytes = (width + 7) // 8
    lit = bytearray(row_bytes)
    lit[: white[0] // 8] = b"\xff" * (white[0] // 8)
    lit_row, dark_row = b"\0" + bytes(lit), b"\0" + bytes(row_bytes)  # each row: filter 0
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(lit_row if y < white[1] else dark_row) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", data + packer.flush())
        + chunk(b"IEND", b"")
    )


# Reads the image in a fresh process, whose peak memory is then this read's (and its imports'):
# VmHWM, which starts anew at exec, where ru_maxrss keeps the forking parent's.
READ_LARGE = """
import json, re, sys, warnings
from pathlib import Path
from PIL import Image
from anomaly_vae.data.images import read_image

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    pixels = read_image(sys.argv[1], 64, channels=1)
    ours = [str(w.category.__name__) for w in caught]
    Image.open(sys.argv[1]).close()  # Pillow's own warning is left alone elsewhere
    theirs = [str(w.category.__name__) for w in caught[len(ours):]]
print(json.dumps({
    "ours": ours, "theirs": theirs, "quarters": [
        float(pixels[0, :32, :32].mean()), float(pixels[0, 32:, :].mean()),
        float(pixels[0, :, 32:].mean()),
    ],
    "peak_mb": int(re.search(r"VmHWM:\\s*(\\d+)", Path("/proc/self/status").read_text())[1]) / 1024,
}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="measures memory in /proc")
def test_a_large_image_is_read_without_pillows_warning_and_in_little_memory(
    tmp_path: Path,
) -> None:
    """Pillow printed DecompressionBombWarning amid `score`'s output for every image of 89 to
    179 million pixels, and reading one at full size as float32 took over a gigabyte."""
    import subprocess
    import sys

    path = tmp_path / "line-scan.png"
    write_bilevel_png(path, 10_000, 9_000, white=(5_000, 4_500))  # 90 Mpx, white top-left
    assert path.stat().st_size < 100_000
    child = subprocess.run(
        [sys.executable, "-c", READ_LARGE, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert child.stderr == ""
    result = json.loads(child.stdout)
    assert result["ours"] == []
    assert result["theirs"] == ["DecompressionBombWarning"]
    assert result["quarters"] == pytest.approx([1.0, 0.0, 0.0], abs=0.01)
    assert result["peak_mb"] < 500  # imports about 150, the 1-bit image as 8 bits 90, twice


@pytest.mark.parametrize("kind", ["16-bit image", "mask"])
def test_a_large_image_or_mask_is_converted_a_strip_at_a_time_to_the_same_pixels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """16-bit images and masks are read whole (their checks need every pixel), and were
    converted to float32 whole too: 1.3 GB to read a 10000 x 10000 16-bit PNG, 1 GB a mask."""
    import tracemalloc

    from anomaly_vae.data import images

    rows, columns = np.mgrid[0:1500, 0:2000]
    shade = 32768 + 30000 * np.sin(columns / 90) * np.cos(rows / 70)
    path = tmp_path / "large.png"
    if kind == "mask":
        Image.fromarray(((shade > 50000) * 255).astype(np.uint8)).save(path)
    else:
        Image.fromarray(shade.astype(np.uint16)).save(path)
    with Image.open(path) as img:
        if kind == "mask":
            whole = images.resize(images._marked(img)[None].astype(np.float32), 16)[0] >= 0.5
        else:
            whole = images.resize(images._to_float(img, path, 1), 16)
    monkeypatch.setattr(images, "_STRIP_PIXELS", 1 << 16, raising=False)  # 33 rows
    tracemalloc.start()
    try:
        read = read_mask(path, 16) if kind == "mask" else read_image(path, 16, channels=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(read, whole)
    assert peak < 2**20  # as float32 whole: 12 MB


def test_a_folder_is_images_unless_it_holds_parquet_files_and_no_images(tmp_path: Path) -> None:
    table = tmp_path / "table"
    (table / "day=1").mkdir(parents=True)
    pd.DataFrame({"a": [1.0]}).to_parquet(table / "day=1" / "part-0.parquet")
    assert not is_image_source(table)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(photos / "a.png")
    assert is_image_source(photos)
    pd.DataFrame({"score": [1.0]}).to_parquet(photos / "scores.parquet")  # an output put there
    assert is_image_source(photos)
    (tmp_path / "empty").mkdir()
    assert is_image_source(tmp_path / "empty")  # whose error then says what it expected


def test_holdout_is_a_deterministic_choice_by_file_name(tmp_path: Path) -> None:
    from pipelines.demo import write_digits
    from pipelines.train_images import split_images

    train_dir, _ = write_digits(tmp_path)
    config = Config.model_validate(
        {"data": {"path": str(train_dir)}, "image": {"size": 8, "holdout_fraction": 0.3}}
    )
    split = split_images(config)
    used = {Path(item.path).name for item in [*split.train, *split.validation]}
    items = list_images(train_dir, config.image).items
    held = {Path(i.path).name for i in items if is_held_out(i, 0.3, config.training.seed)}
    assert used.isdisjoint(held) and len(used) + len(held) == len(items) == 124
    assert split.held_out == len(held) and 0.15 < len(held) / len(items) < 0.45
    # The same name is held out wherever the file lies.
    assert is_held_out(ImageItem("/x/y/0000.png"), 0.3, 0) == is_held_out(
        ImageItem("0000.png"), 0.3, 0
    )


def test_digits_score_one_row_per_image_and_separate_other_digits(digits_model, tmp_path) -> None:
    model_uri, tracking, test_dir = digits_model
    out = tmp_path / "scores.parquet"
    result = run_cli(
        "score",
        model_uri,
        test_dir,
        "-o",
        out,
        "--maps",
        tmp_path / "maps",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    scored = pd.read_parquet(out)
    files = sorted(str(p) for p in test_dir.rglob("*.png"))
    assert sorted(scored["path"]) == files
    assert f"scored {len(files)} images" in result.stderr
    assert list(scored.columns) == ["path", "recon_score", "kl_score", "score", "is_anomaly"]
    anomalous = ~scored["path"].str.contains("/good/")
    assert roc_auc_score(anomalous, scored["score"]) > 0.9
    maps = sorted(p.relative_to(tmp_path / "maps") for p in (tmp_path / "maps").rglob("*.png"))
    assert maps == sorted(Path(f).relative_to(test_dir) for f in files)
    assert Image.open(tmp_path / "maps" / maps[0]).mode == "RGB"

    result = run_cli(
        "evaluate", model_uri, test_dir, "--label-from", "folder", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    reported = dict(
        line.split()[:2] for line in result.stdout.splitlines() if line.startswith("auroc")
    )
    assert float(reported["auroc"]) == pytest.approx(
        roc_auc_score(anomalous, scored["score"]), abs=1e-4
    )


def test_training_logs_the_vae_figures(digits_model) -> None:
    model_uri, tracking, _ = digits_model
    mlflow.set_tracking_uri(tracking)
    client = mlflow.MlflowClient(tracking)
    version = client.get_model_version_by_alias(model_uri.split("/")[1].split("@")[0], "champion")
    figures = {Path(a.path).name for a in client.list_artifacts(version.run_id, "figures")}
    assert figures == {
        "reconstructions.png", "latent_scatter.png", "latent_decodes.png", "validation_scores.png"
    }  # fmt: skip


def test_pyfunc_scores_a_path_column_like_the_cli(digits_model, tmp_path) -> None:
    model_uri, tracking, test_dir = digits_model
    files = sorted(str(p) for p in (test_dir / "digit_7").glob("*.png"))[:4]
    result = run_cli(
        "score",
        model_uri,
        test_dir / "digit_7",
        "-o",
        tmp_path / "s.csv",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    mlflow.set_tracking_uri(tracking)
    served = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"path": files}))
    cli = pd.read_csv(tmp_path / "s.csv").set_index("path").loc[files]
    assert np.allclose(served["score"], cli["score"])

    # In Python, scores come back on the input's index, as a table model's do.
    from pipelines.score import load_model

    detector = load_model(model_uri, tracking)
    picked = pd.DataFrame({"path": files}, index=[7, 3, 11, 5])
    scored = detector.score_frame(picked)
    assert scored.index.equals(picked.index)
    assert np.allclose(scored["score"], cli["score"])
    with pytest.raises(InputError, match="no image paths to score"):
        detector.score_frame(picked.iloc[:0])
    # A GIF, which `score` refuses in a folder, was scored when named in a path column.
    gif = tmp_path / "a.gif"
    Image.open(files[0]).save(gif)
    with pytest.raises(InputError) as info:
        detector.score_frame(pd.DataFrame({"path": [*files, str(gif)]}), source="request")
    assert str(info.value) == (
        f"request: column 'path', row 5: {gif} is a .gif file, which is not read as an image "
        "(PNG, JPEG, BMP, TIFF or WebP)"
    )


def test_pixel_auroc_matches_sklearn_on_pasted_defects(digits_model, tmp_path) -> None:
    """Bright squares pasted on normal digits, a BMP image with its PNG mask beside it."""
    from pipelines.evaluate_images import evaluate_images
    from pipelines.score import load_model

    model_uri, tracking, test_dir = digits_model
    shutil.copytree(test_dir / "good", tmp_path / "good")
    (tmp_path / "defect").mkdir()
    for i, source in enumerate(sorted((test_dir / "good").glob("*.png"))[:10]):
        pixels = np.asarray(Image.open(source)).copy()
        mask = np.zeros_like(pixels)
        r, c = divmod(i, 3)
        mask[r * 2 : r * 2 + 3, c * 2 : c * 2 + 3] = 255
        pixels[mask > 0] = 255 - pixels[mask > 0]
        Image.fromarray(pixels, "L").save(tmp_path / "defect" / f"{i}.bmp")
        Image.fromarray(mask, "L").save(tmp_path / "defect" / f"{i}.png")

    evaluation = evaluate_images(model_uri, tmp_path, tracking_uri=tracking)

    detector = load_model(model_uri, tracking)
    items = detector.list_images(tmp_path).items
    maps = np.concatenate([s.maps for _, _, s in detector.scored_batches(items)])
    truth = np.stack([read_mask(i.mask, 8) if i.mask else np.zeros((8, 8), bool) for i in items])
    expected = roc_auc_score(truth.ravel(), maps.ravel())
    assert evaluation.metrics["pixel_auroc"] == pytest.approx(expected, abs=1e-12)
    assert expected > 0.6
    assert "pixel AUROC over the masks" not in evaluation.note  # every defect has its mask
    # `runs` shows it, an image model's key figure (it showed test.f1 last).
    from pipelines.runs import list_runs

    listed = list_runs(tracking_uri=tracking).set_index("run_id")
    assert listed.loc[evaluation.run_id, "test.pixel_auroc"] == pytest.approx(expected)
    # Named for the folder with its parent, as training runs are: test/ folders abound.
    title = f"{tmp_path.parent.name}/{tmp_path.name}"
    assert listed.loc[evaluation.run_id, "name"].endswith(f" on {title}")

    # Masks for some defects only: the others cannot count, which the note now says.
    for i in range(3, 10):
        (tmp_path / "defect" / f"{i}.png").unlink()
    evaluation = evaluate_images(model_uri, tmp_path, tracking_uri=tracking)
    assert evaluation.note.splitlines()[-1] == (
        "pixel AUROC over the masks of 3 of 10 anomalous images; image.mask_rule "
        f"'{{stem}}.png' found none for the others (the first: {tmp_path / 'defect' / '3.bmp'})"
    )


def test_a_folder_without_normal_images_is_refused_as_unlabelled(digits_model, tmp_path) -> None:
    # "the labels mark 20 of 20 as anomalies", of a folder of good images with no labels.
    from pipelines.evaluate_images import evaluate_images

    model_uri, tracking, test_dir = digits_model
    batch = tmp_path / "batch_0612"
    shutil.copytree(test_dir / "good", batch)
    with pytest.raises(InputError) as info:
        evaluate_images(model_uri, batch, tracking_uri=tracking)
    assert str(info.value) == (
        f"{batch}: no images under a folder named good, so none labelled normal to evaluate "
        "against; put the normal ones in such a folder, or give --label-from a path,label CSV"
    )


def test_masks_whose_defects_vanish_at_the_models_size_say_why_pixel_auroc_is_missing(
    digits_model, tmp_path
) -> None:
    """One-pixel defects on 32x32 images are under half a pixel of an 8x8 model: pixel AUROC
    went missing though masks exist, and evaluate said nothing."""
    from pipelines.evaluate_images import evaluate_images

    model_uri, tracking, test_dir = digits_model
    shutil.copytree(test_dir / "good", tmp_path / "good")
    (tmp_path / "defect").mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8), "L").save(
            tmp_path / "defect" / f"{i}.bmp"
        )
        mask = np.zeros((32, 32), np.uint8)
        mask[5, 5] = 255
        Image.fromarray(mask, "L").save(tmp_path / "defect" / f"{i}.png")

    evaluation = evaluate_images(model_uri, tmp_path, tracking_uri=tracking)

    assert "pixel_auroc" not in evaluation.metrics
    assert evaluation.note.splitlines()[-1] == (
        "no pixel AUROC: at the model's 8x8 resolution the masks mark no pixel as a defect"
    )


def test_a_mask_of_another_size_than_its_image_is_one_line_and_logs_nothing(
    digits_model, tmp_path
) -> None:
    """Both were resized to the model's square: a mask of another shape was stretched over
    its image and pixel AUROC computed against it without a word."""
    model_uri, tracking, test_dir = digits_model
    shutil.copytree(test_dir / "good", tmp_path / "good")
    (tmp_path / "defect").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "defect" / "a.bmp")
    Image.fromarray(np.full((8, 4), 255, np.uint8), "L").save(tmp_path / "defect" / "a.png")
    runs = mlflow.MlflowClient(tracking).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking).search_experiments()]
    )

    result = run_cli("evaluate", model_uri, tmp_path, "--tracking-uri", tracking)

    assert result.exit_code != 0
    assert result.stderr.strip() == (
        f"Error: {(tmp_path / 'defect' / 'a.png').resolve()}: a mask of 4x8 pixels, but its "
        f"image {tmp_path / 'defect' / 'a.bmp'} is 8x8; a mask marks the pixels of its own image"
    )
    after = mlflow.MlflowClient(tracking).search_runs(
        [e.experiment_id for e in mlflow.MlflowClient(tracking).search_experiments()]
    )
    assert len(after) == len(runs)


def test_a_mask_is_compared_with_its_image_as_both_are_shown(tmp_path: Path) -> None:
    """The sizes compared are those viewers show: a mask stored on its side, with the turn in
    its EXIF tag, is its upright image's size (Pillow turns a TIFF's size itself)."""
    Image.fromarray(np.zeros((4, 8), np.uint8), "L").save(tmp_path / "a.png")  # 8 wide, 4 high
    exif = Image.Exif()
    exif[0x0112] = 6
    for suffix in (".jpg", ".tif"):
        Image.fromarray(np.zeros((8, 4), np.uint8), "L").save(tmp_path / f"m{suffix}", exif=exif)
        read_mask(tmp_path / f"m{suffix}", 8, tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 4), np.uint8), "L").save(tmp_path / "unturned.png")
    with pytest.raises(InputError, match="a mask of 4x8 pixels, but its image .* is 8x4"):
        read_mask(tmp_path / "unturned.png", 8, tmp_path / "a.png")


@pytest.mark.parametrize("damage", ["truncated", "not an image"])
def test_unreadable_image_is_one_line_naming_the_file_and_writes_nothing(
    digits_model, tmp_path, damage
) -> None:
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir / "digit_3", folder)
    bad = sorted(folder.glob("*.png"))[5]
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:40])
    else:
        bad.write_text("hello")
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"

    result = run_cli(
        "score", model_uri, folder, "-o", out, "--maps", maps, "--tracking-uri", tracking
    )

    assert result.exit_code != 0
    assert str(bad) in result.stderr and "unreadable image" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no table, no maps, no temp


def test_empty_folder_and_colour_images_for_a_grayscale_model(digits_model, tmp_path) -> None:
    model_uri, tracking, _ = digits_model
    (tmp_path / "empty").mkdir()
    result = run_cli(
        "score", model_uri, tmp_path / "empty", "-o", tmp_path / "s.csv", "--tracking-uri", tracking
    )
    assert result.exit_code != 0 and "no PNG, JPEG, BMP, TIFF or WebP images" in result.stderr

    (tmp_path / "colour").mkdir()
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    Image.fromarray(red, "RGB").save(tmp_path / "colour" / "red.png")
    result = run_cli(
        "score",
        model_uri,
        tmp_path / "colour",
        "-o",
        tmp_path / "s.csv",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code != 0 and "red.png: a colour image" in result.stderr
    assert not (tmp_path / "s.csv").exists()


def test_evaluation_mistakes_are_one_line_errors(digits_model, tmp_path) -> None:
    model_uri, tracking, test_dir = digits_model
    result = run_cli("evaluate", model_uri, test_dir, "--held-out-only", "--tracking-uri", tracking)
    assert result.exit_code != 0 and "trained with no image.holdout_fraction" in result.stderr
    result = run_cli(
        "evaluate",
        model_uri,
        test_dir / "good",
        "--label-from",
        "folder",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code != 0 and "both normal and anomalous" in result.stderr


def test_calibrate_and_evaluate_on_held_out_images_say_how_many_they_kept(tmp_path) -> None:
    """calibrate had no --held-out-only: on a folder that held the training images, an
    fpr<=0.05 threshold flagged 6.9% of the normals the model had not seen. evaluate's kept
    the normals by file name without saying how many."""
    from pipelines.demo import write_digits

    train_dir, test_dir = write_digits(tmp_path / "digits")
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = run_cli(
        "train", REPO / "configs" / "digits.yaml", "--set", f"data.path={train_dir}",
        "--set", "image.holdout_fraction=0.3", "--set", "training.epochs=3",
        "--tracking-uri", tracking,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model_uri = result.stdout.strip()
    names = sorted(train_dir.rglob("*.png"))
    held = [p for p in names if is_held_out(ImageItem(str(p)), 0.3, 0)]
    said = (
        f"--held-out-only kept {len(held)} of the {len(names)} normal images, those whose file "
        "names image.holdout_fraction held out of training"
    )
    result = run_cli(
        "calibrate", model_uri, train_dir, "--strategy", "fpr<=0.05", "--held-out-only",
        "--tracking-uri", tracking,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    first, threshold, *_ = result.stderr.splitlines()
    assert first == said and f" on {len(held)} images: " in threshold
    # A flat folder names no normal folder: its images are a batch nobody labelled, kept by
    # name too (all of them were kept as anomalies, the threshold chosen on training images).
    flat = tmp_path / "batch"
    shutil.copytree(train_dir / "good", flat)
    result = run_cli(
        "calibrate", model_uri, flat, "--strategy", "fpr<=0.05", "--held-out-only",
        "--tracking-uri", tracking,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[0] == said
    everything = sorted(test_dir.parent.rglob("*.png"))
    normal = [p for p in everything if p.parent.name == "good"]
    kept = [p for p in normal if is_held_out(ImageItem(str(p)), 0.3, 0)]
    evaluation = run_cli(
        "evaluate", model_uri, test_dir.parent, "--held-out-only", "--tracking-uri", tracking
    )
    assert evaluation.exit_code == 0, evaluation.output
    assert f"--held-out-only kept {len(kept)} of the {len(normal)} normal images" in (
        evaluation.stderr
    )
    # Normal images none of whose names was held out: nothing to choose or judge a threshold
    # on (calibrate chose one on the anomalies alone).
    trained = tmp_path / "trained"
    (trained / "good").mkdir(parents=True)
    for path in set(names) - set(held):
        shutil.copy(path, trained / "good" / path.name)
    shutil.copytree(test_dir / "digit_3", trained / "digit_3")
    for command in (["calibrate", "--strategy", "auto"], ["evaluate"]):
        result = run_cli(
            command[0], model_uri, trained, *command[1:], "--held-out-only",
            "--tracking-uri", tracking,
        )  # fmt: skip
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: {trained}: --held-out-only kept none of the {len(names) - len(held)} "
            "normal images: image.holdout_fraction held out none of their file names\n"
        )


def test_evaluate_refuses_the_options_of_the_other_input_kind(
    digits_model, breast_cancer_model, breast_cancer_files
) -> None:
    """Ignored without a word, --held-out-only on a table evaluated every row, and --label
    (calibrate's way to name an image CSV) on a folder read no labels from it;
    --allow-extra-columns on a folder was ignored."""
    image_uri, image_tracking, test_dir = digits_model
    table_uri, table_tracking = breast_cancer_model
    table = breast_cancer_files[1]
    for model, data, tracking, option, said in (
        (image_uri, test_dir, image_tracking, ["--label", "labels.csv"], "--label names a"),
        (table_uri, table, table_tracking, ["--held-out-only"], "--held-out-only is for images"),
        (table_uri, table, table_tracking, ["--label-from", "folder"], "--label-from is for"),
        (image_uri, test_dir, image_tracking, ["--allow-extra-columns"], "--allow-extra-col"),
        # A mistyped folder was refused as a table given --label-from.
        (image_uri, test_dir / "typo", image_tracking, ["--label-from", "folder"], "file not"),
    ):
        result = run_cli("evaluate", model, data, *option, "--tracking-uri", tracking)
        assert result.exit_code == 1, option
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"Error: {data}: {said}"), line


@pytest.mark.parametrize(
    "command",
    [
        ["score", "-o", "scores.csv", "--keep-columns"],
        ["score", "-o", "scores.csv", "--allow-extra-columns"],
        ["calibrate", "--allow-extra-columns"],
        ["calibrate", "--anomaly-value", "yes"],
        ["evaluate", "--anomaly-value", "yes"],
    ],
)
def test_score_and_calibrate_refuse_table_options_on_images(
    digits_model, tmp_path, monkeypatch, command
) -> None:
    """Ignored without a word: the scores came back without the columns asked for, as
    evaluate's --allow-extra-columns on images was before it was refused."""
    model_uri, tracking, test_dir = digits_model
    monkeypatch.chdir(tmp_path)
    versions = len(mlflow.MlflowClient(tracking).search_model_versions())
    name, *options = command
    result = run_cli(name, model_uri, test_dir, *options, "--tracking-uri", tracking)
    assert result.exit_code == 1
    flag = next(o for o in reversed(options) if o.startswith("--"))
    assert result.stderr == f"Error: {test_dir}: {flag} is for tables\n"
    assert list(tmp_path.iterdir()) == []
    assert len(mlflow.MlflowClient(tracking).search_model_versions()) == versions


def test_heatmaps_keep_each_image_s_own_shape_and_orientation(digits_model, tmp_path) -> None:
    """Heatmaps were drawn on the model's square input: a wide photo's was squeezed square,
    and where a defect lay on the photo had to be guessed. Now each is drawn on its image as
    viewers show it: small ones enlarged by a whole factor, large ones shrunk to 1024 px on
    the longer side, a photo stored on its side turned upright."""
    model_uri, tracking, _ = digits_model
    folder = tmp_path / "in"
    folder.mkdir()
    halves = np.zeros((40, 80), np.uint8)
    halves[:, 40:] = 255  # dark on the left, bright on the right
    Image.fromarray(halves).save(folder / "wide.png")
    Image.fromarray(np.repeat(np.repeat(halves, 40, 0), 40, 1)).save(folder / "large.png")
    on_its_side = Image.Exif()
    on_its_side[0x0112] = 6  # stored 60 wide and 30 high, shown turned a quarter clockwise
    stored = np.zeros((30, 60), np.uint8)
    stored[:, :30] = 255  # its stored left half: shown on top
    Image.fromarray(stored).save(folder / "turned.jpg", exif=on_its_side)
    maps = tmp_path / "maps"
    result = run_cli(
        "score",
        model_uri,
        folder,
        "-o",
        tmp_path / "scores.csv",
        "--maps",
        maps,
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    sizes = {path.name: Image.open(path).size for path in maps.iterdir()}
    assert sizes == {"wide.png": (240, 120), "large.png": (1024, 512), "turned.png": (120, 240)}
    for name in ("wide.png", "large.png"):
        grey = np.asarray(Image.open(maps / name), dtype=float).mean(axis=2)
        width = grey.shape[1]
        # The picture beneath the heat: 0.55 of its grey, 140 levels apart between the halves.
        assert grey[:, : width // 4].mean() + 60 < grey[:, -width // 4 :].mean()
    turned = np.asarray(Image.open(maps / "turned.png"), dtype=float).mean(axis=2)
    assert turned[-60:].mean() + 60 < turned[:60].mean()  # bright on top, as shown


def test_the_maps_folder_gets_the_permissions_of_the_umask(digits_model, tmp_path) -> None:
    """Made by mkdtemp and renamed into place, the folder was owner-only (0700) whatever the
    umask: nobody else could open the heatmaps."""
    model_uri, tracking, test_dir = digits_model
    previous = os.umask(0o022)
    try:
        result = run_cli(
            "score",
            model_uri,
            test_dir,
            "-o",
            tmp_path / "scores.csv",
            "--maps",
            tmp_path / "maps",
            "--tracking-uri",
            tracking,
        )
    finally:
        os.umask(previous)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "maps").stat().st_mode) == 0o755


def test_maps_named_by_a_link_to_an_empty_folder_land_in_that_folder(
    digits_model, tmp_path
) -> None:
    """The link could not be replaced by the maps folder: once every image had scored,
    NotADirectoryError, and the maps were left in a temporary folder beside the link."""
    model_uri, tracking, test_dir = digits_model
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    result = run_cli(
        "score",
        model_uri,
        test_dir / "good",
        "-o",
        tmp_path / "scores.csv",
        "--maps",
        tmp_path / "link",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real", "scores.csv"]
    assert (tmp_path / "link").is_symlink()
    images = sorted(p.with_suffix(".png").name for p in (test_dir / "good").iterdir())
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == images


def test_a_table_given_to_an_image_model_is_one_line_and_writes_nothing(
    digits_model, tmp_path
) -> None:
    model_uri, tracking, _ = digits_model
    table = tmp_path / "rows.csv"
    pd.DataFrame({"a": [1.0, 2.0], "label": [0, 1]}).to_csv(table, index=False)
    parts = tmp_path / "parts"  # a table in Parquet parts, as Spark writes one
    parts.mkdir()
    pd.read_csv(table).to_parquet(parts / "part-0.parquet")
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    versions = len(client.search_model_versions("name='digits'"))
    # calibrate said "expected a folder of images or an *-idx3-ubyte(.gz) file" (for the
    # parts, "no ... images in this folder"), naming no model.
    commands = [
        (["score", "-o", tmp_path / "s.csv"], table),
        (["evaluate", "--label", "label"], table),
        (["calibrate"], table),
        (["calibrate"], parts),
    ]
    for command, data in commands:
        result = run_cli(command[0], model_uri, data, *command[1:], "--tracking-uri", tracking)
        assert result.exit_code != 0, command
        assert result.stderr.strip() == (
            f"Error: {data}: model '{model_uri}' reads images: give a folder or IDX file"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["parts", "rows.csv"]
    assert len(client.search_model_versions("name='digits'")) == versions  # none registered


def test_image_report_shows_the_worst_images_with_heatmaps(digits_model, tmp_path) -> None:
    model_uri, tracking, test_dir = digits_model
    report = tmp_path / "report.html"
    result = run_cli(
        "evaluate", model_uri, test_dir, "-o", report, "--tracking-uri", tracking
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    html = report.read_text()
    assert 'id="worst_images"' in html and 'id="roc_pr"' in html
    assert re.search(r"<b>data</b>: [^<]* \(234 images, 180 anomalies\)", html)
    assert html.count('src="data:image/png;base64,') == 6  # five common figures, worst images
    run_id = result.stderr.strip().split()[-1]
    logged = mlflow.MlflowClient(tracking_uri=tracking).list_artifacts(run_id, "figures")
    assert "figures/worst_images.png" in {a.path for a in logged}


def test_a_pixel_whose_term_is_not_finite_is_drawn_without_heat() -> None:
    """Cast to a colour's index, NaN was -2^63: `score --maps` ended in an IndexError."""
    from anomaly_vae.figures import overlay

    heat = np.full((4, 4), 0.5)
    cold = overlay(np.zeros((1, 4, 4)), np.where(np.eye(4, dtype=bool), 0.0, heat), 1.0)
    assert np.array_equal(
        overlay(np.zeros((1, 4, 4)), np.where(np.eye(4, dtype=bool), np.nan, heat), 1.0), cold
    )


def test_the_report_shows_the_worst_images_at_their_own_shape(tmp_path) -> None:
    """The report drew each image and its map on the model's square: a tall tile squeezed."""
    from anomaly_vae.evaluation.sections import WorstImages

    tall = tmp_path / "tall.png"
    Image.fromarray(np.zeros((300, 100), np.uint8)).save(tall)
    worst = WorstImages(map_scale=1.0)
    worst.add(np.zeros((1, 1, 8, 8), np.float32), np.ones((1, 8, 8)), [str(tall)],
              np.array([5.0]), np.array([True]))  # fmt: skip
    figure = worst.section().figure
    shapes = [ax.get_images()[0].get_array().shape for ax in figure.axes]
    assert shapes == [(256, 85), (256, 85, 3)]  # the image, then its map over it


def test_the_worst_images_figure_shows_file_names_with_dollar_signs_as_written() -> None:
    import io

    from anomaly_vae.evaluation.figures import worst_images_figure

    names = ["/data/good/$x^$lot.png", "/data/crack/$5 and $10.png"]
    pixels = np.full((2, 1, 8, 8), 0.5, np.float32)
    figure = worst_images_figure(
        pixels, np.zeros((2, 8, 8)), names, np.array([3.0, 2.0]), np.array([False, True]), 1.0
    )
    figure.savefig(io.BytesIO(), format="png")  # parsed as TeX, the first raised ValueError
    titles = [ax.get_title().splitlines()[:2] for ax in figure.axes[:2]]
    assert titles == [["good", "$x^$lot.png"], ["crack", "$5 and $10.png"]]
    assert not any(ax.title.get_parse_math() for ax in figure.axes[:2])


def test_the_worst_images_are_titled_with_their_folder_below_the_one_they_share() -> None:
    """Titled with the last two parts of their paths, tiles read `Imgs/exp6_num_98402.jpg`:
    neither their class nor where to find them."""
    from anomaly_vae.evaluation.figures import worst_images_figure

    def titles(names: list[str], root: str | None) -> list[list[str]]:
        figure = worst_images_figure(
            np.zeros((len(names), 1, 8, 8)), np.zeros((len(names), 8, 8)), names,
            np.arange(len(names), 0, -1.0), np.ones(len(names), bool), 1.0, root,
        )  # fmt: skip
        return [ax.get_title().splitlines()[:2] for ax in figure.axes[: len(names)]]

    names = [
        "/data/tiles/MT_Break/Imgs/exp6_num_98402.jpg",
        "/data/tiles/MT_Free/Imgs/a_very_long_file_name_indeed_0001.jpg",
    ]
    expected = [
        ["MT_Break/Imgs", "exp6_num_98402.jpg"],
        ["MT_Free/Imgs", "…le_name_indeed_0001.jpg"],  # 24 characters, the end kept
    ]
    assert titles(names, "/data/tiles") == titles(names, None) == expected
    # The top images all of one class keep it, below the folder evaluated.
    one_class = ["/data/tiles/MT_Break/Imgs/a.jpg", "/data/tiles/MT_Break/Imgs/b.jpg"]
    assert titles(one_class, "/data/tiles") == [
        ["MT_Break/Imgs", "a.jpg"],
        ["MT_Break/Imgs", "b.jpg"],
    ]
    assert titles(["/data/tiles/c.jpg"], "/data/tiles") == [["tiles", "c.jpg"]]


@pytest.mark.shared_data
def test_mnist_one_digit_two_epochs(shared_data, tmp_path) -> None:
    mnist = shared_data / "images" / "mnist"
    tracking = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    result = run_cli(
        "train",
        REPO / "configs" / "mnist.yaml",
        "--set",
        f"data.path={mnist / 'train-images-idx3-ubyte.gz'}",
        "--set",
        "image.normal_digits=[1]",
        "--set",
        "training.epochs=2",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    model_uri = result.stdout.strip().splitlines()[-1]
    result = run_cli(
        "evaluate", model_uri, mnist / "t10k-images-idx3-ubyte.gz", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    auroc = float(
        next(line.split()[1] for line in result.stdout.splitlines() if line.startswith("auroc"))
    )
    assert auroc > 0.8


def test_calibrate_an_image_model_on_a_labelled_folder(digits_model) -> None:
    model_uri, tracking, test_dir = digits_model
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    champion = client.get_model_version_by_alias("digits", "champion").version
    result = run_cli(
        "calibrate", model_uri, test_dir, "--strategy", "recall>=0.95", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    new_uri = result.stdout.strip().splitlines()[-1]
    assert new_uri.startswith("models:/digits/") and new_uri != f"models:/digits/{champion}"
    assert client.get_model_version_by_alias("digits", "champion").version == champion
    # The threshold line reports what the new threshold reaches on the folder's labels.
    reached = json.loads(result.stderr.split(" images: ", 1)[1].splitlines()[0])
    assert reached["recall"] >= 0.95
    scores = run_cli("score", new_uri, test_dir, "-o", test_dir.parent / "recalibrated.csv",
                     "--tracking-uri", tracking)  # fmt: skip
    assert scores.exit_code == 0, scores.output


def test_calibrate_an_image_model_on_a_folder_of_new_unlabelled_images(digits_model) -> None:
    """A flat folder of new images names no normal folder: every image read as an anomaly by
    its folder's name, `auto` chose f1 and stopped for want of normals. No normal among the
    folder names is no labels, as no anomaly among them is: estimated-f1."""
    model_uri, tracking, test_dir = digits_model
    batch = test_dir.parent / "new_images"
    batch.mkdir()
    for folder in ("good", "digit_3"):
        for path in sorted((test_dir / folder).glob("*.png")):
            shutil.copy(path, batch / f"{folder}_{path.name}")
    result = run_cli("calibrate", model_uri, batch, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert "by estimated-f1 on " in result.stderr
    reached = json.loads(result.stderr.split(" images: ", 1)[1].splitlines()[0])
    assert "estimated_anomaly_share" in reached and "recall" not in reached


@pytest.mark.parametrize("setting", ["model.hidden=[32]", "model.dropout=0.1"])
def test_table_only_model_settings_are_refused_for_images(setting: str, tmp_path: Path) -> None:
    from pipelines.demo import write_digits

    train_dir, _ = write_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("train", REPO / "configs" / "digits.yaml", "--set", f"data.path={train_dir}",
                     "--set", setting, "--tracking-uri", tracking)  # fmt: skip
    name = setting.split("=")[0]
    assert result.exit_code != 0 and f"{name}: tabular models only" in result.stderr


def test_recon_score_is_credited_with_the_input_complexity() -> None:
    torch.manual_seed(0)
    image = ImageConfig(size=16)
    model = build_image_model(image, Config(data={"path": "x"}).model.model_dump())
    blank = np.zeros((1, 1, 16, 16), np.float32)
    noise = np.random.default_rng(0).random((1, 1, 16, 16), np.float32)
    pixels = np.concatenate([blank, noise])
    bits = compressed_bits(pixels)
    assert bits[0] * 4 < bits[1]  # a blank image compresses; noise does not
    plain = score_images(model, pixels)
    credited = score_images(model, pixels, complexity_weight=0.5)
    np.testing.assert_allclose(credited.recon, plain.recon - 0.5 * np.log(2) * bits)
    np.testing.assert_array_equal(credited.kl, plain.kl)

    # The weight travels with the detector; one saved before it existed scores without it.
    detector = ImageDetector(model, image.model_copy(update={"complexity_weight": 0.25}), {})
    state = detector.to_state() | {"model": Config(data={"path": "x"}).model.model_dump()}
    weights = model.state_dict()
    assert ImageDetector.from_state(state, weights).image.complexity_weight == 0.25
    del state["image"]["complexity_weight"]
    assert ImageDetector.from_state(state, weights).image.complexity_weight == 0.0


def test_structural_dissimilarity_matches_ssim_computed_by_hand() -> None:
    """1 - SSIM at an interior pixel from the Gaussian-weighted window written out in NumPy,
    and the luminance-only closed form for two flat images."""
    from anomaly_vae.scoring import SSIM_C1, SSIM_C2, structural_dissimilarity

    rng = np.random.default_rng(0)
    x = rng.random((2, 1, 16, 16)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    sigma, row, col = 1.5, 8, 7  # the window (radius 5) lies inside the image
    got = structural_dissimilarity(torch.from_numpy(x), torch.from_numpy(y), sigma)
    assert got.shape == x.shape

    offsets = np.arange(-5, 6)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    window = np.outer(weights, weights) / weights.sum() ** 2
    a = x[1, 0, row - 5 : row + 6, col - 5 : col + 6].astype(np.float64)
    b = y[1, 0, row - 5 : row + 6, col - 5 : col + 6].astype(np.float64)
    mean_a, mean_b = (window * a).sum(), (window * b).sum()
    var_a = (window * (a - mean_a) ** 2).sum()
    var_b = (window * (b - mean_b) ** 2).sum()
    cov = (window * (a - mean_a) * (b - mean_b)).sum()
    ssim = ((2 * mean_a * mean_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mean_a**2 + mean_b**2 + SSIM_C1) * (var_a + var_b + SSIM_C2)
    )
    assert float(got[1, 0, row, col]) == pytest.approx(1 - ssim, abs=1e-5)

    flat_x, flat_y = torch.full((1, 1, 8, 8), 0.2), torch.full((1, 1, 8, 8), 0.6)
    luminance = (2 * 0.2 * 0.6 + SSIM_C1) / (0.2**2 + 0.6**2 + SSIM_C1)
    # float32: the local variances of a flat image come out near 1e-8, not 0
    got = structural_dissimilarity(flat_x, flat_y, 1.0)
    np.testing.assert_allclose(got, 1 - luminance, atol=1e-4)
    assert float(structural_dissimilarity(flat_x, flat_x, 1.0).abs().max()) < 1e-6


def test_structural_dissimilarity_keeps_float32_under_bfloat16_autocast() -> None:
    """Training at `bf16-mixed` runs the decoder in bfloat16; the SSIM statistics stay in
    float32, since their variances are differences of nearly equal means."""
    from anomaly_vae.scoring import structural_dissimilarity

    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.random((2, 1, 16, 16)).astype(np.float32))
    y = (x + torch.from_numpy(rng.normal(0, 0.05, x.shape).astype(np.float32))).clamp(0, 1)
    expected = structural_dissimilarity(x, y, 1.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = structural_dissimilarity(x, y.to(torch.bfloat16), 1.5)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got, structural_dissimilarity(x, y.to(torch.bfloat16).float(), 1.5))
    assert float((got - expected).abs().max()) < 0.05  # y rounded to bfloat16, nothing else


def test_smooth_maps_is_a_gaussian_blur_with_the_edges_replicated() -> None:
    """Every pixel of a blurred map, edges and corners included, equals the Gaussian window
    written out in NumPy over the map padded with its edge pixels; maps smaller than the
    window too, and the blur passes gradients back."""
    from anomaly_vae.scoring import smooth_maps

    rng = np.random.default_rng(1)
    for shape, sigma in [((3, 9, 14), 1.5), ((2, 4, 3), 2.0)]:
        maps = rng.random(shape)
        radius = int(np.ceil(3 * sigma))
        weights = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        window = np.outer(weights, weights) / weights.sum() ** 2
        padded = np.pad(maps, ((0, 0), (radius, radius), (radius, radius)), mode="edge")
        expected = np.zeros_like(maps)
        for row in range(shape[1]):
            for col in range(shape[2]):
                patch = padded[:, row : row + 2 * radius + 1, col : col + 2 * radius + 1]
                expected[:, row, col] = (patch * window).sum(axis=(1, 2))
        np.testing.assert_allclose(smooth_maps(torch.from_numpy(maps), sigma), expected)

    pixels = torch.zeros(1, 5, 5, requires_grad=True)
    smooth_maps(pixels, 1.0)[0, 2, 2].backward()
    assert float(pixels.grad.sum()) == pytest.approx(1.0)  # the window's weights sum to 1
    assert float(pixels.grad[0, 2, 2]) == pixels.grad.max()


def test_an_ssim_model_trains_scores_and_maps_the_digits(tmp_path: Path) -> None:
    """model.likelihood=ssim end to end: other digits score higher, a perfect reconstruction
    is the maps' zero, and the tabular trainer refuses the image-only likelihood."""
    from pipelines.demo import write_digits
    from pipelines.score import load_model

    train_dir, test_dir = write_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run_cli("train", REPO / "configs" / "digits.yaml", "--set", f"data.path={train_dir}",
                     "--set", "model.likelihood=ssim", "--set", "training.epochs=50",
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    detector = load_model(result.stdout.strip().splitlines()[-1], tracking)
    assert detector.model.likelihood == "ssim"
    items = detector.list_images(test_dir).items
    batches = list(detector.scored_batches(items))
    scores = np.concatenate([s.score for _, _, s in batches])
    anomalous = np.array([i.label for i in items], dtype=bool)
    assert roc_auc_score(anomalous, scores) > 0.9
    maps = np.concatenate([s.maps for _, _, s in batches])
    assert maps.min() >= -1e-6  # 1 - SSIM >= 0, so a map is the dissimilarity itself

    table = tmp_path / "table.csv"
    pd.DataFrame({"a": np.arange(40.0), "b": np.arange(40.0) % 3}).to_csv(table, index=False)
    refused = run_cli("train", REPO / "configs" / "digits.yaml", "--set", f"data.path={table}",
                      "--set", "model.likelihood=ssim", "--tracking-uri", tracking)  # fmt: skip
    assert refused.exit_code != 0
    assert "model.likelihood: ssim is for images" in refused.stderr


@pytest.mark.parametrize("maps", ["scores.csv", "."])
def test_maps_folder_that_is_or_holds_the_scores_file_is_one_line_and_writes_nothing(
    digits_model, tmp_path, maps
) -> None:
    """The heatmaps moved into place first, then the table's rename onto that folder (or the
    folder's over the table's temporary file) ended in a traceback, leaving both behind."""
    model_uri, tracking, test_dir = digits_model
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "score",
        model_uri,
        test_dir,
        "-o",
        out / "scores.csv",
        "--maps",
        out / maps,
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code != 0
    assert "--maps is or holds the scores file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(out.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(
    "mode, marked",
    [("F", 0.3), ("I;16", 1), ("I", 70_000), ("L", 1), ("RGB", (1, 0, 0)), ("P", 3)],
)
def test_every_non_zero_pixel_of_a_mask_is_a_defect(tmp_path: Path, mode: str, marked) -> None:
    """Read through 8-bit gray, a float mask's 0.3 and an RGB mask's dark red rounded to 0:
    the defect was dropped and its image's pixels counted as normal."""
    mask = Image.new(mode, (8, 8))
    if mode == "P":  # index 3 is a colour, index 0 black
        mask.putpalette([0, 0, 0] * 3 + [0, 0, 9] + [0, 0, 0] * 252)
    mask.paste(marked, (0, 0, 4, 8))
    mask.save(tmp_path / "mask.tif")
    read = read_mask(tmp_path / "mask.tif", 8)
    assert read[:, :4].all() and not read[:, 4:].any()


def _painted_layer(mode: str) -> Image.Image:
    """Strokes painted on a white layer that is transparent: two black rows (all of the top
    strip when read two rows at a time), and two red columns below them."""
    layer = np.full((8, 8, 4), (255, 255, 255, 0), np.uint8)
    layer[:2] = (0, 0, 0, 255)
    layer[2:, :2] = (255, 0, 0, 255)
    if mode == "P":  # as Paint.NET saves a mask of few colours: a palette, one index transparent
        indices = np.zeros((8, 8), np.uint8)
        indices[:2], indices[2:, :2] = 1, 2
        painted = Image.fromarray(indices, "P")
        painted.putpalette([255, 255, 255, 0, 0, 0, 255, 0, 0])
        painted.info["transparency"] = 0
        return painted
    return Image.fromarray(layer, "RGBA").convert(mode)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_a_mask_with_transparency_marks_what_is_painted_whatever_its_colour(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """The transparent layer's white marked the whole image as a defect, its alpha unread."""
    from anomaly_vae.data import images

    monkeypatch.setattr(images, "_STRIP_PIXELS", 16)  # two rows a strip: the top one opaque
    _painted_layer(mode).save(tmp_path / "mask.png")
    painted = np.zeros((8, 8), bool)
    painted[:2], painted[2:, :2] = True, True
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.png", 8), painted)
    # Opaque everywhere, as editors save many masks, it is read by its colour: not the black
    # rows, but the red and the white.
    opaque = np.asarray(_painted_layer("RGBA")).copy()
    opaque[..., 3] = 255
    Image.fromarray(opaque, "RGBA").save(tmp_path / "opaque.png")
    marked = read_mask(tmp_path / "opaque.png", 8)
    assert marked[2:].all() and not marked[:2].any()


@pytest.mark.parametrize("suffix", ["jpg", "webp"])
@pytest.mark.parametrize(
    "mode, colour", [("L", 255), ("RGB", (255, 255, 255)), ("RGB", (255, 0, 0))]
)
def test_a_lossy_mask_marks_its_bright_pixels_not_its_compression_noise(
    tmp_path: Path, mode: str, colour, suffix: str
) -> None:
    """JPEG and lossy WebP leave faint values around a mask's strokes: counted as defects,
    they widened every defect (and its colours' noise spread them further)."""
    drawn = np.zeros((32, 32), bool)
    drawn[4:14, 2:20], drawn[18:30, 4:8], drawn[20:28, 22:28] = True, True, True
    mask = Image.new(mode, (32, 32))
    mask.paste(colour, mask=Image.fromarray(drawn))
    path = tmp_path / f"mask.{suffix}"
    mask.save(path, quality=75 if suffix == "jpg" else 40)
    stored = np.asarray(Image.open(path)).reshape(32, 32, -1)
    assert (stored.any(axis=2) & ~drawn).sum() > 10  # the noise, beside the strokes
    np.testing.assert_array_equal(read_mask(path, 32), drawn)


def test_a_lossless_webp_mask_marks_every_pixel_that_is_not_black(tmp_path: Path) -> None:
    """Class ids 1 and 2, as drawn: only lossy files are read by their bright pixels."""
    classes = np.zeros((16, 16), np.uint8)
    classes[2:6, 2:6], classes[9:14, 8:12] = 1, 2
    Image.fromarray(classes).save(tmp_path / "mask.webp", lossless=True)
    np.testing.assert_array_equal(read_mask(tmp_path / "mask.webp", 16), classes > 0)


def test_coarse_noise_pairs_a_smoothly_noisy_copy_with_the_clean_image() -> None:
    """image.train_noise: the encoder's input is the image plus noise drawn on a coarse grid
    and enlarged, one field for every channel, within [0, 1]; the target is the image."""
    from torch.utils.data import TensorDataset

    from pipelines.train_images import CoarseNoise

    clean = torch.full((200, 3, 32, 32), 0.5)

    def pairs(std: float) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        data = CoarseNoise(TensorDataset(clean), std=std, cells=4)
        noisy, target = zip(*(data[i] for i in range(len(data))), strict=True)
        return torch.stack(noisy), torch.stack(target)

    noisy, target = pairs(0.05)
    assert torch.equal(target, clean)
    noise = noisy - clean
    torch.testing.assert_close(pairs(0.1)[0] - clean, 2 * noise)  # its scale is train_noise
    assert 0.02 < float(noise.std()) <= 0.05
    assert torch.equal(noise[:, 0], noise[:, 2])  # brightness, not colour
    assert pairs(5.0)[0].min() == 0 and pairs(5.0)[0].max() == 1  # still an image in [0, 1]
    # Smooth: a neighbour differs by a fraction of the noise; in white noise, by more than it.
    assert float((noise[..., 1:] - noise[..., :-1]).abs().mean()) < 0.25 * float(noise.abs().mean())


def test_denoising_terms_encode_the_inputs_and_charge_the_clean_pixels() -> None:
    from anomaly_vae.models.conv_vae import ConvVAE
    from anomaly_vae.scoring import image_terms, pixel_nll

    torch.manual_seed(0)
    model = ConvVAE(channels=1, size=8, conv_channels=[8], latent=2, likelihood="gaussian")
    clean, noisy = torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8)
    nll, kl = image_terms(model, clean, inputs=noisy)
    mu, _ = model.encode(noisy)
    torch.testing.assert_close(nll, pixel_nll(model, model.decode(mu), clean))
    torch.testing.assert_close(kl, image_terms(model, noisy)[1])
    assert not torch.allclose(nll, image_terms(model, clean)[0])


def test_train_noise_reaches_training_only_and_the_model_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Training batches are (noisy, clean) pairs and the loss encodes the noisy one;
    validation, which early stopping reads, sees the clean images as scoring will. End to
    end, a denoising digits model registers with its setting and still tells the digits apart."""
    import anomaly_vae.training
    from pipelines.demo import write_digits
    from pipelines.score import load_model

    train_dir, test_dir = write_digits(tmp_path)
    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    fit = anomaly_vae.training.fit_vae
    seen = {}

    def spying_fit(model, loss_terms, train_data, val_data, training, beta):  # noqa: ANN001, ANN202
        noisy, clean = train_data[0]
        seen["pair_differs"] = not torch.equal(noisy, clean)
        seen["val_items"] = len(val_data[0])
        batch = (noisy[None], clean[None])
        encoded, encode = [], model.encode
        model.encode = lambda x: encoded.append(x) or encode(x)
        loss_terms(model, batch)
        del model.encode  # the class's own again
        seen["encoded_noisy"] = torch.equal(encoded[0], batch[0])
        return fit(model, loss_terms, train_data, val_data, training, beta)

    monkeypatch.setattr(anomaly_vae.training, "fit_vae", spying_fit)
    result = run_cli("train", REPO / "configs" / "digits.yaml", "--set", f"data.path={train_dir}",
                     "--set", "image.train_noise=0.1", "--set", "training.epochs=60",
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert seen == {"pair_differs": True, "val_items": 1, "encoded_noisy": True}
    detector = load_model(result.stdout.strip().splitlines()[-1], tracking)
    assert detector.image.train_noise == 0.1
    items = detector.list_images(test_dir).items
    scores = np.concatenate([s.score for _, _, s in detector.scored_batches(items)])
    assert roc_auc_score(np.array([i.label for i in items], dtype=bool), scores) > 0.9


def test_conv_vae_weights_saved_in_either_memory_layout_score_alike() -> None:
    """The filters are kept channels-last for speed; weights saved before that, in the
    default layout, load into a new model and give the same scores."""
    from anomaly_vae.models.conv_vae import ConvVAE
    from anomaly_vae.scoring import score_images

    torch.manual_seed(0)
    model = ConvVAE(3, 16, [8, 16], 4, "ssim")
    assert model.encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    old_layout = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    loaded = ConvVAE(3, 16, [8, 16], 4, "ssim")
    loaded.load_state_dict(old_layout)
    assert loaded.decoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    pixels = np.random.default_rng(0).random((6, 3, 16, 16)).astype(np.float32)
    expected, got = score_images(model, pixels), score_images(loaded, pixels)
    np.testing.assert_allclose(got.score, expected.score, rtol=1e-5)
    np.testing.assert_allclose(got.maps, expected.maps, rtol=1e-4, atol=1e-6)
