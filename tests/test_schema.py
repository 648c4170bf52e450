"""Label columns read as anomaly flags: numbers, words and an explicit anomaly value."""

import numpy as np
import pandas as pd
import pytest

from anomaly_vae.data.schema import anomaly_labels
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
