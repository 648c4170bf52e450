"""Reading large photos at a model's size: milliseconds an image, and how far the pixels move.

    python -m benchmarks.image_reading                     # 12-megapixel JPEG and PNG photos
    python -m benchmarks.image_reading --width 2000 --height 1500 --images 5

Generates colour photos (smooth shading under sensor noise) into a temporary folder and reads
each at 64, 128 and 256 pixels two ways: `read_image` as scoring and training read it, and
every pixel decoded, converted and resized (what `read_image` did before it decoded JPEGs at
a reduced scale and box-averaged other formats first). Differences are measured against the
whole decode of a lossless PNG of the same photo, in grey levels of 255: for JPEG they include
the compression's own loss, which the whole decode's column shows alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from anomaly_vae.data.images import _to_float, read_image, resize

SIZES = (64, 128, 256)


def write_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    """`count` photos, each saved as JPEG (quality 90) and PNG."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[0:height, 0:width]
    paths = []
    for i in range(count):
        phase = rng.uniform(0, 2 * np.pi)
        shade = 128 + 60 * np.sin(columns / 300 + phase) * np.cos(rows / 200)
        noise = rng.normal(0, 8, (height, width, 3)) + np.array([0, 10, -10])
        photo = Image.fromarray(np.clip(shade[..., None] + noise, 0, 255).astype(np.uint8))
        for suffix in (".jpg", ".png"):
            paths.append(folder / f"photo{i}{suffix}")
            photo.save(paths[-1], quality=90)
    return paths


def read_whole(path: Path, size: int) -> np.ndarray:
    """Every pixel decoded and converted, then resized."""
    with Image.open(path) as img:
        return resize(_to_float(img, path, 3), size)


def timed(read: Callable[[Path, int], np.ndarray], paths: list[Path], size: int) -> tuple:
    """(pixels of every path, milliseconds an image)."""
    started = time.perf_counter()
    pixels = np.stack([read(path, size) for path in paths])
    return pixels, 1000 * (time.perf_counter() - started) / len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(Path(folder), args.images, args.width, args.height)
        pngs = [p for p in paths if p.suffix == ".png"]
        print(f"{args.images} photos of {args.width} x {args.height} pixels, colour\n")
        print(
            "| format | size | read_image ms | whole decode ms | read_image difference, "
            "max / mean | whole decode difference |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        for size in SIZES:
            truth, _ = timed(lambda p, s: read_whole(p, s), pngs, size)
            for suffix in (".jpg", ".png"):
                chosen = [p for p in paths if p.suffix == suffix]
                read, read_ms = timed(lambda p, s: read_image(p, s, 3), chosen, size)
                whole, whole_ms = timed(read_whole, chosen, size)
                print(
                    f"| {suffix[1:].upper()} | {size} | {read_ms:.0f} | {whole_ms:.0f} | "
                    f"{_difference(read, truth)} | {_difference(whole, truth)} |"
                )


def _difference(pixels: np.ndarray, truth: np.ndarray) -> str:
    """Largest and mean absolute difference, in grey levels of 255."""
    gap = 255 * np.abs(pixels - truth)
    return f"{gap.max():.2f} / {gap.mean():.3f}"


if __name__ == "__main__":
    main()
