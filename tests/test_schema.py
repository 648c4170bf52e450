"""Label columns read as anomaly flags (numbers, words and an explicit anomaly value), and
the columns a table must have."""

import unicodedata

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.data.schema import anomaly_labels, check_columns
from anomaly_vae.errors import InputError

CODES = [0, 1, 2, 2, 0]


@pytest.mark.parametrize(
    "labels",
    [
        pd.Series(CODES, name="cls"),  # Parquet: integers
        pd.Series(CODES, name="cls", dtype="float64"),  # CSV: our reader's floats
        pd.Series([str(c) for c in CODES], name="cls"),  # text
    ],
)
def test_an_anomaly_value_matches_whether_labels_are_integers_floats_or_text(labels) -> None:
    # As text, the CSV's 2.0 never equalled "2": the anomalies were trained on as normal rows.
    flags = anomaly_labels(labels, "2", "f.csv")
    np.testing.assert_array_equal(flags, [False, False, True, True, False])


def test_a_word_for_a_number_label_column_is_an_error() -> None:
    with pytest.raises(InputError, match="label column 'cls' holds numbers; .* 'fraud' is not one"):
        anomaly_labels(pd.Series(CODES, name="cls", dtype="float64"), "fraud", "f.csv")


def test_without_an_anomaly_value_numbers_and_yes_no_words_are_read() -> None:
    np.testing.assert_array_equal(
        anomaly_labels(pd.Series(CODES, name="y"), None, "f"), [False, True, True, True, False]
    )
    words = pd.Series(["yes", "no", " Yes", "false", "1"], name="y")
    np.testing.assert_array_equal(
        anomaly_labels(words, None, "f"), [True, False, True, False, True]
    )
    with pytest.raises(InputError, match="row 2: cannot read 'fraud'"):
        anomaly_labels(pd.Series(["normal", "fraud"], name="y"), None, "f")


def test_labels_must_be_finite_and_numbers_may_be_text() -> None:
    # inf counted as an anomaly without a word; "0.0"/"1.0" text was refused as unreadable.
    for infinite in (pd.Series([0.0, np.inf], name="y"), pd.Series(["0", "-inf"], name="y")):
        for value in (None, "1"):
            with pytest.raises(InputError, match="'y', row 12: label -?inf is not a finite"):
                anomaly_labels(infinite, value, "f", row_offset=10)
    text = pd.Series(["0.0", "1.0", " 2 ", "0"], name="y")
    np.testing.assert_array_equal(anomaly_labels(text, None, "f"), [False, True, True, False])
    np.testing.assert_array_equal(anomaly_labels(text, "2", "f"), [False, False, True, False])


def test_a_missing_column_spelled_with_spaces_or_in_capitals_is_named_as_present() -> None:
    # A header written "id, amount, merchant" holds ' amount': 'amount' was reported missing
    # from a file that seemed to hold it.
    header = ["id", " amount", "MERCHANT "]
    with pytest.raises(InputError) as info:
        check_columns(header, ["amount", "merchant", "country"], ["id"], "new.csv")
    assert str(info.value) == (
        "new.csv: missing column(s) 'amount', 'merchant', 'country' (present as ' amount', "
        "'MERCHANT ': names must match exactly, spaces and case included)"
    )


def test_a_missing_column_in_another_unicode_form_is_named_as_present() -> None:
    # 'größe' with its ö written as o and a combining diaeresis (NFD) looks the same as the
    # model's 'größe' (NFC): "missing column(s) 'größe'" named a column the file plainly held.
    decomposed = unicodedata.normalize("NFD", "größe")
    with pytest.raises(InputError) as info:
        check_columns(["id", decomposed], ["größe"], ["id"], "new.csv")
    assert str(info.value) == (
        f"new.csv: missing column(s) 'größe' (present as '{decomposed}', the same letters in "
        "another Unicode form: names must match character for character)"
    )


def test_unexpected_columns_name_the_option_and_the_python_argument_that_ignore_them() -> None:
    # `score_frame` users were told to pass a command-line option their call cannot take.
    with pytest.raises(InputError) as info:
        check_columns(["id", "amount", "note"], ["amount"], ["id"], "request")
    assert str(info.value) == (
        "request: unexpected column(s) 'note' (the model was not trained on them; "
        "--allow-extra-columns, or allow_extra=True in Python, ignores them)"
    )


def test_a_column_without_a_name_asks_about_a_trailing_separator() -> None:
    # Lines ending in a comma read as a last column named '': "unexpected column(s) ''".
    with pytest.raises(InputError) as info:
        check_columns(["amount", ""], ["amount"], [], "new.csv")
    assert str(info.value).endswith(
        "ignores them) (a column without a name last: a separator at the end of each line?)"
    )
    # pandas' to_csv() with its default index=True names its first column ''.
    with pytest.raises(InputError) as info:
        check_columns(["", "amount"], ["amount"], [], "new.csv")
    assert str(info.value).endswith(
        "(a column without a name first: a saved index? pandas: to_csv(index=False))"
    )


def test_a_column_required_twice_is_named_missing_once() -> None:
    # A label that is an id too is in the config's columns twice: "'y', 'y'".
    with pytest.raises(InputError, match=r"missing column\(s\) 'y'$"):
        check_columns(["x"], ["y", "y"], [], "t.csv")


def test_a_csv_without_its_header_row_is_named_as_such() -> None:
    """Its first row of values read as the column names: "more than one column named 'no',
    'unknown', '2'" or every column missing, with nothing to say why."""
    with pytest.raises(InputError) as repeated:
        check_columns(["58", "management", "no", "2", "no", "2"], ["age", "job"], [], "day.csv")
    assert str(repeated.value) == (
        "day.csv: more than one column named 'no', '2' (a column named '58': a CSV without its "
        "header row?)"
    )
    with pytest.raises(InputError, match=r"'job' \(a column named '58': a CSV without its"):
        check_columns(["58", "management"], ["age", "job"], [], "day.csv")
    # Some columns there: the others are missing, whatever the names.
    with pytest.raises(InputError, match=r"^day.csv: missing column\(s\) 'job'$"):
        check_columns(["age", "2"], ["age", "job"], [], "day.csv", allow_extra=True)
