"""Image files that cannot be scored as they are: each is refused in one line naming it."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from click.testing import Result
from mlflow.exceptions import MlflowException
from PIL import Image

from anomaly_vae.config import ImageConfig, parse_config
from anomaly_vae.data.images import (
    ImageItem,
    labels_from_csv,
    list_images,
    read_idx,
    read_image,
    read_images,
    read_mask,
    write_idx,
)
from anomaly_vae.errors import InputError
from pipelines.train_images import split_images
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


@pytest.mark.parametrize(
    ("mode", "pixels", "message"),
    [
        ("I", np.arange(64).reshape(8, 8) * 20000, "0..1260000 lie outside 0..65535"),
        ("I", np.arange(64).reshape(8, 8) * -1000, "-63000..0 lie outside 0..65535"),
        ("F", np.linspace(0, 255, 64).reshape(8, 8), "0.0..255.0 lie outside 0..1"),
    ],
)
def test_pixels_outside_the_range_of_their_mode_are_refused(
    tmp_path: Path, mode: str, pixels: np.ndarray, message: str
) -> None:
    """A 32-bit integer image was divided by 65535 whatever it held (values up to 19 or
    negative were scored); a float image in 0..255 was clipped to all white."""
    path = tmp_path / "wide.tif"
    Image.fromarray(pixels.astype(np.int32 if mode == "I" else np.float32), mode).save(path)
    with pytest.raises(InputError, match=rf"wide\.tif: pixel values {message}, .* mode {mode} "):
        read_image(path, 8, 1)


def test_16_bit_and_float_images_in_range_read_as_before(tmp_path: Path) -> None:
    """16-bit PNGs (mode I;16) and integer or float TIFFs within their range keep their values."""
    values = np.linspace(0, 65535, 64).round().reshape(8, 8)
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(values.astype(np.int32), "I").save(tmp_path / "i.tif")
    save_float_tiff(tmp_path / "f.tif", values / 65535)
    assert Image.open(tmp_path / "sixteen.png").mode == "I;16"
    for name in ("sixteen.png", "i.tif", "f.tif"):
        np.testing.assert_allclose(read_image(tmp_path / name, 8, 1)[0], values / 65535, atol=1e-7)


@pytest.mark.parametrize("name", ["pages.tif", "frames.webp", "frames.png"])
def test_files_of_several_images_or_masks_are_refused(tmp_path: Path, name: str) -> None:
    """Only the first page or frame was read, and the others were never scored; a mask's
    other pages marked no pixel of the pixel AUROC, without a word."""
    digit = np.zeros((8, 8), np.uint8)
    digit[2:6, 3] = 255
    frames = [Image.fromarray(digit, "L"), Image.fromarray(255 - digit, "L")]
    frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
    with pytest.raises(
        InputError, match=rf"{name}: 2 pages or frames in one file; save each image"
    ):
        read_image(tmp_path / name, 8, 1)
    with pytest.raises(InputError, match=rf"{name}: 2 pages or frames in one file; save each mask"):
        read_mask(tmp_path / name, 8)


def test_a_camera_jpeg_with_a_preview_after_the_photo_is_one_image(tmp_path: Path) -> None:
    """Pillow opens such a JPEG as MPO with two frames; the first is the photo."""
    photo = np.full((8, 8), 255, np.uint8)
    Image.fromarray(photo, "L").save(
        tmp_path / "photo.jpg", "MPO", save_all=True, append_images=[Image.fromarray(0 * photo)]
    )
    assert Image.open(tmp_path / "photo.jpg").n_frames == 2
    np.testing.assert_allclose(read_image(tmp_path / "photo.jpg", 8, 1), 1.0, atol=0.02)


def test_a_broken_link_among_the_images_is_an_unreadable_image(tmp_path: Path) -> None:
    """list_images kept only regular files, so the image a broken link named was left out."""
    (tmp_path / "good").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "good" / "a.png")
    (tmp_path / "good" / "b.png").symlink_to(tmp_path / "moved" / "b.png")
    with pytest.raises(InputError) as refused:
        list_images(tmp_path, ImageConfig())
    assert str(refused.value) == (
        f"{tmp_path / 'good' / 'b.png'}: unreadable image (a broken link to "
        f"{tmp_path / 'moved' / 'b.png'})"
    )


def test_an_image_whose_name_is_not_utf8_stops_score_in_one_line(digits_model, tmp_path) -> None:
    """A Latin-1 name (caf\xe9.png, from a zip made on Windows) ended every command in a
    UnicodeEncodeError traceback, `score` after scoring every image."""
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir / "good", folder / "good")
    first = sorted((folder / "good").glob("*.png"))[0]
    os.rename(first, os.fsencode(folder / "good") + b"/caf\xe9.png")
    out = tmp_path / "scores.csv"

    result = run_cli("score", model_uri, folder, "-o", out, "--tracking-uri", tracking)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {folder / 'good'}/caf\\xe9.png: the file name is not UTF-8 text, which the "
        "scores' path column and the run's record need; rename it\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_hidden_files_and_folders_below_the_folder_are_not_images(tmp_path: Path) -> None:
    """A notebook's .ipynb_checkpoints/ copy was scored, and labelled by its folder."""
    source = tmp_path / ".cache"  # the folder given may itself be hidden
    for name in ("good/a.png", "good/.ipynb_checkpoints/a-checkpoint.png", "scratch/.b.png"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(source / name)
    assert [item.path for item in list_images(source, ImageConfig()).items] == [
        str(source / "good" / "a.png")
    ]


@pytest.mark.parametrize("name", ["IMG_0042.HEIC", "tile.gif", "tile.jfif"])
def test_a_photo_in_a_format_not_read_is_refused_unless_it_is_a_mask(
    tmp_path: Path, name: str
) -> None:
    """A phone's HEIC photo, a GIF or a .jfif JPEG among the PNGs was passed over: it went
    unscored, and the scores file had a row fewer than the folder had photos, without a word."""
    folder, photo = tmp_path / "good", Path(name)
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / f"{photo.stem}.png")
    (folder / name).write_bytes(b"a photo")
    with pytest.raises(InputError) as refused:
        list_images(tmp_path, ImageConfig())
    assert str(refused.value) == (
        f"{folder / name}: a {photo.suffix} file, which is not read as an image (PNG, "
        f"JPEG, BMP, TIFF or WebP); convert it, or move it out of {tmp_path}"
    )
    rule = "{stem}" + photo.suffix  # such a file named as a PNG's mask is read as one
    listing = list_images(tmp_path, ImageConfig(mask_rule=rule))
    assert [(item.path, item.mask) for item in listing.items] == [
        (str(folder / f"{photo.stem}.png"), folder / name)
    ]


def test_linked_folders_are_followed_but_not_a_link_back_up(tmp_path: Path) -> None:
    """rglob passed over linked folders: the images of a line's folder linked into the batch
    were neither scored nor trained on. A link back up would be walked forever."""
    batch, line = tmp_path / "batch", tmp_path / "cameras" / "line2"
    for path in (batch / "good" / "a.png", line / "b.png"):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(path)
    (batch / "line2").symlink_to(line, target_is_directory=True)
    (batch / "good" / "all").symlink_to(batch, target_is_directory=True)

    items = list_images(batch, ImageConfig(normal=["good"])).items

    assert [(item.path, item.label) for item in items] == [
        (str(batch / "good" / "a.png"), False),
        (str(batch / "line2" / "b.png"), True),
    ]


def test_a_linked_folder_given_as_the_root_is_labelled_by_the_name_given(tmp_path: Path) -> None:
    """The root's label was its link target's name: good/ linked to a camera's shots_2026/
    made every image an anomaly, and crack/ linked to a folder named good every one normal."""
    for target, link, label in (("shots_2026", "good", False), ("good", "crack", True)):
        (tmp_path / "shots" / target).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "shots" / target / "a.png")
        (tmp_path / link).symlink_to(tmp_path / "shots" / target, target_is_directory=True)
        items = list_images(tmp_path / link, ImageConfig(normal=["good"])).items
        assert [(item.path, item.label) for item in items] == [
            (str(tmp_path / link / "a.png"), label)
        ]


def test_an_image_reached_twice_through_links_is_refused(tmp_path: Path) -> None:
    """A link to a folder listed already read its images twice, each labelled by its own
    folder: good/a.png normal, good_too/a.png the same file as an anomaly."""
    (tmp_path / "good").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "good" / "a.png")
    (tmp_path / "good_too").symlink_to(tmp_path / "good", target_is_directory=True)
    with pytest.raises(InputError) as refused:
        list_images(tmp_path, ImageConfig(normal=["good"]))
    assert str(refused.value) == (
        f"{tmp_path / 'good_too' / 'a.png'}: the same file as {tmp_path / 'good' / 'a.png'} "
        "(a link reaches it twice); an image is read once: remove the link"
    )


def test_two_images_whose_heatmaps_share_a_name_stop_score_maps(digits_model, tmp_path) -> None:
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir / "good", folder / "good")
    first = sorted((folder / "good").glob("*.png"))[0]
    Image.open(first).save(first.with_suffix(".bmp"))
    Image.open(first).save(first.with_suffix(".jpg"))
    first.unlink()  # a.png beside a.jpg would be read as a.jpg's mask

    assert _refused_with_maps(model_uri, folder, tracking, tmp_path) == (
        f"Error: {first.with_suffix('.jpg')}: its heatmap good/{first.stem}.png would overwrite "
        f"that of {first.with_suffix('.bmp')}; rename one of them\n"
    )
    # Without maps the two images are scored, each on its own row.
    out = tmp_path / "scores.csv"
    assert run_cli("score", model_uri, folder, "-o", out, "--tracking-uri", tracking).exit_code == 0


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])  # listed before, and after, x.png/
def test_a_heatmap_named_as_a_folder_of_heatmaps_stops_score_maps(
    digits_model, tmp_path: Path, suffix: str
) -> None:
    """x.jpg draws the heatmap x.png, a file where the folder x.png/ holds another's: score
    ended in a FileExistsError traceback (IsADirectoryError the other way round)."""
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    digit = sorted((test_dir / "good").glob("*.png"))[0]
    (folder / "x.png").mkdir(parents=True)
    shutil.copy(digit, folder / "x.png" / "a.png")
    Image.open(digit).save(folder / f"x{suffix}")

    assert _refused_with_maps(model_uri, folder, tracking, tmp_path) == (
        f"Error: {folder / f'x{suffix}'}: its heatmap x.png would be named as the folder "
        f"holding the heatmap of {folder / 'x.png' / 'a.png'}; rename one of them\n"
    )


def _refused_with_maps(model_uri: str, folder: Path, tracking: str, tmp_path: Path) -> str:
    """The stderr of `score --maps` on `folder` (under `tmp_path` as `in/`), checked to have
    failed (exit 1) and written neither the scores nor the maps."""
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    result = run_cli(
        "score", model_uri, folder, "-o", out, "--maps", maps, "--tracking-uri", tracking
    )
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
    return result.stderr


def test_files_read_as_masks_are_named_by_score_evaluate_and_train(digits_model, tmp_path):
    """Under the default image.mask_rule {stem}.png, x.png beside x.jpg is read as x.jpg's
    mask: it was neither scored, evaluated nor trained on, and no command said so."""
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir, folder)
    masks = sorted((folder / "good").glob("*.png"))[:2]
    for png in masks:
        Image.open(png).save(png.with_suffix(".jpg"))
    note = (
        "2 files read as masks by image.mask_rule '{stem}.png', not as images "
        f"(the first: {masks[0]})"
    )
    out = tmp_path / "scores.csv"

    result = run_cli("score", model_uri, folder, "-o", out, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert result.stderr.endswith(f"; {note}\n")
    assert len(pd.read_csv(out)) == len(list(folder.rglob("*.*"))) - 2

    result = run_cli("evaluate", model_uri, folder, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert note in result.stderr.splitlines()

    said: list[str] = []
    split_images(parse_config({"data": {"path": str(folder / "good")}}), echo=said.append)
    assert note in said


@pytest.mark.parametrize(
    ("rule", "image", "mask"),
    [("{stem}.png", "crack_1.JPG", "crack_1.PNG"), ("{stem}_mask.png", "c.jpg", "c_MASK.png")],
)
def test_a_mask_is_found_whatever_the_case_of_its_name(
    tmp_path: Path, rule: str, image: str, mask: str
) -> None:
    """Matched exactly, crack_1.PNG was no mask of crack_1.JPG under {stem}.png (nor
    c_MASK.png of c.jpg under {stem}_mask.png): it was scored as an image, its image had no
    mask, and pixel AUROC went without it."""
    folder = tmp_path / "crack"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / image, "JPEG")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(folder / mask, "PNG")

    listing = list_images(tmp_path, ImageConfig(mask_rule=rule))

    assert listing.items == [ImageItem(str(folder / image), True, folder / mask)]
    assert listing.masks == [folder / mask]


def test_two_masks_whose_names_differ_only_in_case_are_refused(tmp_path: Path) -> None:
    """Either of a.png and a.PNG could be a.jpg's mask: one line rather than a guess."""
    for name, kind in (("a.jpg", "JPEG"), ("a.png", "PNG"), ("a.PNG", "PNG")):
        Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / name, kind)
    if len(list(tmp_path.iterdir())) < 3:
        pytest.skip("the file system does not tell names apart by case")
    with pytest.raises(InputError) as refused:
        list_images(tmp_path, ImageConfig())
    assert str(refused.value) == (
        f"{tmp_path / 'a.PNG'}: its mask by image.mask_rule '{{stem}}.png' could be "
        f"{tmp_path / 'a.PNG'} or a.png, whose names differ only in case; keep one of them"
    )


def test_a_labels_csv_labels_every_image_and_names_no_other_file(
    digits_model, tmp_path, monkeypatch
):
    """evaluate --label-from CSV judged the model on the images the CSV happened to list, and
    a row for a moved or misspelt file was dropped, both without a word."""
    model_uri, tracking, test_dir = digits_model
    files = sorted(p.relative_to(test_dir) for p in test_dir.rglob("*.png"))
    rows = pd.DataFrame({"path": map(str, files), "label": [f.parts[0] != "good" for f in files]})
    csv, report = tmp_path / "labels.csv", tmp_path / "report.html"

    def evaluate(labels: pd.DataFrame) -> Result:
        labels.astype({"label": int}).to_csv(csv, index=False)
        return run_cli(
            "evaluate", model_uri, test_dir, "--label-from", csv, "-o", report,
            "--tracking-uri", tracking,
        )  # fmt: skip

    result = evaluate(rows.iloc[1:])
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {csv}: no label for 1 of the {len(files)} images in {test_dir} "
        f"(the first: {test_dir / files[0]})\n"
    )
    assert not report.exists()
    moved = pd.DataFrame({"path": ["good/moved.png"], "label": [False]})
    result = evaluate(pd.concat([rows, moved]))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {csv}: row {len(files) + 1}: good/moved.png does not exist\n"
    assert evaluate(rows).exit_code == 0 and report.exists()

    # The paths of a scores file, which name the folder as it was given, label it too.
    monkeypatch.chdir(test_dir.parent)
    scores = tmp_path / "scores.csv"
    assert run_cli("score", model_uri, test_dir.name, "-o", scores).exit_code == 0
    scored = pd.read_csv(scores)[["path"]]
    assert scored["path"].str.startswith(f"{test_dir.name}/").all()
    labelled = scored.assign(label=[Path(p).parts[1] != "good" for p in scored["path"]])
    report.unlink()
    assert evaluate(labelled).exit_code == 0 and report.exists()

    # A row for a file the mask rule set aside says so.
    Image.open(test_dir / files[0]).save(tmp_path / "a.jpg")
    Image.open(test_dir / files[0]).save(tmp_path / "a.png")
    pd.DataFrame({"path": ["a.png"], "label": [0]}).to_csv(csv, index=False)
    with pytest.raises(InputError) as refused:
        labels_from_csv(list_images(tmp_path, ImageConfig()), csv, tmp_path)
    assert str(refused.value) == (
        f"{csv}: row 1: a.png is read as a mask by image.mask_rule '{{stem}}.png', not as an image"
    )
    # A blank label cell was named "label nan".
    csv.write_text("path,label\na.jpg,\n")
    with pytest.raises(InputError) as refused:
        labels_from_csv(list_images(tmp_path, ImageConfig()), csv, tmp_path)
    assert str(refused.value) == f"{csv}: row 1: no label"


def test_a_labels_csv_labels_each_image_in_one_row(tmp_path: Path) -> None:
    """A second row for an image, however its path was spelled, replaced the first's label
    without a word: the last row won."""
    (tmp_path / "good").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save(tmp_path / "good" / "a.png")
    csv = tmp_path / "labels.csv"
    csv.write_text(f"path,label\ngood/a.png,0\n{tmp_path}/good/./a.png,1\n")
    with pytest.raises(InputError) as refused:
        labels_from_csv(list_images(tmp_path, ImageConfig()), csv, tmp_path)
    assert str(refused.value) == (
        f"{csv}: row 2: {tmp_path}/good/./a.png is labelled already, in row 1"
    )


def _write_raw_idx(path: Path, array: np.ndarray, type_code: int) -> Path:
    shape = b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(bytes([0, 0, type_code, array.ndim]) + shape + array.tobytes())
    return path


@pytest.mark.parametrize(
    ("array", "type_code", "held"),
    [
        (np.full((3, 4, 4), 0.5, ">f4"), 0x0D, "float32 of shape (3, 4, 4)"),
        (np.full((3, 4, 4), 300, ">i2"), 0x0B, "int16 of shape (3, 4, 4)"),
        (np.zeros((3, 16), np.uint8), 0x08, "uint8 of shape (3, 16)"),
    ],
    ids=["float", "int16", "two-dimensional"],
)
def test_idx_images_that_are_not_bytes_of_three_dimensions_are_refused(
    tmp_path: Path, array: np.ndarray, type_code: int, held: str
) -> None:
    # Divided by 255 whatever they held: floats scored as near-black images, a NaN as a NaN
    # score never flagged, a 2-D file as one-row images.
    path = _write_raw_idx(tmp_path / "x-images-idx3-ubyte", array, type_code)
    with pytest.raises(
        InputError, match=rf"x-images-idx3-ubyte: IDX images are .*{re.escape(held)}"
    ):
        list_images(path, ImageConfig())


def test_damaged_idx_files_are_named_in_one_line(tmp_path: Path) -> None:
    images = np.zeros((2, 4, 4), np.uint8)
    longer = tmp_path / "long-images-idx3-ubyte"
    write_idx(longer, images)
    longer.write_bytes(longer.read_bytes() + b"\0")
    with pytest.raises(InputError, match="IDX file longer than its shape .33 data bytes, 32"):
        read_idx(longer)
    cut = tmp_path / "cut-images-idx3-ubyte"
    cut.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(InputError, match="truncated IDX file .its header is cut short"):
        read_idx(cut)
    damaged = tmp_path / "bad-images-idx3-ubyte.gz"
    # A gzip header, then a deflate block of a type that does not exist: zlib.error.
    damaged.write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"\xff" * 6)
    with pytest.raises(InputError, match="bad-images-idx3-ubyte.gz: cannot read IDX file"):
        read_idx(damaged)


def test_an_idx_file_without_its_labels_file_says_every_image_trains(tmp_path: Path) -> None:
    """Without the labels file every digit trained as normal, whatever image.normal_digits
    said, and nothing said so; a labels file left uncompressed beside a .gz images file is
    not found either."""
    images = tmp_path / "d-images-idx3-ubyte.gz"
    write_idx(images, np.zeros((20, 4, 4), np.uint8))
    write_idx(tmp_path / "d-labels-idx1-ubyte", np.arange(20, dtype=np.uint8) % 2)
    config = parse_config({"data": {"path": str(images)}, "image": {"normal_digits": [1]}})
    said: list[str] = []
    split = split_images(config, echo=said.append)
    assert said == [
        f"no labels file d-labels-idx1-ubyte.gz beside {images}: all images count as normal"
    ]
    assert len(split.train) + len(split.validation) == 20


def test_an_empty_normal_folder_beside_anomalies_stops_training(tmp_path: Path) -> None:
    """The all-normal fallback said there was no folder named good and trained on the cracks
    as normal images."""
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train" / "crack").mkdir()
    (tmp_path / "train" / ".ipynb_checkpoints" / "good").mkdir(parents=True)
    for i in range(12):
        Image.fromarray(np.full((4, 4), i, np.uint8), "L").save(
            tmp_path / "train" / "crack" / f"{i}.png"
        )
    config = parse_config({"data": {"path": str(tmp_path / "train")}})
    with pytest.raises(InputError) as info:
        split_images(config, echo=print)
    assert str(info.value) == (
        f"{tmp_path / 'train' / 'good'}: the normal folder holds no images, so every image in "
        f"{tmp_path / 'train'} is an anomaly; none to train on"
    )
    (tmp_path / "train" / "good").rmdir()  # no normal folder at all: every image is normal
    said: list[str] = []
    assert len(split_images(config, echo=said.append).train) > 0
    assert said == [f"no folder named good in {tmp_path / 'train'}: all images count as normal"]
    # Beside another folder, though, the normal one is named otherwise: ok/ beside scratch/
    # trained on the scratches as normal, and registered the model.
    (tmp_path / "train" / "ok").mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / "train" / "ok" / "0.png")
    with pytest.raises(InputError) as info:
        split_images(config, echo=print)
    assert str(info.value) == (
        f"{tmp_path / 'train'}: images in 2 folders (crack, ok), none named good: name the "
        "normal one (--set 'image.normal=[crack]'), or train on a folder of normal images alone"
    )


def test_a_normal_folder_is_found_whatever_the_case_of_its_name(tmp_path: Path) -> None:
    """Under image.normal [good], a Windows share's Good/ held anomalies: evaluate scored its
    normal images as defects, and with Good/ empty train took the cracks for normal."""
    for name in ("Good/a.png", "Crack/b.png"):
        (tmp_path / name).parent.mkdir()
        Image.fromarray(np.zeros((4, 4), np.uint8), "L").save(tmp_path / name)
    items = list_images(tmp_path, ImageConfig()).items
    assert [(Path(item.path).parent.name, item.label) for item in items] == [
        ("Crack", True),
        ("Good", False),
    ]
    (tmp_path / "Good" / "a.png").unlink()
    with pytest.raises(InputError) as info:
        split_images(parse_config({"data": {"path": str(tmp_path)}}), echo=print)
    assert str(info.value).startswith(f"{tmp_path / 'Good'}: the normal folder holds no images")


def test_normal_digits_that_no_image_has_stop_training(tmp_path: Path) -> None:
    # The folders' all-normal fallback took every digit as normal: trained and registered.
    images = tmp_path / "d-images-idx3-ubyte"
    write_idx(images, np.zeros((120, 4, 4), np.uint8))
    write_idx(tmp_path / "d-labels-idx1-ubyte", np.arange(120, dtype=np.uint8) % 6)
    config = parse_config({"data": {"path": str(images)}, "image": {"normal_digits": [9]}})
    with pytest.raises(InputError, match=r"every image is an anomaly by image.normal_digits \[9\]"):
        split_images(config, echo=print)
    config.image.normal_digits = [0]
    assert len(split_images(config, echo=print).train) > 0


@pytest.mark.parametrize("index", ["3", "-1", "x", ""])
def test_an_idx_image_reference_past_the_file_or_not_a_number_is_refused(
    tmp_path: Path, index: str
) -> None:
    """A pyfunc request names IDX images as listing does, "<file>#<index>": #3 of three images
    was an IndexError traceback, #x a ValueError, and #-1 scored the last image."""
    path = tmp_path / "t-images-idx3-ubyte"
    write_idx(path, np.zeros((3, 4, 4), np.uint8))
    assert read_images([ImageItem(f"{path}#2")], 4, 1).shape == (1, 1, 4, 4)
    with pytest.raises(
        InputError, match=rf"idx3-ubyte#{index}: no such image; the IDX file holds images #0 to #2$"
    ):
        read_images([ImageItem(f"{path}#{index}")], 4, 1)


def test_image_requests_without_a_path_column_or_with_a_missing_path_say_so(digits_model):
    model_uri, tracking, test_dir = digits_model
    image = str(next((test_dir / "good").glob("*.png")))
    mlflow.set_tracking_uri(tracking)
    model = mlflow.pyfunc.load_model(model_uri)
    # MLflow drops columns its signature lacks: the request was told it held no image paths.
    with pytest.raises(MlflowException, match="^request: an image model needs a 'path' column"):
        model.predict(pd.DataFrame({"file": [image]}))
    # A missing path was read as a file named "nan" that does not exist.
    for missing in (None, np.nan, ""):
        with pytest.raises(MlflowException, match="^request: column 'path', row 2: no image path$"):
            model.predict(pd.DataFrame({"path": [image, missing]}))


def test_images_and_masks_are_read_upright_by_their_exif_orientation(tmp_path: Path) -> None:
    """A phone's photo is stored as the sensor saw it, with the turn in its EXIF tags: it was
    scored on its side, and its heatmap and mask did not line up with the picture people see."""
    stored = np.zeros((8, 8), np.uint8)
    stored[:, 0] = 255  # the left column as stored, the top row as shown
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned 90 degrees clockwise
    Image.fromarray(stored, "L").save(tmp_path / "photo.png", exif=exif)
    shown = np.zeros((8, 8), bool)
    shown[0] = True
    np.testing.assert_array_equal(read_image(tmp_path / "photo.png", 8, 1)[0], shown)
    np.testing.assert_array_equal(read_mask(tmp_path / "photo.png", 8), shown)


def test_a_single_image_scores_and_trains_as_one(digits_model, tmp_path, tracking_uri):
    """`score` refused one photo ("give the folder that holds it"), and scoring its folder
    scored every other image in it; to `train` an image config's likelihood was wrong:
    "model.likelihood: bernoulli is for images; tables use ..."."""
    model_uri, tracking, test_dir = digits_model
    image = next((test_dir / "good").glob("*.png"))
    out, maps = tmp_path / "scores.csv", tmp_path / "maps"
    result = run_cli(
        "score", model_uri, image, "-o", out, "--maps", maps, "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    folder = tmp_path / "folder.csv"
    assert (
        run_cli("score", model_uri, test_dir, "-o", folder, "--tracking-uri", tracking).exit_code
        == 0
    )
    alone, among = pd.read_csv(out), pd.read_csv(folder).set_index("path")
    assert alone["path"].tolist() == [str(image)]
    assert alone["score"][0] == pytest.approx(among.loc[str(image), "score"], rel=1e-5)
    assert [p.name for p in maps.iterdir()] == [image.name]
    # Its heatmaps beside it would be images to the next run over its folder.
    beside = image.parent / "maps"
    result = run_cli(
        "score", model_uri, image, "-o", out, "--maps", beside, "--tracking-uri", tracking
    )
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {beside}: --maps inside the input folder; the next run over {image.parent} "
        "would read the heatmaps as images\n",
    )
    assert not beside.exists()
    table = tmp_path / "rows.csv"
    table.write_text("a\n1\n")
    result = run_cli(
        "score", model_uri, table, "-o", out, "--maps", maps, "--tracking-uri", tracking
    )
    assert result.stderr == f"Error: {table}: --maps is for images (a folder or an IDX file)\n"
    config = REPO / "configs" / "digits.yaml"
    result = run_cli("train", config, "--set", f"data.path={image}", "--tracking-uri", tracking_uri)
    assert (result.exit_code, result.stderr) == (
        1,
        f"Error: {image}: a single image; give the folder that holds it (images are read from "
        "a folder or an *-idx3-ubyte(.gz) file)\n",
    )


def test_damaged_or_mismatched_detector_weights_are_one_line(digits_model, tmp_path) -> None:
    """Weights cut short (a copy or download that stopped) were a SafetensorError traceback,
    and weights of another network a RuntimeError from load_state_dict."""
    from anomaly_vae.detector import ARTIFACT_FILE, WEIGHTS_FILE
    from anomaly_vae.tracking import resolve_detector_dir

    model_uri, tracking, test_dir = digits_model
    original = resolve_detector_dir(model_uri, tracking)
    cut, other = tmp_path / "cut", tmp_path / "other"
    for copy in (cut, other):
        shutil.copytree(original, copy)
    weights = (cut / WEIGHTS_FILE).read_bytes()
    (cut / WEIGHTS_FILE).write_bytes(weights[: len(weights) // 2])
    state = json.loads((other / ARTIFACT_FILE).read_text())
    state["model"]["latent"] += 1
    (other / ARTIFACT_FILE).write_text(json.dumps(state))
    for model, message in (
        (cut, "corrupt detector artifact .Error while deserializing header"),
        (other, f"{WEIGHTS_FILE} does not fit the network {ARTIFACT_FILE} describes"),
    ):
        out = tmp_path / "scores.csv"
        result = run_cli("score", model, test_dir, "-o", out)
        assert result.exit_code == 1
        assert re.fullmatch(f"Error: {model}: {message}.*\n", result.stderr), result.stderr
        assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda state: [state], "corrupt detector artifact .detector.json is no JSON object"),
        (lambda state: {k: v for k, v in state.items() if k != "kind"}, "unknown detector kind"),
        (
            lambda state: {k: v for k, v in state.items() if k != "model"},
            "corrupt detector .*'model'",
        ),
    ],
    ids=["list", "no kind", "no model"],
)
def test_a_detector_json_edited_out_of_shape_is_one_line(digits_model, tmp_path, edit, message):
    """Each was a traceback: AttributeError, KeyError (from the error message itself), KeyError."""
    from anomaly_vae.detector import ARTIFACT_FILE, load_detector
    from anomaly_vae.tracking import resolve_detector_dir

    model_uri, tracking, _ = digits_model
    model = tmp_path / "model"
    shutil.copytree(resolve_detector_dir(model_uri, tracking), model)
    state = json.loads((model / ARTIFACT_FILE).read_text())
    (model / ARTIFACT_FILE).write_text(json.dumps(edit(state)))
    with pytest.raises(InputError, match=f"^{model}: {message}"):
        load_detector(model)


def test_load_model_takes_a_local_directory_as_a_path(digits_model) -> None:
    """As `mlflow.pyfunc.load_model` does; a Path was a TypeError traceback."""
    from anomaly_vae.tracking import resolve_detector_dir
    from pipelines.score import load_model

    model_uri, tracking, _ = digits_model
    directory = resolve_detector_dir(model_uri, tracking)
    assert isinstance(directory, Path)
    assert load_model(directory).kind == "image"


def test_maps_inside_the_input_folder_are_refused(digits_model, tmp_path: Path) -> None:
    """The heatmaps were written among the images: the next run over the folder read them as
    images, and an RGB model would have scored them without a word."""
    model_uri, tracking, test_dir = digits_model
    folder = tmp_path / "in"
    shutil.copytree(test_dir / "good", folder)
    out, maps = tmp_path / "scores.csv", folder / "maps"
    result = run_cli("score", model_uri, folder, "-o", out, "--maps", maps,
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {maps}: --maps inside the input folder; the next run over {folder} would read "
        "the heatmaps as images\n"
    )
    assert not out.exists() and not maps.exists()


def test_a_maps_folder_where_no_file_can_be_made_is_refused_first(
    digits_model, tmp_path, monkeypatch
) -> None:
    """The maps' temporary folder beside --maps could not be created: a PermissionError
    traceback once the model had loaded. Root writes anywhere, so a stand-in refuses."""
    import tempfile

    model_uri, tracking, test_dir = digits_model
    locked = tmp_path / "locked"
    locked.mkdir()
    for name in ("TemporaryFile", "mkdtemp"):
        create = getattr(tempfile, name)

        def refuse(*args, create=create, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if Path(kwargs.get("dir") or ".") == locked:
                raise PermissionError(13, "Permission denied")
            return create(*args, **kwargs)

        monkeypatch.setattr(tempfile, name, refuse)
    out, maps = tmp_path / "scores.csv", locked / "maps"
    result = run_cli("score", model_uri, test_dir, "-o", out, "--maps", maps,
                     "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 1
    assert (
        result.stderr == f"Error: {maps}: cannot write in folder '{locked}' (Permission denied)\n"
    )
    assert not out.exists() and list(locked.iterdir()) == []


def test_the_csv_parts_a_folder_without_images_holds_are_found_as_its_images_are(
    tmp_path: Path,
) -> None:
    """The hint walked the folder its own way: it named a notebook's hidden checkpoint copy as
    the folder's CSV, and passed over the parts of a linked folder."""
    checkpoints = tmp_path / "table" / ".ipynb_checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "part-0-checkpoint.csv").write_text("x\n1\n")
    no_images = f"{tmp_path / 'table'}: no PNG, JPEG, BMP, TIFF or WebP images in this folder"
    with pytest.raises(InputError) as refused:
        list_images(tmp_path / "table", ImageConfig())
    assert str(refused.value) == no_images
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "part-1.csv.gz").write_bytes(b"")
    (tmp_path / "table" / "day=1").symlink_to(tmp_path / "archive", target_is_directory=True)
    with pytest.raises(InputError) as refused:
        list_images(tmp_path / "table", ImageConfig())
    assert str(refused.value) == (
        f"{no_images}, but CSV files (part-1.csv.gz): a table is one CSV file or a folder of "
        "Parquet files"
    )


@pytest.mark.parametrize("onto", ["image", "table"])
def test_train_refuses_a_registered_model_whose_champion_is_of_the_other_kind(
    digits_model, breast_cancer_model, breast_cancer_files, tmp_path: Path, onto: str
) -> None:
    """A table model trained under an image model's name (or the reverse) became a version of
    it and took `champion`: every scoring job on the champion then failed."""
    if onto == "image":
        model_uri, tracking, _ = digits_model
        config, data, trains = (
            REPO / "configs" / "breast_cancer.yaml",
            breast_cancer_files[0],
            "a table",
        )
        held = "image"
    else:
        model_uri, tracking = breast_cancer_model
        config, data, trains = REPO / "configs" / "digits.yaml", digits_model[2], "images"
        held = "tabular"
    store = tmp_path / "mlflow.db"  # a copy: without the refusal, training would move champion
    shutil.copy(tracking.removeprefix("sqlite:///"), store)
    name = model_uri.removeprefix("models:/").split("@")[0]
    client = mlflow.MlflowClient(f"sqlite:///{store}")
    versions = len(client.search_model_versions(f"name = '{name}'"))
    runs = _run_count(client)

    result = run_cli(
        "train", config, "--set", f"data.path={data}", "--set", f"mlflow.registered_model={name}",
        "--set", "training.epochs=2", "--tracking-uri", f"sqlite:///{store}",
    )  # fmt: skip

    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: mlflow.registered_model: '{name}' holds {held} models (models:/{name}@champion),"
        f" and this config trains on {trains}: register it under another name "
        "(--set mlflow.registered_model=...)\n"
    )
    assert len(client.search_model_versions(f"name = '{name}'")) == versions
    assert _run_count(client) == runs
    # Named by the config's name, the line names that key.
    by_name = run_cli("train", config, "--set", f"data.path={data}", "--set", f"name={name}",
                      "--tracking-uri", f"sqlite:///{store}")  # fmt: skip
    assert by_name.exit_code == 1 and by_name.stderr.startswith(f"Error: name: '{name}' holds ")
    # Each version says what it is (image or tabular); versions had no description.
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.description.startswith(f"{'An image' if held == 'image' else 'A tabular'} ")
    # With no version holding champion (its alias removed), the latest version's kind counts.
    latest = max(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
    client.delete_registered_model_alias(name, "champion")
    result = run_cli(
        "train", config, "--set", f"data.path={data}", "--set", f"mlflow.registered_model={name}",
        "--set", "training.epochs=2", "--tracking-uri", f"sqlite:///{store}",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: mlflow.registered_model: '{name}' holds {held} models (models:/{name}/{latest}), "
        f"and this config trains on {trains}: "
    )
    assert len(client.search_model_versions(f"name = '{name}'")) == versions


def _run_count(client: mlflow.MlflowClient) -> int:
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))
