"""Checks that a table has the columns a model expects, and reading anomaly labels."""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence

import numpy as np
import pandas as pd

from anomaly_vae.errors import InputError

# The columns scoring adds to the input's (an image model's have no `top_features`).
OUTPUT_COLUMNS = ("recon_score", "kl_score", "score", "is_anomaly", "probability", "top_features")

# float64 holds every integer up to 2^53 exactly, and not every one beyond it.
FLOAT_EXACT = 2**53

_TRUE_STRINGS = {"1", "true", "yes", "anomaly", "anomalous"}
_FALSE_STRINGS = {"0", "false", "no", "normal"}


def check_columns(
    columns: Sequence[str],
    required: Sequence[str],
    known: Collection[str],
    source: str,
    allow_extra: bool = False,
    named_by: Mapping[str, str] | None = None,
) -> None:
    """Missing required columns are an error; so are unexpected ones unless `allow_extra`,
    and a name given to two columns, even an extra one: readers keep both (a CSV header, a
    Parquet schema, a DataFrame), and which of the two a feature was read from is nobody's
    guess (a second 'amount' of 999s scored every row as an anomaly, silently).

    `named_by` maps required names to the config key that names them, which the error then
    gives: a config written for another table (configs/creditcard.yaml's id and dropped
    columns, given another `data.path`) read as the file's fault."""
    repeated = [name for name, count in Counter(columns).items() if count > 1]
    if repeated:
        raise InputError(
            f"{source}: more than one column named {quoted_names(repeated)}"
            f"{_headerless_hint(columns)}"
        )
    present = set(columns)
    missing = list(dict.fromkeys(c for c in required if c not in present))
    if missing:
        keys = dict.fromkeys(named_by[c] for c in missing) if named_by else {}
        named = f", which the config names in {', '.join(keys)}" if keys else ""
        hint = _spelled_otherwise(missing, columns)
        if len(missing) == len(set(required)):  # none of them there
            hint = hint or _headerless_hint(columns)
        raise InputError(f"{source}: missing column(s) {quoted_names(missing)}{named}{hint}")
    if not allow_extra:
        expected = set(required) | set(known)
        extra = [c for c in columns if c not in expected]
        if extra:
            raise InputError(
                f"{source}: unexpected column(s) {quoted_names(extra)} "
                "(the model was not trained on them; --allow-extra-columns, or allow_extra=True "
                f"in Python, ignores them){_unnamed_hint(columns)}"
            )


def _headerless_hint(names: Sequence[str]) -> str:
    """A hint for column names one of which is a number: a CSV without its header row, whose
    first row of values was read as the names ("more than one column named 'no', '2'")."""
    number = next((name for name in names if _is_number(name)), None)
    if number is None:
        return ""
    return f" (a column named '{number}': a CSV without its header row?)"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unnamed_hint(columns: Sequence[str]) -> str:
    """What a column without a name usually is: a pandas index saved with the rows (first),
    or a separator ending every line of a CSV (last)."""
    if columns and columns[0] == "":
        return " (a column without a name first: a saved index? pandas: to_csv(index=False))"
    if columns and columns[-1] == "":
        return " (a column without a name last: a separator at the end of each line?)"
    return ""


def _spelled_otherwise(missing: Sequence[str], columns: Sequence[str]) -> str:
    """A hint naming the columns that differ from missing ones only in case or surrounding
    spaces (a header written "id, amount" holds ' amount'), or else only in their Unicode form
    (a 'größe' whose ö is an o and a combining diaeresis): reported missing alone, they
    seemed plainly there, the second even when shown."""
    near = _near_names(missing, columns, lambda name: name.strip().casefold())
    if near:
        return f" (present as {quoted_names(near)}: names must match exactly, spaces and case included)"
    near = _near_names(missing, columns, lambda name: unicodedata.normalize("NFC", name))
    if near:
        return (
            f" (present as {quoted_names(near)}, the same letters in another Unicode form: names "
            "must match character for character)"
        )
    return ""


def _near_names(
    missing: Sequence[str], columns: Sequence[str], folded: Callable[[str], str]
) -> list[str]:
    """The `columns` whose `folded` form is that of a `missing` name."""
    by_fold = {folded(column): column for column in columns}
    return [by_fold[key] for name in missing if (key := folded(name)) in by_fold]


def check_kept_columns(columns: Sequence[str], source: str) -> None:
    """Refuse an input column kept in the output under the name of a score column.

    The scores replaced its values in place, and one the model does not write stayed as it
    was: a scored file scored again with `--keep-columns` by a model without a calibrated
    probability came out with the first model's `probability` beside the second's flags.
    """
    taken = [c for c in columns if c in OUTPUT_COLUMNS]
    if taken:
        raise InputError(
            f"{source}: column '{taken[0]}' has the name of a column scoring writes; rename "
            "or drop it to keep it beside the scores"
        )


# What to do about a label that reads as neither normal nor anomaly: in training, set the
# config's anomaly value; a trained model's (evaluate, calibrate) is fixed, and the hint to set
# it sent users looking for an option those commands do not have.
SET_ANOMALY_VALUE = "set data.anomaly_value to the value that marks an anomaly"
MODEL_ANOMALY_VALUE = (
    "the model was trained without data.anomaly_value: give the value that marks an anomaly "
    "as --anomaly-value, or recode the labels as 0/1"
)


def anomaly_labels(
    series: pd.Series,
    anomaly_value: str | None,
    source: str,
    row_offset: int = 0,
    remedy: str = SET_ANOMALY_VALUE,
    value_key: str = "data.anomaly_value",
) -> np.ndarray:
    """Boolean anomaly flags from a label column; `value_key` is where `anomaly_value` was
    given, as errors name it (`--anomaly-value` of evaluate and calibrate).

    With `anomaly_value` the rows equal to it (as numbers where the labels are numbers, else
    as text) are anomalies. Without it, numbers (also as text) are anomalous when non-zero
    and other text must read as a yes/no word, so a label column of "fraud"/"ok" is not
    silently misread.
    """
    name = series.name
    missing = np.flatnonzero(series.isna().to_numpy())
    if len(missing):
        raise InputError(
            f"{source}: label column '{name}', row {row_offset + missing[0] + 1}: missing label"
        )
    numbers = _label_numbers(series, source, row_offset)
    if anomaly_value is not None:
        return _equal_to(series, numbers, anomaly_value, source, value_key)
    if numbers is not None:
        return numbers != 0
    if pd.api.types.is_bool_dtype(series):
        return series.to_numpy(dtype=np.float64) != 0
    text = series.astype(str).str.strip().str.lower()
    unknown = ~text.isin(_TRUE_STRINGS | _FALSE_STRINGS)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise InputError(
            f"{source}: label column '{name}', row {row_offset + row + 1}: cannot read "
            f"{series.iloc[row]!r} as normal or anomaly ({remedy})"
        )
    return text.isin(_TRUE_STRINGS).to_numpy()


def check_anomaly_value_matches(
    series: pd.Series,
    labels: np.ndarray,
    anomaly_value: str | None,
    source: str,
    value_key: str = "data.anomaly_value",
    remedy: str = "",
) -> None:
    """Refuse an `anomaly_value` that no label equals: training read every labelled anomaly
    as normal (9 on 0/1 labels), learnt them and chose the threshold without them, silently.

    Labels that all say normal in so many words ('no', 'false', 'normal') are a batch without
    anomalies: a day's clean transactions, which `calibrate` takes for an fpr<=F threshold,
    were refused. Unless such a word is what marks an anomaly (`is_legit: no`): then 'No'
    throughout is as likely that value misspelt."""
    if anomaly_value is None or labels.any():
        return
    held = sorted(series.astype(str).str.strip().unique())
    said_normal = {value.casefold() for value in held} <= _FALSE_STRINGS
    if said_normal and anomaly_value.strip().casefold() not in _FALSE_STRINGS:
        return
    raise InputError(
        f"{source}: {value_key} {anomaly_value!r} matches no row of label column "
        f"'{series.name}', which holds {quoted_names(held)}{remedy}"
    )


class HeldLabels:
    """A label column read batch by batch, for `check_anomaly_value_matches` once the last
    batch is in: labels that spell the anomaly otherwise ('YES' for 'yes') read as normal, and
    `evaluate` said only "the labels mark 0 of 600" while `calibrate` chose `fpr<=F` among
    them. Its distinct values are kept as text, per batch, so a large file costs little, and
    only where the model has an anomaly value to match them against."""

    def __init__(
        self, name: str, anomaly_value: str | None, value_key: str = "data.anomaly_value"
    ) -> None:
        self.name = name
        self.anomaly_value = anomaly_value
        self.value_key = value_key
        self.texts: set[str] = set()

    def add(self, batch: pd.Series) -> None:
        if self.anomaly_value is not None:
            self.texts.update(pd.Series(batch.unique()).astype(str).str.strip())

    def check(self, labels: np.ndarray, source: str) -> None:
        held = pd.Series(sorted(self.texts), name=self.name)
        # Evaluate and calibrate read the file's own spelling when told it.
        remedy = (
            "" if self.value_key == "--anomaly-value" else "; give the file's as --anomaly-value"
        )
        check_anomaly_value_matches(
            held, labels, self.anomaly_value, source, self.value_key, remedy
        )


def _label_numbers(series: pd.Series, source: str, row_offset: int) -> np.ndarray | None:
    """The labels as numbers: a number column, or text that reads as numbers throughout (a
    string column of "0.0"/"1.0" was refused as unreadable); None for booleans and words.

    A label that is not a finite number is refused: inf counted as an anomaly without a word.
    """
    if pd.api.types.is_bool_dtype(series):
        return None
    if pd.api.types.is_numeric_dtype(series):
        numbers = series.to_numpy(dtype=np.float64)
    else:
        parsed = pd.to_numeric(series.astype(str).str.strip(), errors="coerce")
        if parsed.isna().any():
            return None
        numbers = parsed.to_numpy(dtype=np.float64)
    infinite = np.flatnonzero(~np.isfinite(numbers))
    if len(infinite):
        row = int(infinite[0])
        raise InputError(
            f"{source}: label column '{series.name}', row {row_offset + row + 1}: label "
            f"{series.iloc[row]} is not a finite number"
        )
    return numbers


def _equal_to(
    series: pd.Series, numbers: np.ndarray | None, anomaly_value: str, source: str, value_key: str
) -> np.ndarray:
    """Rows whose label is `anomaly_value`: as numbers where the labels are `numbers` (a CSV
    reads 2 as 2.0, which as text would never equal "2"), else as text."""
    if numbers is None:
        return (series.astype(str).str.strip() == anomaly_value).to_numpy()
    try:
        number = float(anomaly_value)
    except ValueError:
        raise InputError(
            f"{source}: label column '{series.name}' holds numbers; {value_key} "
            f"{anomaly_value!r} is not one"
        ) from None
    return numbers == number


def quoted_names(columns: Sequence[str]) -> str:
    """Column names as messages quote them: the first five, then how many more."""
    shown = ", ".join(f"'{c}'" for c in columns[:5])
    return shown + (f" and {len(columns) - 5} more" if len(columns) > 5 else "")
