"""The same rows get the same scores from a CSV file and from a Parquet file, whichever of the
two the model was trained on: an analyst trains on a CSV export and scores the daily Parquet
file, or the other way round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli, train_cli

from pipelines.score import load_model

ROWS = 400
CATEGORICAL = ["merchant", "country", "zip", "mcc", "flag", "flag2"]


def mixed_frame() -> pd.DataFrame:
    """Numbers, text categories, missing values in text, booleans and numbers, zero-padded
    codes, booleans and a long integer id."""
    rng = np.random.default_rng(0)
    country = rng.choice(["US", "GB", "DE", "FR"], ROWS).astype(object)
    country[rng.random(ROWS) < 0.1] = None
    flag2 = rng.choice([True, False], ROWS).astype(object)
    flag2[rng.random(ROWS) < 0.1] = None
    return pd.DataFrame(
        {
            "txn_id": 9007199254740993 + 7 * np.arange(ROWS),
            "amount": rng.lognormal(size=ROWS).round(2),
            "items": rng.integers(1, 6, ROWS),
            "merchant": rng.choice(["grocery", "fuel", "travel", "online"], ROWS),
            "country": country,
            "zip": rng.choice(["01234", "02139", "10001", "00501"], ROWS),
            "mcc": rng.choice(["0742", "5411", "5812", "4111"], ROWS),
            "flag": rng.choice([True, False], ROWS),
            "flag2": flag2,
            "balance": np.where(rng.random(ROWS) < 0.1, np.nan, rng.normal(100, 10, ROWS).round(1)),
        }
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One table as Parquet, as CSV with blank missing cells (pandas' default) and with "NA"
    (R's, and many databases'), and as Parquet whose codes lost their zeros to integers."""
    folder = tmp_path_factory.mktemp("formats")
    frame = mixed_frame()
    paths = {
        "parquet": folder / "day.parquet",
        "csv": folder / "day.csv",
        "csv_na": folder / "day_na.csv",
        "parquet_int": folder / "day_int.parquet",
    }
    frame.to_parquet(paths["parquet"], index=False)
    frame.to_csv(paths["csv"], index=False)
    frame.to_csv(paths["csv_na"], index=False, na_rep="NA")
    frame.astype({"zip": int, "mcc": int}).to_parquet(paths["parquet_int"], index=False)
    return paths


def _train(path: Path, folder: Path, categorical: list[str] | None) -> str:
    data = {"path": str(path), "id_columns": ["txn_id"]}
    if categorical:
        data["categorical"] = categorical
    config = folder / "config.yaml"
    config.write_text(yaml.safe_dump({"data": data, "training": {"epochs": 2}}))
    return train_cli(config)


def _scores(model: str, path: Path, out: Path) -> np.ndarray:
    result = run_cli("score", model, path, "-o", out)
    assert result.exit_code == 0, result.output
    return pd.read_parquet(out)["score"].to_numpy()


@pytest.mark.parametrize("categorical", [None, CATEGORICAL], ids=["inferred", "listed"])
@pytest.mark.parametrize("trained_on", ["csv_na", "parquet"])
def test_the_same_rows_score_the_same_from_csv_and_parquet(
    files, trained_on, categorical, tmp_path, tracking_uri
) -> None:
    model = _train(files[trained_on], tmp_path, categorical)
    pre = load_model(model).preprocessor
    # Both formats give the same kinds of columns: a CSV's zero-padded codes are codes.
    assert [c.name for c in pre.numeric] == ["amount", "items", "balance"]
    assert [c.name for c in pre.categorical] == CATEGORICAL
    assert "NA" not in pre.categorical[1].categories  # country's missing values
    scores = {
        name: _scores(model, path, tmp_path / f"{name}.parquet") for name, path in files.items()
    }
    for name, got in scores.items():
        np.testing.assert_allclose(got, scores["parquet"], rtol=1e-6, err_msg=name)


def test_dates_where_a_category_belongs_are_refused_in_either_format(
    files, tmp_path, tracking_uri
) -> None:
    # Typed dates (Parquet) were refused in one line; the same dates as text (a CSV, or
    # Parquet strings) scored every row as an unseen merchant without a word.
    model = _train(files["parquet"], tmp_path, None)
    frame = pd.read_parquet(files["parquet"])
    dates = pd.date_range("2026-11-01", periods=ROWS, freq="h")
    shifted = {
        "typed.parquet": frame.assign(merchant=dates),
        "text.parquet": frame.assign(merchant=dates.strftime("%Y-%m-%d %H:%M")),
        "text.csv": frame.assign(merchant=dates),
    }
    for name, table in shifted.items():
        path = tmp_path / name
        table.to_csv(path, index=False) if name.endswith(".csv") else table.to_parquet(path)
        result = run_cli("score", model, path, "-o", tmp_path / "out.parquet")
        assert result.exit_code == 1, name
        assert result.stderr.strip() == (
            f"Error: {path}: column 'merchant' holds dates or times, not categories"
        )
    # Times of day train in neither format: pyarrow types them in a CSV.
    times = frame.assign(at=[f"{i % 24:02d}:{i % 60:02d}" for i in range(ROWS)])
    for path in (tmp_path / "times.csv", tmp_path / "times.parquet"):
        times.to_csv(path, index=False) if path.suffix == ".csv" else times.to_parquet(path)
        config = tmp_path / "times.yaml"
        config.write_text(yaml.safe_dump({"data": {"path": str(path), "id_columns": ["txn_id"]}}))
        result = run_cli("train", config)
        assert result.exit_code == 1
        # It named "training data", not the file.
        assert result.stderr.startswith(f"Error: {path}: column 'at' holds dates or times")


def test_a_category_missing_on_every_row_is_refused_where_the_model_never_learnt_it_missing(
    files, tmp_path, tracking_uri
) -> None:
    # A merchant column null on every row (a broken export) scored every row as an unseen
    # merchant without a word, as a number column that training never saw missing would not.
    model = _train(files["parquet"], tmp_path, None)
    frame = pd.read_parquet(files["parquet"])
    empty = frame.assign(merchant=None)
    for name in ("empty.parquet", "blank.csv", "na.csv"):
        path, out = tmp_path / name, tmp_path / f"{name}.scored.parquet"
        if name.endswith(".csv"):
            empty.to_csv(path, index=False, na_rep="NA" if name == "na.csv" else "")
        else:
            empty.to_parquet(path)
        result = run_cli("score", model, path, "-o", out)
        assert result.exit_code == 1, name
        assert result.stderr.strip() == (
            f"Error: {path}: column 'merchant' is missing on every row, and the model learnt no "
            "missing value in it: every row would score as an unseen category"
        )
        assert not out.exists()
    # Country was missing in training: missing on every row it scores as the model learnt it.
    # So does one null or one unseen merchant, even as a file's only row.
    one = frame.head(1)
    tables = {
        "countries.parquet": frame.assign(country=None),
        "one_null.parquet": frame.assign(merchant=frame["merchant"].where(frame.index > 0)),
        "one_unseen.parquet": one.assign(merchant="casino"),
    }
    for name, table in tables.items():
        table.to_parquet(tmp_path / name)
        assert len(_scores(model, tmp_path / name, tmp_path / f"{name}.out.parquet")) == len(table)
