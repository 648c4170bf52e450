"""Image files that cannot be scored as they are: each is refused in one line naming it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_vae.data.images import read_image
from anomaly_vae.errors import InputError
from tests.conftest import REPO, run_cli


def save_float_tiff(path: Path, pixels: np.ndarray) -> Path:
    """A 32-bit float ("F" mode) TIFF, as scientific cameras and numpy pipelines write them."""
    Image.fromarray(pixels.astype(np.float32), "F").save(path)
    return path


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels_are_refused(tmp_path: Path, bad: float) -> None:
    pixels = np.full((8, 8), 0.5, np.float32)
    pixels[3, 4] = bad
    path = save_float_tiff(tmp_path / "f.tif", pixels)
    with pytest.raises(InputError, match=r"f\.tif: pixel values are not finite"):
        read_image(path, 8, 1)


def test_a_nan_image_stops_score_and_train_in_one_line(digits_model, tmp_path, tracking_uri):
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir / "good", folder / "good")
    bad = save_float_tiff(folder / "good" / "nan.tif", np.full((8, 8), np.nan))
    out = tmp_path / "scores.csv"

    result = run_cli("score", model_uri, folder, "-o", out, "--tracking-uri", tracking)
    assert result.exit_code == 1
    assert result.stderr == f"Error: {bad}: pixel values are not finite (NaN or infinity)\n"
    assert not out.exists()

    # Training on it failed as "training diverged ... lower training.learning_rate".
    result = run_cli(
        "train", REPO / "configs" / "digits.yaml", "--set", f"data.path={folder}",
        "--tracking-uri", tracking_uri,
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == f"Error: {bad}: pixel values are not finite (NaN or infinity)\n"
