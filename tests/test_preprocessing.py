"""Preprocessing fitted on training rows: scaling, categories, missing values, bad values."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from anomaly_vae.config import parse_config
from anomaly_vae.data.preprocessing import (
    MAX_CATEGORIES,
    MIN_CATEGORY_COUNT,
    TAIL_START,
    TabularPreprocessor,
)
from anomaly_vae.errors import InputError
from pipelines.train import split_table


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 400
    amount = rng.lognormal(3, 1, n)
    amount[:4] = [1e5, 2e5, 5e5, 1e6]  # a few huge transactions
    return pd.DataFrame(
        {
            "amount": amount,
            "hour": rng.integers(0, 24, n),
            "merchant": rng.choice(["grocery", "fuel", "travel"], n),
            "rare": ["common"] * (n - 2) + ["once", "twice"],
            "balance": np.where(rng.random(n) < 0.1, np.nan, rng.normal(100, 10, n)),
        }
    )


def _fit(frame: pd.DataFrame) -> TabularPreprocessor:
    return TabularPreprocessor.fit(frame, list(frame.columns), categorical=None)


def test_infers_categorical_columns_from_dtype(frame) -> None:
    pre = _fit(frame)
    assert [c.name for c in pre.numeric] == ["amount", "hour", "balance"]
    assert [c.name for c in pre.categorical] == ["merchant", "rare"]


def test_a_text_column_left_out_of_an_explicit_categorical_list_is_named_as_such(frame) -> None:
    """Listing some categorical columns turns inference off for all: a text column left out
    was reported only as "'fuel' is not a number", which read as a fault in the data."""
    with pytest.raises(InputError, match=r"'merchant'.*not a number.*data\.categorical"):
        TabularPreprocessor.fit(frame, list(frame.columns), ["rare"])


def test_heavy_tails_do_not_squash_ordinary_values(frame) -> None:
    encoded = _fit(frame).transform(frame, "t")
    amount = encoded.numeric[:, 0]
    ordinary = amount[4:]
    # Robust scaling keeps typical values spread out around 0 with unit-ish spread...
    assert 0.5 < np.percentile(ordinary, 75) - np.percentile(ordinary, 25) < 2
    # ...while the huge amounts stay the largest values, in a compressed tail.
    assert np.all(amount[:4] > ordinary.max())
    assert np.all(np.diff(amount[:4]) > 0)
    assert amount[:4].max() < TAIL_START + 15


def test_values_beyond_float32_encode_as_the_largest_finite_values(frame) -> None:
    pre = _fit(frame)
    huge = frame.head(4).copy()
    huge["amount"] = [1e300, -1e39, 3e38, 1e6]
    amount = pre.transform(huge, "t").numeric[:, 0]
    assert np.isfinite(amount).all()
    assert amount[0] == -amount[1] > amount[2] > amount[3] > TAIL_START


def test_a_column_piled_on_one_value_is_scaled_by_its_ordinary_spread() -> None:
    """32_shuttle's x1: zero in most rows (an IQR of 0), small values in the rest and a few
    rows in the thousands, whose deviation would make a value of -50 look ordinary."""
    rng = np.random.default_rng(0)
    n = 5_000
    values = np.where(rng.random(n) < 0.6, 0.0, rng.integers(-5, 6, n)).astype(float)
    values[:40] = rng.choice([-2460.0, -1865.0, 1500.0], 40)
    train = pd.DataFrame({"x": values, "constant": 7.0})
    pre = _fit(train)
    x, constant = pre.numeric
    assert values.std() > 100
    assert 1 < x.scale < 5  # the 10-90 percentile range, -3 to 3
    assert constant.scale == 1.0
    odd = pre.transform(pd.DataFrame({"x": [-50.0], "constant": [7.0]}), "t").numeric
    assert abs(odd[0, 0]) > 10


@pytest.mark.parametrize("magnitude", [1e-300, 1e40])
def test_a_column_whose_spread_float32_cannot_hold_is_refused(magnitude) -> None:
    """Its scale turned 0 or infinite in float32, every value encoded NaN, and training
    stopped with "training diverged ... lower training.learning_rate"."""
    rng = np.random.default_rng(0)
    train = pd.DataFrame({"x": rng.normal(size=100) * magnitude, "y": rng.normal(size=100)})
    with pytest.raises(InputError, match=r"^training data: column 'x' spreads over about .*32-bit"):
        _fit(train)
    train["x"] *= 1e-37 / magnitude  # within float32's normal numbers: encodes finite values
    assert np.isfinite(_fit(train).transform(train, "t").numeric).all()


def test_encoding_ignores_other_columns_and_their_order(frame) -> None:
    numeric = frame[["amount", "hour", "balance"]]
    pre = TabularPreprocessor.fit(numeric, list(numeric.columns), categorical=None)
    exact = pre.transform(numeric, "t")
    shuffled = pre.transform(frame[["merchant", "balance", "amount", "rare", "hour"]], "t")
    assert np.array_equal(exact.numeric, shuffled.numeric)
    assert np.array_equal(exact.observed, shuffled.observed)
    # All-number frames take the columns by position, found once per layout and reused.
    numbers = numeric.assign(extra=1.0)
    for layout in (["balance", "extra", "amount", "hour"], ["hour", "amount", "balance"]) * 2:
        assert np.array_equal(pre.transform(numbers[layout], "t").numeric, exact.numeric)
    # A repeated name among the other columns makes positions ambiguous; names still work.
    repeated = numbers[["extra", "amount", "extra", "hour", "balance"]]
    assert np.array_equal(pre.transform(repeated, "t").numeric, exact.numeric)
    # Fortran-ordered input (as some frames convert) is compressed the same way.
    fortran = pd.DataFrame(np.asfortranarray(numeric.to_numpy()), columns=numeric.columns)
    assert np.array_equal(pre.transform(fortran, "t").numeric, exact.numeric)


def test_float_columns_in_reverse_order_beside_text_encode_as_in_order() -> None:
    """A CSV reads every number as a float, so pandas took the features of a file whose
    columns came reversed as one block stepping backwards; torch aborted the process on it."""
    amount, balance = np.arange(300.0), np.arange(300.0) * 2
    in_order = pd.DataFrame({"amount": amount, "balance": balance, "merchant": ["a", "b"] * 150})
    pre = _fit(in_order)
    reversed_columns = pd.DataFrame(
        {"merchant": in_order["merchant"], "balance": balance, "amount": amount}
    )
    exact = pre.transform(in_order, "t").numeric
    assert np.array_equal(pre.transform(reversed_columns, "t").numeric, exact)


def test_unseen_and_rare_categories_share_the_unknown_bucket(frame) -> None:
    pre = _fit(frame)
    rare = pre.categorical[1]
    assert rare.categories == ["common"]  # seen once each: folded into the unknown bucket
    new = frame.head(3).assign(merchant=["grocery", "casino", None])
    codes = pre.transform(new, "t").codes
    assert codes[0, 0] == pre.categorical[0].categories.index("grocery") + 1
    assert codes[1, 0] == 0 and codes[2, 0] == 0


def test_a_batch_whose_every_value_is_a_category_spelt_otherwise_is_refused(frame) -> None:
    """A column spelt otherwise (upper case, True/False for yes/no) scored every row as an
    unseen category without a word: a bank day's file had 80% of its rows flagged."""
    pre = _fit(frame.assign(paid=np.resize(["yes", "no"], len(frame))))
    shouted = frame.assign(merchant=frame["merchant"].str.upper(), paid="yes")
    with pytest.raises(InputError) as refused:
        pre.transform(shouted, "day.csv")
    assert str(refused.value) == (
        f"day.csv: column 'merchant': none of its 400 values is a category the model learnt "
        f"(such as '{shouted['merchant'][0]}', which the model learnt as "
        f"'{frame['merchant'][0]}'): write the column as in the training data"
    )
    flags = frame.assign(paid=frame["amount"] > 30)
    with pytest.raises(
        InputError, match=r"'paid': .* \(such as '(True|False)'; the model learnt 'no', 'yes'\)"
    ):
        pre.transform(flags, "day.csv")
    # A few such rows, or one known value among them, are rows to score.
    assert (pre.transform(shouted.head(19), "t").codes[:, 0] == 0).all()
    mixed = shouted.assign(merchant=["fuel", *shouted["merchant"][1:]])
    assert (pre.transform(mixed, "t").codes[1:, 0] == 0).all()
    # So are values training did not see (a month of its own, a column of rare shops): new,
    # not spelt otherwise.
    months = frame.assign(merchant="casino", paid="no")
    assert (pre.transform(months, "t").codes[:, 0] == 0).all()
    shops = pd.DataFrame({"shop": [f"s{i % 100}" for i in range(300)]})
    new_shops = pd.DataFrame({"shop": [f"new{i}" for i in range(50)]})
    assert (_fit(shops).transform(new_shops, "t").codes == 0).all()


def test_a_bad_cell_among_decimal_commas_is_the_one_named(frame) -> None:
    """One bad cell in a semicolon CSV's column of 1,5's makes the reader keep the column as
    text, and the error named row 1's '-27,50' wherever the bad cell lay."""
    pre = _fit(frame)
    amounts = frame["amount"].map(lambda v: f"{v:.2f}".replace(".", ","))
    for bad in ("abc", "1.234,50", "12.5x"):
        text = frame.assign(amount=[*amounts[:299], bad, *amounts[300:]])
        with pytest.raises(InputError, match=f"^day.csv: column 'amount', row 300: '{bad}' is"):
            pre.transform(text, "day.csv")
    # A cell of bytes (a Latin-1 CSV) is named by its row, as before the search for commas,
    # which raised UnicodeDecodeError on it.
    latin = frame.assign(amount=[*amounts[:4], "caf\xe9".encode("latin-1"), *amounts[5:]])
    with pytest.raises(InputError, match=r"^day.csv: column 'amount', row 5: b'caf\\xe9' is"):
        pre.transform(latin, "day.csv")
    # Decimal commas alone: the first is what is not a number as read.
    with pytest.raises(InputError, match=f"row 1: '{amounts[0]}' is not a number"):
        pre.transform(frame.assign(amount=amounts), "day.csv")


def test_categories_count_every_spelling_and_keep_the_most_frequent_then_first_seen() -> None:
    """A blank, "NA" and a null are one missing category, frequent only together; beyond
    MAX_CATEGORIES the most frequent are kept and, among equals, those seen first."""
    missing = pd.DataFrame({"code": ["x", "", "NA", None, "y"] * 2 + ["x"] * 3})
    assert _fit(missing).categorical[0].categories == ["<missing>", "x"]
    names = [f"c{i:03d}" for i in range(MAX_CATEGORIES, -1, -1)]  # c100 first, c000 last
    rows = names * MIN_CATEGORY_COUNT + ["c000"]  # c000, seen last, is seen most
    kept = _fit(pd.DataFrame({"code": rows})).categorical[0].categories
    assert kept == sorted([*names[:-2], "c000"])  # c001, last seen of the ties, is not


def test_a_categorical_column_with_a_different_value_on_every_row_is_refused(frame) -> None:
    """A customer id as the only feature trained a model that gave every row one score, an
    unseen customer's too, and flagged none."""
    ids = pd.DataFrame({"customer": [f"c{i}" for i in range(len(frame))]})
    with pytest.raises(
        InputError, match=r"^training data: column 'customer' .* each of the 400 training rows"
    ):
        _fit(ids)
    ids.loc[1, "customer"] = "c0"  # one value seen twice: categories, not an id
    assert [c.name for c in _fit(ids).categorical] == ["customer"]


def test_two_valued_numeric_columns_become_binary_matched_as_numbers(frame) -> None:
    flags = frame.assign(is_online=np.arange(len(frame)) % 3 == 0).astype({"is_online": int})
    pre = _fit(flags)
    assert "is_online" not in [c.name for c in pre.numeric + pre.categorical]
    (online,) = pre.binary
    assert online.name == "is_online" and online.values == [0.0, 1.0]
    assert online.unseen_nll == pytest.approx(math.log(len(flags) + 2))
    assert pre.feature_names[len(pre.numeric)] == "is_online"  # after the numeric features
    # Scoring files may carry the flag as floats, or hold a value never seen in training.
    scored = flags.head(4).astype({"is_online": float})
    scored.loc[scored.index[3], "is_online"] = 7.0
    encoded = pre.transform(scored, "t")
    column = len(pre.numeric)
    np.testing.assert_array_equal(encoded.numeric[:, column], [1.0, 0.0, 0.0, np.nan])
    assert (encoded.observed[:, column] == 1).all()
    # A bad cell is named as in any numeric column, and so is a missing one.
    with pytest.raises(InputError, match=r"column 'is_online', row 2: 'yes' is not a number"):
        pre.transform(
            flags.head(3).astype({"is_online": object}).assign(is_online=[1, "yes", 0]), "t"
        )
    with pytest.raises(InputError, match=r"column 'is_online', row 2: missing value"):
        pre.transform(flags.head(3).assign(is_online=[1.0, np.nan, 0.0]), "t")
    # Two values, one of them seen fewer than MIN_CATEGORY_COUNT times: numeric, outlier and all.
    odd = np.zeros(len(flags))
    odd[: MIN_CATEGORY_COUNT - 1] = 9.0
    nearly_blank = _fit(flags.assign(pixel=odd))
    assert "pixel" in [c.name for c in nearly_blank.numeric]
    # A user's explicit list of categorical columns is taken as it is.
    explicit = TabularPreprocessor.fit(flags, list(flags.columns), ["merchant", "rare"])
    assert "is_online" in [c.name for c in explicit.numeric]
    # Round trip through the stored JSON keeps matching numbers.
    again = TabularPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(again.transform(scored, "t").numeric, encoded.numeric)


def test_true_false_reads_as_a_binary_feature_and_not_as_a_number(frame) -> None:
    flags = frame.assign(is_online=np.arange(len(frame)) % 3 == 0).astype({"is_online": int})
    pre = _fit(flags)
    as_bools = pre.transform(flags.head(6).astype({"is_online": bool}), "t")
    np.testing.assert_array_equal(as_bools.numeric, pre.transform(flags.head(6), "t").numeric)
    with pytest.raises(InputError, match=r"^t: column 'hour' holds true/false, not numbers$"):
        pre.transform(flags.head(6).assign(hour=True), "t")
    # One true among numbers, as a frame built from JSON records holds it, was scored as 1.
    mixed = flags.head(6).astype({"hour": object})
    mixed.loc[mixed.index[2], "hour"] = True
    with pytest.raises(InputError, match=r"^t: column 'hour', row 3: True is true/false, not a"):
        pre.transform(mixed, "t")


def test_binary_columns_missing_in_training_get_an_indicator(frame) -> None:
    flag = np.where(np.arange(len(frame)) % 2 == 0, 1.0, 0.0)
    flag[::7] = np.nan
    pre = _fit(frame.assign(flag=flag))
    assert pre.binary[0].has_missing
    column = len(pre.numeric)
    assert column in pre.missing_columns
    encoded = pre.transform(frame.assign(flag=flag), "t")
    missing = np.isnan(flag)
    assert (encoded.observed[missing, column] == 0).all()
    assert (encoded.numeric[missing, column] == 0).all()
    assert (encoded.numeric[~missing, column] == flag[~missing]).all()


def test_detectors_saved_before_binary_columns_keep_their_two_valued_categories(frame) -> None:
    """An older detector's network expects codes for a two-valued column: unknown 0, then its
    two numbers as 1 and 2."""
    state = _fit(frame).to_dict()
    del state["binary"]
    state["categorical"].append(
        {"name": "is_online", "categories": ["0.0", "1.0"], "values": [0.0, 1.0]}
    )
    old = TabularPreprocessor.from_dict(state)
    scored = frame.head(4).assign(is_online=[1.0, 0.0, 0.0, 7.0])
    assert old.transform(scored, "t").codes[:, -1].tolist() == [2, 1, 1, 0]


def test_missing_values_are_imputed_with_an_indicator(frame) -> None:
    pre = _fit(frame)
    assert pre.missing_columns == [2]
    encoded = pre.transform(frame, "t")
    missing = frame["balance"].isna().to_numpy()
    assert np.all(encoded.observed[missing, 2] == 0)
    assert np.all(encoded.numeric[missing, 2] == 0)
    assert np.all(encoded.observed[~missing, 2] == 1)


def test_round_trips_through_json(frame) -> None:
    pre = _fit(frame)
    again = TabularPreprocessor.from_dict(pre.to_dict())
    a, b = pre.transform(frame, "t"), again.transform(frame, "t")
    assert np.array_equal(a.numeric, b.numeric) and np.array_equal(a.codes, b.codes)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("amount", "12,50", "column 'amount', row 3: '12,50' is not a number"),
        ("amount", np.inf, "column 'amount', row 3: infinite value"),
        ("hour", np.nan, "column 'hour', row 3: missing value, and the training data had none"),
    ],
)
def test_bad_values_name_file_column_and_row(frame, column, value, message) -> None:
    pre = _fit(frame)
    bad = frame.head(5).astype({column: object})
    bad.loc[2, column] = value
    with pytest.raises(InputError, match=message) as info:
        pre.transform(bad, "new.csv", row_offset=0)
    assert str(info.value).startswith("new.csv: ")


@pytest.mark.parametrize(
    ("dates", "message"),
    [
        (pd.date_range("2026-01-01", periods=400, freq="h"), "dates or times"),
        (pd.date_range("2026-01-01", periods=400, freq="h", tz="UTC"), "dates or times"),
        (pd.period_range("2026-01", periods=400, freq="M"), "dates or times"),
        # CSV readers leave dates as text: ISO 8601 and US-style.
        ([f"2026-01-{1 + i % 28:02d}T10:{i % 60:02d}:00Z" for i in range(400)], "dates or times"),
        ([f"2026-{1 + i % 12:02d}-15" for i in range(400)], "dates or times"),
        ([f"{1 + i % 12}/15/2026 10:{i % 60:02d} PM" for i in range(400)], "dates or times"),
        # Times of day, which pyarrow types in a CSV (refused) and Parquet holds as text.
        ([f"{i % 24:02d}:{i % 60:02d}" for i in range(400)], "dates or times"),
        ([f"{i % 24:02d}:{i % 60:02d}:15.5" for i in range(400)], "dates or times"),
        (pd.to_timedelta(np.arange(400), unit="s"), "durations; convert them to a number"),
    ],
)
def test_date_time_and_duration_columns_are_refused(frame, dates, message) -> None:
    # As categories, every date after training would be unseen: each new row an anomaly.
    with pytest.raises(InputError, match=message) as info:
        _fit(frame.assign(when=dates))
    assert "column 'when'" in str(info.value)
    assert "\n" not in str(info.value)


def test_lists_and_structs_where_categories_belong_are_refused(frame) -> None:
    # Parquet's nested types reach pandas as arrays and dicts, which it cannot hash: training
    # and scoring stopped with a TypeError.
    merchants = frame["merchant"].tolist()
    lists = pa.array([[m] for m in merchants]).to_pandas()
    config = parse_config({"data": {"path": "train.parquet"}})
    expected = r"column 'merchant', row 1: .* is a list or struct, not one value$"
    with pytest.raises(InputError, match=rf"^train.parquet: {expected}"):
        split_table(frame.assign(merchant=lists), config)
    structs = pa.array([{"name": m} for m in merchants]).to_pandas()
    with pytest.raises(InputError, match=rf"^new.parquet: {expected.replace('1', '11')}"):
        _fit(frame).transform(frame.assign(merchant=structs), "new.parquet", row_offset=10)
    # One list among texts, as JSON records (a REST request) give: a TypeError traceback.
    mixed = frame.head(4).astype({"merchant": object})
    mixed.at[mixed.index[2], "merchant"] = ["m1"]
    with pytest.raises(InputError, match=r"^request: column 'merchant', row 3: \['m1'\] is a list"):
        _fit(frame).transform(mixed, "request")


def test_dates_where_categories_belong_are_refused_when_scored(frame) -> None:
    # Training refuses dates as features, so none is a category: every row scored as unseen.
    when = pd.date_range("2026-01-01", periods=5, freq="h")
    with pytest.raises(InputError, match="^new.parquet: column 'merchant' holds dates or times"):
        _fit(frame).transform(frame.head(5).assign(merchant=when), "new.parquet")


@pytest.mark.parametrize(
    "when",
    [
        ["2026-01-01", "2026-01-02", None, "2026-01-03", "2026-01-04"],
        ["10:30", "11:45:00", "12:00", "", "13:15"],
        [f"{1 + i}/15/2026" for i in range(5)],
    ],
)
def test_dates_written_as_text_where_categories_belong_are_refused_when_scored(frame, when) -> None:
    # Typed, they were refused; as text (a CSV, or Parquet strings) every row scored as an
    # unseen category without a word.
    pre = _fit(frame)
    with pytest.raises(InputError, match="^new.csv: column 'merchant' holds dates or times"):
        pre.transform(frame.head(5).assign(merchant=when), "new.csv")
    # A date among known categories is one unseen value, scored as such.
    known = frame.head(5).assign(merchant=[*frame["merchant"].head(4), when[0]])
    assert (pre.transform(known, "new.csv").codes[:, 0] > 0).sum() == 4


def test_text_that_only_contains_digits_or_dashes_stays_categorical(frame) -> None:
    codes = np.resize(["2026", "A-12", "12/x", "2026-01-15 and later"], len(frame))
    pre = _fit(frame.assign(code=codes))
    assert "code" in [c.name for c in pre.categorical]


def test_number_coded_categories_match_across_integer_and_float_columns() -> None:
    # A merchant category code read from Parquet (int64) and from CSV (float64, as our CSV
    # reader reads integers) must give the same codes: "5411.0" once missed "5411".
    mcc = np.resize([5411, 5812, 4111], 60)
    as_int = pd.DataFrame({"mcc": mcc, "amount": np.linspace(1, 2, 60)})
    as_float = as_int.astype({"mcc": "float64"})
    for training in (as_int, as_float):
        pre = TabularPreprocessor.fit(training, ["mcc", "amount"], categorical=["mcc"])
        assert pre.categorical[0].categories == ["4111", "5411", "5812"]
        for scored in (as_int, as_float):
            assert (pre.transform(scored, "s").codes[:, 0] > 0).all()
    # A detector saved with the old spelling keeps matching both.
    old = pre.to_dict()
    old["categorical"][0]["categories"] = ["4111.0", "5411.0", "5812.0"]
    restored = TabularPreprocessor.from_dict(old)
    for scored in (as_int, as_float):
        np.testing.assert_array_equal(
            restored.transform(scored, "s").codes, pre.transform(as_int, "s").codes
        )


def test_codes_read_as_text_match_a_detector_fitted_on_numbers() -> None:
    # CSV columns listed as categorical are read as text; a detector fitted where they were
    # numbers (a Parquet integer column, or a CSV read before) holds 1234 for "01234", 5411 for
    # "5411.0" and a missing category for a blank or "NA". Each still finds its code.
    numbers = pd.DataFrame({"mcc": np.resize([1234.0, 5411.0, np.nan], 60)})
    pre = TabularPreprocessor.fit(numbers, ["mcc"], categorical=["mcc"])
    assert pre.categorical[0].categories == ["1234", "5411", "<missing>"]
    texts = pd.DataFrame({"mcc": ["01234", "5411.0", "", "NA", "5411", "A5", "1e400"]})
    codes = pre.transform(texts, "s").codes[:, 0]
    lookup = pre.categorical[0].lookup
    expected = [lookup["1234"], lookup["5411"], *[lookup["<missing>"]] * 2, lookup["5411"], 0, 0]
    assert codes.tolist() == expected
    # Fitted on the text itself, each text is its own category; a blank and "NA" are missing.
    pre = TabularPreprocessor.fit(texts.loc[np.resize(range(5), 60)], ["mcc"], categorical=["mcc"])
    assert pre.categorical[0].categories == ["01234", "5411", "5411.0", "<missing>"]


def test_a_detector_fitted_on_text_matches_the_numbers_booleans_and_nulls_it_spells() -> None:
    # A CSV's text "NA" is a Parquet file's null, its "01234" (a code read as text) the
    # Parquet integer 1234 once the zero was lost, its "true" the boolean True: fitted on the
    # text, the Parquet values scored as unseen categories, every row flagged without a word.
    texts = pd.DataFrame(
        {
            "zip": np.resize(["01234", "10001", "NA"], 60),
            "flag": np.resize(["true", "false", "null"], 60),
        }
    )
    pre = TabularPreprocessor.fit(texts, ["zip", "flag"], categorical=["zip", "flag"])
    assert pre.categorical[0].categories == ["01234", "10001", "<missing>"]
    typed = pd.DataFrame(
        {
            "zip": pd.array([1234, 10001, None], dtype="Int64"),
            "flag": np.array([True, False, None], dtype=object),
        }
    )
    expected = pre.transform(texts.head(3), "csv").codes
    assert (expected > 0).all()
    np.testing.assert_array_equal(pre.transform(typed, "parquet").codes, expected)
    np.testing.assert_array_equal(
        pre.transform(typed.astype({"zip": float}), "parquet").codes, expected
    )
    # A detector saved before "NA" was missing still finds a null by it.
    old = pre.to_dict()
    old["categorical"][0]["categories"] = ["01234", "10001", "NA"]
    restored = TabularPreprocessor.from_dict(old)
    np.testing.assert_array_equal(restored.transform(typed, "parquet").codes, expected)


def test_a_number_two_categories_spell_matches_only_its_own_spelling() -> None:
    # "01234" and "001234" both spell 1234: the number matches neither rather than one by
    # chance, and a category spelled as the number itself wins over padded ones.
    pre = TabularPreprocessor.fit(
        pd.DataFrame({"zip": np.resize(["01234", "001234", "0742", "742"], 80)}), ["zip"], ["zip"]
    )
    lookup = pre.categorical[0].lookup
    numbers = pd.DataFrame({"zip": [1234, 742, 1234.0]})
    assert pre.transform(numbers, "s").codes[:, 0].tolist() == [0, lookup["742"], 0]


@pytest.mark.parametrize("dtype", ["Float64", "double[pyarrow]"])
def test_a_nullable_float_category_column_reads_its_missing_values(dtype: str) -> None:
    # pandas' NA in a nullable float column was a TypeError traceback, not a category.
    numbers = pd.DataFrame({"mcc": np.resize([1234.0, 5411.0, np.nan], 60)})
    pre = TabularPreprocessor.fit(numbers, ["mcc"], categorical=["mcc"])
    nullable = pd.DataFrame({"mcc": pd.array([5411.0, None, 1234.0], dtype=dtype)})
    lookup = pre.categorical[0].lookup
    codes = pre.transform(nullable, "s").codes[:, 0].tolist()
    assert codes == [lookup["5411"], lookup["<missing>"], lookup["1234"]]
    refit = TabularPreprocessor.fit(nullable.loc[np.resize(range(3), 60)], ["mcc"], ["mcc"])
    assert refit.categorical[0].categories == pre.categorical[0].categories


def test_padded_codes_and_boolean_texts_match_a_detector_fitted_on_numbers_and_bools() -> None:
    # pyarrow reads " 5411" in a CSV column of numbers as 5411 and "true" in one of booleans
    # as True; read as text (data.categorical), they scored as unseen values without a word.
    numbers = pd.DataFrame({"mcc": np.resize([1234.0, 5411.0], 60)})
    mcc = TabularPreprocessor.fit(numbers, ["mcc"], categorical=["mcc"])
    texts = pd.DataFrame({"mcc": [" 5411", "1234\t", " 5411 ", "5 411", "x5411"]})
    lookup = mcc.categorical[0].lookup
    assert mcc.transform(texts, "s").codes[:, 0].tolist() == [
        lookup["5411"],
        lookup["1234"],
        lookup["5411"],
        0,
        0,
    ]
    flags = pd.DataFrame({"flag": np.resize([True, False], 60)})
    flag = TabularPreprocessor.fit(flags, ["flag"], categorical=["flag"])
    texts = pd.DataFrame({"flag": ["true", "FALSE", "True", "yes"]})
    lookup = flag.categorical[0].lookup
    assert flag.transform(texts, "s").codes[:, 0].tolist() == [
        lookup["True"],
        lookup["False"],
        lookup["True"],
        0,
    ]


def test_a_table_of_categorical_columns_only_encodes_and_scores(frame) -> None:
    """No numeric inputs at all: an empty numeric block, codes for every column, and scores
    (an assertion on the empty block used to stop every such table)."""
    import torch

    from anomaly_vae.detector import build_tabular_model
    from anomaly_vae.scoring import score_tabular

    categories = frame[["merchant", "rare"]]
    pre = _fit(categories)
    encoded = pre.transform(categories, "t")
    assert encoded.numeric.shape == (len(frame), 0)
    assert (encoded.codes[:, 0] > 0).all()
    torch.manual_seed(0)
    params = {"hidden": [8], "latent": 2, "likelihood": "gaussian", "dropout": 0.0}
    scores = score_tabular(build_tabular_model(pre, params), pre.check(categories, "t"), top_k=3)
    assert np.isfinite(scores.score).all() and scores.top_features.shape == (len(frame), 2)


def test_a_missing_value_among_the_validation_rows_gets_an_indicator(frame) -> None:
    config = parse_config({"data": {"path": "train.csv"}})
    complete = frame.drop(columns="balance")
    # The one missing amount lands in the validation rows: the training rows alone have none.
    probe = split_table(complete.assign(amount=2.0 * np.arange(len(frame))), config)
    row = int(probe.validation["amount"].iloc[0] // 2)
    gapped = complete.copy()
    gapped.loc[row, "amount"] = np.nan
    split = split_table(gapped, config)
    assert split.train["amount"].notna().all() and split.may_miss == ["amount"]

    pre = TabularPreprocessor.fit(split.train, split.features, None, split.may_miss)
    validation = pre.transform(split.validation, "train.csv")
    assert pre.numeric[0].has_missing and not validation.observed[:, 0].all()


def test_an_infinite_or_empty_training_column_names_the_file(frame) -> None:
    config = parse_config({"data": {"path": "train.csv"}})
    frame["hour"] = frame["hour"].astype(float)
    frame.loc[5, "hour"] = np.inf
    with pytest.raises(InputError, match=r"^train.csv: column 'hour', row 6: infinite value$"):
        split_table(frame, config)
    frame["hour"] = np.nan
    with pytest.raises(InputError, match=r"^train.csv: column 'hour' has no values"):
        split_table(frame, config)


def test_a_validation_fraction_that_leaves_no_training_rows_is_refused(frame) -> None:
    small = frame.head(25)
    config = parse_config({"data": {"path": "train.csv"}, "training": {"val_fraction": 0.99}})
    with pytest.raises(InputError, match="val_fraction: 0.99 of the 25 normal samples leaves"):
        split_table(small, config)
    config.training.val_fraction = 0.9
    assert len(split_table(small, config).train) == 3  # 22 of 25 (22.5 rounds to even)


def test_a_zero_padded_sequence_number_is_refused_as_a_feature(frame) -> None:
    # A CSV's 00001, 00002, ... is read as text, a code, as Parquet holds it: as categories it
    # trained without a word, each value seen once, where the plain numbers were refused.
    config = parse_config({"data": {"path": "train.csv"}})
    numbered = frame.assign(invoice=[f"{i + 1:05d}" for i in range(len(frame))])
    with pytest.raises(InputError, match=r"column 'invoice' counts the rows \(1, 2, \.\.\.\)"):
        split_table(numbered, config)
    # Codes that do not count the rows, and text that is not numbers, are features.
    codes = np.resize(["00501", "01234", "02139"], len(frame))
    assert "invoice" in split_table(frame.assign(invoice=codes), config).features
    letters = [f"A{i:05d}" for i in range(len(frame))]
    assert "invoice" in split_table(frame.assign(invoice=letters), config).features
