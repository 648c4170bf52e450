"""Turning a table into model inputs: robust numeric scaling, categorical codes, missing flags.

Everything here is fitted on training rows only and stored as plain JSON with the model, so
scoring reproduces training's encoding exactly without unpickling anything.

- Numeric columns are centred on the median and divided by the interquartile range (scaled to
  match a standard deviation on normal data; a wider central range where most values are one
  number), so a handful of huge transaction amounts cannot squash every other value towards
  zero. Beyond `TAIL_START` robust units the scale turns logarithmic: extreme values stay
  extreme (and monotone) but cannot dominate the loss.
- Categorical columns keep their frequent values; rare and unseen values share code 0, the
  unknown bucket, which training therefore sees too.
- A numeric column with exactly two values in training, each seen at least
  `MIN_CATEGORY_COUNT` times (a flag, a one-hot dummy), is binary: encoded 0/1 and modelled
  with one Bernoulli logit. Scaled as a number, the rarer value of a dummy sits many robust
  units out and the model spends its capacity there. A value that is neither of the two
  is encoded NaN; the model charges it what training's counts allow an unseen value
  (`BinaryColumn.unseen_nll`).
- A numeric or binary column that had missing values in training gets a 0/1 indicator input
  and its missing cells are imputed (median; 0) and left out of the reconstruction loss. A
  missing value in a column that never had one is an error: the model has no notion of it.
- Date, time and duration columns are refused: the user decides what of them repeats (the
  hour, the weekday) and so can be learnt from past rows.
"""

from __future__ import annotations

import datetime
import itertools
import math
import re
from collections.abc import Collection, Hashable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from anomaly_vae.data.schema import FLOAT_EXACT, quoted_names
from anomaly_vae.errors import InputError

# Robust units beyond which scaling turns logarithmic. At 3, ordinary but wide anomalies were
# squashed among the normals (mean AUROC 0.896 vs 0.912 at 10 over five ADBench tables); 20
# over 10 gained 0.002 AUROC and 0.004 AP over the nine benchmark tables (6_cardio +0.016).
TAIL_START = 20.0
MIN_CATEGORY_COUNT = 5
MAX_CATEGORIES = 100
MISSING_CATEGORY = "<missing>"
# Robust units: a central range of the training values over the width of the same range under
# a standard normal (the IQR: 1.349), so Gaussian-looking columns get unit spread. Where the
# values pile up on one number the IQR is 0, and the next wider range that is not stands in,
# before the standard deviation, which a few extreme rows inflate: 32_shuttle's x1 is 0 in 60%
# of normal rows and -2 to 2 in 80%, but its deviation of 32 came from rows at -2,460, and
# anomalies at -49 read as 1.5 units from normal. Over the benchmark tables (3 seeds) shuttle's
# AUROC went 0.997 -> 1.000 and mean AP 0.806 -> 0.808; the 10-90 range alone gave 0.803, and
# a deviation trimmed to the 1st-99th percentiles 0.787 (16_http lost 0.33 AP on two seeds).
SPREAD_RANGES = ((25, 75, 1.349), (10, 90, 2.563), (1, 99, 4.653))


@dataclass
class NumericColumn:
    name: str
    center: float
    scale: float
    has_missing: bool


@dataclass
class BinaryColumn:
    name: str
    values: list[float]  # encoded 0 and 1, matched as numbers (the strings of 1 and 1.0 differ)
    has_missing: bool
    # -log P(a value never seen in training), by the rule of succession over the n values
    # training held: log(n + 2). Two values cannot sum to less than probability one, so an
    # unseen value gets no probability from the model itself.
    unseen_nll: float


@dataclass
class CategoricalColumn:
    name: str
    categories: list[str]  # code i + 1 is categories[i]; code 0 is the unknown bucket
    # Detectors saved before binary columns existed kept a two-valued numeric column as a
    # category of its two numbers, matched as numbers; their networks still expect that.
    values: list[float] | None = None

    @property
    def size(self) -> int:
        return len(self.categories) + 1

    @cached_property
    def lookup(self) -> dict[str, int]:
        """Category string -> code, each category also found by the number, boolean or
        missing value its text spells (`_spelled_value`), unless another category spells the
        same: a detector fitted on a CSV's text holds "01234", "true" or "NA" where a Parquet
        file holds 1234, True or a null, which scored as unseen values without a word.
        Detectors saved before whole numbers lost their decimal point hold "5411.0", and
        those saved before an empty text was missing hold "": they match the same way."""
        codes = {value: i + 1 for i, value in enumerate(self.categories)}
        aliases: dict[str, int] = {}
        for value, code in codes.items():
            spelled = _spelled_value(value)
            if spelled is not None and spelled not in codes:
                aliases[spelled] = code if aliases.get(spelled, code) == code else 0
        return {**{alias: code for alias, code in aliases.items() if code}, **codes}

    def codes(self, series: pd.Series) -> np.ndarray:
        """Codes of a column's values (0: unknown), spelled as `_category_strings` spells them
        once per distinct value. A text the categories lack is looked up again as the number,
        boolean or missing value it spells: CSV columns listed as categorical are read as
        text, where a detector fitted on numbers (Parquet integers, or a CSV read before) holds
        1234 for "01234" and 5411 for "5411.0", and one fitted on booleans True for "true"."""
        found, strings = _distinct_strings(series)
        lookup = self.lookup
        unique_codes = np.array(
            [lookup.get(u) or lookup.get(_spelled_value(u), 0) for u in strings], dtype=np.int64
        )
        return unique_codes[found]


@dataclass
class EncodedTable:
    """Model-ready arrays for a batch of rows."""

    numeric: np.ndarray  # float32 (n, n_numeric + n_binary): scaled, then 0/1 (NaN: unseen)
    observed: np.ndarray  # float32, as `numeric`: 0 where the value was missing
    codes: np.ndarray  # int64 (n, n_categorical)

    def __len__(self) -> int:
        return len(self.numeric)

    def rows(self, rows: slice) -> EncodedTable:
        return EncodedTable(self.numeric[rows], self.observed[rows], self.codes[rows])


@dataclass
class CheckedRows:
    """Rows read and checked, encoded batch by batch when scored: encoding is most of
    preprocessing's time, and each batch's share runs on the scoring thread that reads it,
    on both cores, while the batch is in that core's cache. Scoring 5_campaign's 15,604 test
    rows on two cores took 13.7 ms so, against 19.6 encoding them all first: torch's threads,
    woken for the scaling, then took a core from the scoring threads."""

    preprocessor: TabularPreprocessor
    values: np.ndarray  # float64 (n, n_numeric + n_binary), as the frame held them, checked
    codes: np.ndarray  # int64 (n, n_categorical)

    def __len__(self) -> int:
        return len(self.values)

    def rows(self, rows: slice) -> EncodedTable:
        return self.preprocessor.encode(self.values[rows], self.codes[rows])


class TabularRows(Protocol):
    """Rows the scorer reads batch by batch: encoded already, or encoded as they are read."""

    def __len__(self) -> int: ...

    def rows(self, rows: slice) -> EncodedTable: ...


@dataclass
class TabularPreprocessor:
    numeric: list[NumericColumn] = field(default_factory=list)
    categorical: list[CategoricalColumn] = field(default_factory=list)
    # Stored with the model: a model keeps scoring as it was trained if the default changes.
    tail_start: float = TAIL_START
    binary: list[BinaryColumn] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        """Feature columns in the order the model's reconstruction terms use."""
        columns = [*self.numeric, *self.binary, *self.categorical]
        return [c.name for c in columns]

    @property
    def text_columns(self) -> list[str]:
        """The categorical columns to read from a CSV as text (a zip code keeps its leading
        zero); detectors saved before binary columns existed match their two-valued columns
        as numbers."""
        return [c.name for c in self.categorical if c.values is None]

    @property
    def never_missing(self) -> list[str]:
        """The categorical columns without a category for a missing value, in which a missing
        one scores as an unseen category (`check_category_values`)."""
        return [c.name for c in self.categorical if c.values is None and not _learnt_missing(c)]

    @property
    def category_sizes(self) -> list[int]:
        return [c.size for c in self.categorical]

    @property
    def missing_columns(self) -> list[int]:
        """Indices of numeric and binary columns that get a missing-value indicator input."""
        return [i for i, c in enumerate(self.number_columns) if c.has_missing]

    @property
    def unseen_nll(self) -> list[float]:
        return [c.unseen_nll for c in self.binary]

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame,
        features: Sequence[str],
        categorical: Sequence[str] | None,
        may_miss: Collection[str] = (),
        source: str = "training data",
    ) -> TabularPreprocessor:
        """Learn scaling and categories from training rows; `categorical=None` infers them.
        Columns in `may_miss` (`check_training_rows`) get a missing-value indicator even when
        these rows have no missing cell. `source`, the rows' file, is what errors name."""
        two_valued: set[str] = set()
        for name in features:
            _reject_dates(frame[name], name, source)
        listed = categorical
        if categorical is None:
            categorical = [c for c in features if not _is_numeric_column(frame[c])]
            two_valued = {c for c in features if c not in categorical and _has_two_values(frame[c])}
        _check_listed(categorical, features)
        numeric = []
        for c in features:
            if c in categorical or c in two_valued:
                continue
            try:
                numeric.append(_fit_numeric(frame[c], c, source, c in may_miss))
            except InputError as exc:
                if listed is None or _is_numeric_column(frame[c]):
                    raise
                raise _unlisted_categorical(exc, c) from None
        binary = [
            _fit_binary(frame[c], c, c in may_miss, source) for c in features if c in two_valued
        ]
        cats = [_fit_categorical(frame[c], c, source) for c in features if c in categorical]
        if not numeric and not binary and not cats:
            raise InputError(f"{source}: no feature columns left to train on")
        return cls(numeric=numeric, categorical=cats, binary=binary)

    def transform(self, frame: pd.DataFrame, source: str, row_offset: int = 0) -> EncodedTable:
        """Encode rows; bad values raise an error naming `source`, the column and the row."""
        return self.check(frame, source, row_offset).rows(slice(None))

    def check(self, frame: pd.DataFrame, source: str, row_offset: int = 0) -> CheckedRows:
        """Read and check rows, to be encoded batch by batch (`CheckedRows.rows`); bad values
        raise as in `transform`."""
        n = len(frame)
        # Numeric, binary and two-valued columns are converted together: one pass over the frame.
        numbers = _float_columns(frame, self._number_names)
        values = self._numeric_matrix(frame, numbers, source, row_offset)
        codes = np.zeros((n, len(self.categorical)), dtype=np.int64)
        if self._two_valued:
            codes[:, self._two_valued] = self._two_valued_codes(frame, numbers, source, row_offset)
        for j, column in enumerate(self.categorical):
            if column.values is None:
                codes[:, j] = _category_codes(column, frame[column.name], source, row_offset)
        return CheckedRows(self, values, codes)

    def encode(self, values: np.ndarray, codes: np.ndarray) -> EncodedTable:
        """Model inputs from checked numeric and binary values (`_numeric_matrix`) and codes."""
        n_numeric = len(self.numeric)
        # Whole-matrix operations: a loop over columns cost more than the network on wide tables.
        # Scaled straight into the network's float32: a float64 result and a cast took two more
        # passes over the matrix.
        numeric = np.empty(values.shape, dtype=np.float32)
        scaled = numeric[:, :n_numeric]
        # `values` is usually the frame's column-major block, so the subtraction also turns it
        # row-major. Torch does that, and the cast, in one pass: NumPy took 2.5x as long
        # (24_mnist's 2,771 test rows: 322 against 125 us, 5_campaign's 15,604: 494 against 135).
        # `from_dlpack` takes read-only arrays, which `from_numpy` warns about.
        torch.sub(
            torch.from_dlpack(_without_negative_strides(values[:, :n_numeric])),
            self._centers,
            out=torch.from_numpy(scaled),
        )
        scaled /= self._scales
        if self.binary:
            numeric[:, n_numeric:] = self._binary_values(values[:, n_numeric:])
        # Binary cells (0, 1 or NaN) are never in the tail.
        _compress_tails_inplace(numeric, self.tail_start)
        if self._may_miss.any():
            missing = np.isnan(values)
            numeric[missing] = 0.0
            observed = (~missing).astype(np.float32, order="C")
        else:
            observed = np.ones(numeric.shape, dtype=np.float32)
        return EncodedTable(numeric=numeric, observed=observed, codes=codes)

    def _binary_values(self, values: np.ndarray) -> np.ndarray:
        """The binary columns' numbers (n, k) as 0 and 1, NaN where a value is neither of the
        two seen in training (a missing cell stays NaN for the caller to impute)."""
        low, high = self._binary_numbers[:, 0], self._binary_numbers[:, 1]
        encoded = (values == high).astype(np.float32)
        encoded[(values != low) & (values != high)] = np.nan
        return encoded

    def _two_valued_codes(
        self, frame: pd.DataFrame, numbers: np.ndarray | None, source: str, row_offset: int
    ) -> np.ndarray:
        """Codes (n, k) of an older detector's two-valued categorical columns, matched as
        numbers, all columns at once: a loop over 52 dummies cost a third of scoring
        5_campaign. `numbers` is `_float_columns` of `_number_names`, or None to convert
        column by column."""
        first = len(self.numeric) + len(self.binary)
        names = self._number_names[first:]
        if numbers is not None:
            values = numbers[:, first:]
        else:
            block = frame[list(names)]
            values = np.column_stack([_as_float(block[c], c, source, row_offset) for c in names])
        for j in np.flatnonzero(np.isinf(values).any(axis=0))[:1]:
            _reject_infinite(values[:, j], names[j], source, row_offset)
        # A missing or unseen value matches neither number: the unknown bucket, code 0.
        codes = (values == self._two_values[:, 0]).astype(np.int64)
        codes[values == self._two_values[:, 1]] = 2
        return codes

    # Per-column constants as arrays, built once: rebuilding them from the column list on every
    # call cost as much as the arithmetic on small batches. The preprocessor is never mutated
    # after `fit` or `from_dict`, so caching them is safe.
    @cached_property
    def _number_names(self) -> tuple[str, ...]:
        """The numeric, binary and two-valued columns: every column read as numbers."""
        two_valued = [self.categorical[j] for j in self._two_valued]
        return tuple(c.name for c in [*self.numeric, *self.binary, *two_valued])

    @cached_property
    def _binary_numbers(self) -> np.ndarray:
        """(k, 2): the numbers each binary column encodes as 0 and as 1."""
        return np.array([c.values for c in self.binary], dtype=np.float64).reshape(-1, 2)

    @cached_property
    def _centers(self) -> torch.Tensor:
        return torch.tensor([c.center for c in self.numeric], dtype=torch.float64)

    @cached_property
    def _scales(self) -> np.ndarray:
        return np.array([c.scale for c in self.numeric], dtype=np.float32)

    @cached_property
    def _two_valued(self) -> list[int]:
        return [j for j, c in enumerate(self.categorical) if c.values is not None]

    @cached_property
    def _two_values(self) -> np.ndarray:
        """(k, 2) numbers of the two-valued columns' codes 1 and 2. Detectors saved before
        both values had to be frequent may keep one number for a column: NaN pads it."""
        table = np.full((len(self._two_valued), 2), np.nan)
        for row, j in enumerate(self._two_valued):
            kept = self.categorical[j].values or []
            table[row, : len(kept)] = kept
        return table

    @cached_property
    def _may_miss(self) -> np.ndarray:
        return np.array([c.has_missing for c in self.number_columns], dtype=bool)

    @cached_property
    def number_columns(self) -> list[NumericColumn | BinaryColumn]:
        """The numeric and binary columns: the model's `numeric` inputs, in order."""
        return [*self.numeric, *self.binary]

    def _numeric_matrix(
        self, frame: pd.DataFrame, numbers: np.ndarray | None, source: str, row_offset: int
    ) -> np.ndarray:
        """The numeric and binary features as float64 (n, n_numeric + n_binary), checked for
        infinite and missing values; `numbers` as for `_two_valued_codes`."""
        columns = self.number_columns
        if numbers is None:
            return np.column_stack(
                [_numeric_values(frame[c.name], c, source, row_offset) for c in columns]
            )
        values = numbers[:, : len(columns)]
        # One check that passes on clean data; only a failing column is checked again on its
        # own, for the error message.
        finite = np.isfinite(values)
        if not finite.all():
            bad = ~finite & ~(np.isnan(values) & self._may_miss)
            for j in np.flatnonzero(bad.any(axis=0))[:1]:
                _check_values(values[:, j], columns[j], source, row_offset)
        return values

    def to_dict(self) -> dict:
        return {
            "numeric": [asdict(c) for c in self.numeric],
            "categorical": [asdict(c) for c in self.categorical],
            "tail_start": self.tail_start,
            "binary": [asdict(c) for c in self.binary],
        }

    @classmethod
    def from_dict(cls, state: dict) -> TabularPreprocessor:
        return cls(
            numeric=[NumericColumn(**c) for c in state["numeric"]],
            categorical=[CategoricalColumn(**c) for c in state["categorical"]],
            tail_start=state["tail_start"],
            binary=[BinaryColumn(**c) for c in state.get("binary", [])],
        )


# Dates and times written as text: ISO 8601 (2026-11-25, 2026-11-25T10:00:00Z) and US-style
# (11/25/2026 10:00 PM), which CSV readers leave as strings, and times of day (10:30,
# 10:30:15), which pyarrow reads from a CSV as times: as text, a Parquet file's trained as
# categories where the same table's CSV was refused.
_DATE_TEXT = re.compile(
    r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?"
    r"|\d{1,2}/\d{1,2}/\d{2,4}( \d{1,2}:\d{2}(:\d{2})?( ?[AaPp][Mm])?)?"
    r"|\d{2}:\d{2}(:\d{2}(\.\d+)?)?"
)
DATE_SAMPLE_ROWS = 1000


def _reject_dates(series: pd.Series, name: str, source: str) -> None:
    """Refuse a date, time or duration column: as categories, every later date would be one
    training never saw, and every new row would look anomalous for it. The user chooses what
    of it is stationary (hour, weekday, seconds since the account opened)."""
    dtype = series.dtype
    if pd.api.types.is_timedelta64_dtype(dtype):
        raise InputError(
            f"{source}: column '{name}' holds durations; convert them to a number first, "
            "such as seconds"
        )
    if _holds_dates(series):
        raise InputError(
            f"{source}: column '{name}' holds dates or times: as categories, every later "
            "one would be unseen. Drop it (data.drop) or derive stationary features from it "
            "first, such as the hour or the weekday"
        )


def _holds_dates(series: pd.Series) -> bool:
    """Whether a column holds dates or times: typed, or text that all looks like them (in its
    first `DATE_SAMPLE_ROWS` values but missing ones, blank or "NA" in a CSV's text)."""
    dtype = series.dtype
    if _is_time_dtype(dtype):
        return True
    if not (pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype)):
        return False
    nulls = null_spellings()
    present = (v for v in series.dropna() if not (isinstance(v, str) and v in nulls))
    sample = list(itertools.islice(present, DATE_SAMPLE_ROWS))
    return len(sample) > 0 and all(_is_date_value(v) for v in sample)


def _is_time_dtype(dtype: object) -> bool:
    """Dates, times, periods or durations."""
    return (
        isinstance(dtype, pd.PeriodDtype)
        or pd.api.types.is_datetime64_any_dtype(dtype)
        or pd.api.types.is_timedelta64_dtype(dtype)
    )


def _is_date_value(value: object) -> bool:
    if isinstance(value, (datetime.date, datetime.time, pd.Timestamp)):
        return True
    return isinstance(value, str) and _DATE_TEXT.fullmatch(value.strip()) is not None


def _is_numeric_column(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def check_training_rows(
    frame: pd.DataFrame,
    features: Sequence[str],
    source: str,
    categorical: Collection[str] | None = None,
) -> list[str]:
    """The features with missing values among all the rows given for training, checked before
    they are split into training and validation rows.

    Whether a column can be missing is decided from every row: decided from the training split
    alone, one missing value that the split put among the validation rows stopped training
    with "missing value, and the training data had none", or not, by the seed. An infinite
    value is refused here, where the row is still the file's (after the split, errors named a
    row of the split: the file's row 6 read as row 37). So is text in a column that a
    `categorical` list leaves to be a number (dates are `TabularPreprocessor.fit`'s to refuse)."""
    _check_listed(categorical or (), features)
    may_miss = []
    for name in features:
        series = frame[name]
        _reject_nested(series, name, source, 0)
        if _is_numeric_column(series):
            _reject_infinite(_as_float(series, name, source, 0), name, source, 0)
        elif categorical is not None and name not in categorical and not _holds_dates(series):
            try:
                _reject_infinite(_as_float(series, name, source, 0), name, source, 0)
            except InputError as exc:
                raise _unlisted_categorical(exc, name) from None
        missing = series.isna()
        if missing.any():
            if missing.all():
                raise InputError(f"{source}: column '{name}' has no values (data.drop can drop it)")
            may_miss.append(name)
    return may_miss


def _check_listed(categorical: Collection[str], features: Sequence[str]) -> None:
    """Refuse a categorical column that is not a feature (a typo, the label): named first, as
    the reason every other column is then read as a number."""
    unknown = sorted(set(categorical) - set(features))
    if unknown:
        raise InputError(f"data.categorical names columns that are not features: {unknown}")


def _unlisted_categorical(exc: InputError, name: str) -> InputError:
    """`exc` about text in column `name`, which a `data.categorical` list left a number: a
    list turns inference off for every column, not just for those it names."""
    return InputError(
        f"{exc} (data.categorical lists every categorical column: add '{name}' there if it is "
        "one, or leave data.categorical out to infer them)"
    )


def _fit_numeric(series: pd.Series, name: str, source: str, may_miss: bool) -> NumericColumn:
    values = _as_float(series, name, source, 0)
    _reject_infinite(values, name, source, 0)
    finite = values[~np.isnan(values)]
    if not len(finite):
        raise InputError(f"{source}: column '{name}' has no values")
    # The narrowest range that spreads, then the deviation, then 1 for a constant column.
    lows, highs, widths = np.array(SPREAD_RANGES).T
    levels = np.percentile(finite, [*highs, *lows])  # one partial sort for all six
    spreads = (levels[: len(highs)] - levels[len(highs) :]) / widths
    scale = next((s for s in spreads if s > 0), None) or finite.std() or 1.0
    _check_float32_scale(scale, name, source)
    return NumericColumn(
        name=name,
        center=float(np.median(finite)),
        scale=float(scale),
        has_missing=may_miss or bool(np.isnan(values).any()),
    )


def _check_float32_scale(scale: float, name: str, source: str) -> None:
    """Refuse a column whose spread the network's 32-bit floats cannot hold. Its scale became 0
    (values of about 1e-300) or infinity (1e40), every value encoded NaN, and `train` stopped
    with "training diverged ... lower training.learning_rate", which no learning rate fixes."""
    limits = np.finfo(np.float32)
    if not limits.smallest_normal <= scale <= limits.max:
        raise InputError(
            f"{source}: column '{name}' spreads over about {scale:.3g}, beyond the 32-bit "
            f"floats the model computes in ({limits.smallest_normal:.2g} to {limits.max:.2g}): "
            "multiply it by a power of ten, in training and scoring alike"
        )


def _fit_categorical(series: pd.Series, name: str, source: str) -> CategoricalColumn:
    """The column's frequent values. A text that a CSV reader takes for a missing value ("NA",
    "null", "N/A": `null_spellings`) is the missing category, as a Parquet null is: kept as a
    category of its own, it made every null of a Parquet file an unseen value.

    Rows are counted per distinct value (`_distinct_strings`), then per category, ordered as
    `value_counts` orders them (ties by first appearance), which decides the categories kept
    beyond `MAX_CATEGORIES`."""
    found, strings = _distinct_strings(series)
    nulls = null_spellings()
    strings = [MISSING_CATEGORY if s in nulls else s for s in strings]
    rows = pd.Series(np.bincount(found, minlength=len(strings)), index=strings)
    counts = rows.groupby(level=0, sort=False).sum().sort_values(ascending=False, kind="stable")
    _reject_unique_values(counts, name, source)
    frequent = counts[counts >= MIN_CATEGORY_COUNT]
    if frequent.empty:
        frequent = counts
    return CategoricalColumn(name=name, categories=sorted(frequent.index[:MAX_CATEGORIES]))


def _reject_unique_values(counts: pd.Series, name: str, source: str) -> None:
    """Refuse a categorical column whose every value is seen once (a customer or transaction
    id): no category is learnt from it, every value, seen or new, reads alike, and a model of
    such a column alone gave every row one score and flagged none, an unseen value included."""
    if len(counts) > 1 and counts.iloc[0] == 1:
        raise InputError(
            f"{source}: column '{name}' holds a different value in each of the "
            f"{len(counts):,} training rows, an id: list it in data.id_columns (or data.drop) "
            "rather than learn from it"
        )


def _has_two_values(series: pd.Series) -> bool:
    """Two values, each seen often enough to be a category: a nearly constant column with a
    few odd values (a pixel that is almost always blank) stays numeric, where how far off an
    odd value is still counts. As categories, 24_mnist's seven such pixels cost 0.006 AUROC."""
    counts = series.value_counts()
    return len(counts) == 2 and counts.min() >= MIN_CATEGORY_COUNT


def _fit_binary(series: pd.Series, name: str, may_miss: bool, source: str) -> BinaryColumn:
    """A two-valued numeric column: its smaller number encodes 0, the larger 1."""
    values = _as_float(series, name, source, 0)
    _reject_infinite(values, name, source, 0)
    missing = np.isnan(values)
    present = values[~missing]
    return BinaryColumn(
        name=name,
        values=[float(v) for v in np.unique(present)],
        has_missing=may_miss or bool(missing.any()),
        unseen_nll=math.log(len(present) + 2),
    )


def _distinct_strings(series: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each row's index among the column's distinct values, and those values as
    `_category_strings` spells them: spelled once each, as spelling every row of a 1M-row
    column cost up to a second."""
    found, uniques = pd.factorize(series, use_na_sentinel=False)
    return found, _category_strings(pd.Series(uniques, dtype=series.dtype))


def _category_strings(series: pd.Series) -> list[str]:
    """Category values as text; a whole number reads the same from an integer column and a
    float one (where a missing value made pandas widen it): 5411, not 5411.0. An empty text
    (a blank CSV cell) is missing, as it is in a column of numbers."""
    values = series.to_numpy(dtype=object)
    if pd.api.types.is_float_dtype(series.dtype):
        return [_number_category(v) for v in values]
    return [MISSING_CATEGORY if pd.isna(v) or v == "" else str(v) for v in values]


def _number_category(value: float) -> str:
    """A float's category; missing for NaN, and for pandas' NA in a nullable column (Float64,
    double[pyarrow]), where `value != value` raised "boolean value of NA is ambiguous"."""
    if pd.isna(value):
        return MISSING_CATEGORY
    return str(int(value)) if value.is_integer() else str(value)


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@lru_cache(maxsize=1)
def null_spellings() -> frozenset[str]:
    """The texts pyarrow reads as missing in a CSV column of numbers ("NA", "null", ...)."""
    import pyarrow.csv as pacsv

    return frozenset(pacsv.ConvertOptions().null_values)


@lru_cache(maxsize=1)
def _bool_spellings() -> dict[str, str]:
    """The category of each text pyarrow reads as a boolean in a CSV column of booleans
    ("true", "FALSE", ...): "True" or "False", as `_category_strings` spells a bool."""
    import pyarrow.csv as pacsv

    options = pacsv.ConvertOptions()
    return {
        **{text: "True" for text in options.true_values},
        **{text: "False" for text in options.false_values},
    }


def _spelled_value(text: str) -> str | None:
    """The category a text had when its column was read as numbers or booleans, or None.
    pyarrow reads a number padded with spaces or tabs (" 5411") as the number, and "true" or
    "FALSE" as a bool: as text they missed the detector's 5411 and True, and scored as
    unseen values without a word. "1" and "0" are numbers first, as pyarrow infers them."""
    if text in null_spellings():
        return MISSING_CATEGORY
    if _NUMBER.fullmatch(trimmed := text.strip(" \t")):
        number = float(trimmed)
        return _number_category(number) if math.isfinite(number) else None
    return _bool_spellings().get(text)


def _without_negative_strides(values: np.ndarray) -> np.ndarray:
    """`values`, copied only where a stride is negative: pandas hands a float block's columns
    taken in reverse order (a CSV whose columns came in another order) as a view that steps
    backwards, and `torch.from_dlpack` aborted the process on it (exit 134, the temporary
    output left behind)."""
    return values if min(values.strides, default=0) >= 0 else np.asfortranarray(values)


def _float_columns(frame: pd.DataFrame, names: tuple[str, ...]) -> np.ndarray | None:
    """The named columns as float64 (n, len(names)), or None when one of them is not of a
    number dtype (the caller then converts and checks column by column). The result may be a
    read-only view of the frame's data.

    A frame of NumPy numbers is converted whole and the columns taken by position: selecting
    columns in pandas copies the frame, which cost a tenth of scoring a small batch."""
    if all(map(_is_numpy_number, frame.dtypes)):
        positions = _column_positions(tuple(frame.columns.tolist()), names)
        if positions is not None:
            return frame.to_numpy(dtype=np.float64)[:, positions]
    block = frame[list(names)]
    if all(map(_is_number_dtype, block.dtypes)):
        return block.to_numpy(dtype=np.float64, na_value=np.nan)
    return None


@lru_cache(maxsize=16)
def _column_positions(
    columns: tuple[Hashable, ...], names: tuple[str, ...]
) -> slice | list[int] | None:
    """Where `names` sit among a frame's `columns` (a slice when they are all of them, in
    order, so that taking them copies nothing), or None when a name is missing or repeated.

    Cached per layout, since batch after batch has the same columns: pandas' `get_indexer`
    built an index of the names on every call, a tenth of scoring 6_cardio's 673 rows."""
    if columns == names:
        return slice(None)
    position = {column: i for i, column in enumerate(columns)}
    if len(position) < len(columns) or not all(name in position for name in names):
        return None
    return [position[name] for name in names]


# Booleans are not numbers here: read as 0 and 1 they would pass for a numeric feature (a
# true/false column where amounts belong, scored without a word). Column by column,
# `_numeric_values` takes them for binary features only.
def _is_numpy_number(dtype: object) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind in "iuf"


def _is_number_dtype(dtype: object) -> bool:
    # NumPy's own kinds first: pandas' checks take microseconds each, which adds up on wide tables.
    if isinstance(dtype, np.dtype):
        return dtype.kind in "iufc"
    return pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)


def _numeric_values(
    series: pd.Series, column: NumericColumn | BinaryColumn, source: str, row_offset: int
) -> np.ndarray:
    if isinstance(column, NumericColumn):
        if pd.api.types.is_bool_dtype(series):
            raise InputError(f"{source}: column '{column.name}' holds true/false, not numbers")
        _reject_boolean_values(series, column.name, source, row_offset)
    values = _as_float(series, column.name, source, row_offset)
    _check_values(values, column, source, row_offset)
    return values


def _reject_boolean_values(series: pd.Series, name: str, source: str, row_offset: int) -> None:
    """A true or false among numbers (a frame built from JSON records): `pd.to_numeric` read
    it as 1 or 0 and the row was scored without a word, where a whole true/false column is
    refused. Only a mixed (object) column can hold one."""
    if series.dtype != object:
        return
    flags = np.fromiter((isinstance(v, (bool, np.bool_)) for v in series), bool, len(series))
    if flags.any():
        row = int(np.argmax(flags))
        raise InputError(
            f"{source}: column '{name}', row {row_offset + row + 1}: "
            f"{series.iloc[row]!r} is true/false, not a number"
        )


def _check_values(
    values: np.ndarray, column: NumericColumn | BinaryColumn, source: str, row_offset: int
) -> None:
    """Reject infinite values, and missing ones in a column that had none in training."""
    _reject_infinite(values, column.name, source, row_offset)
    if not column.has_missing:
        missing = np.flatnonzero(np.isnan(values))
        if len(missing):
            raise InputError(
                f"{source}: column '{column.name}', row {row_offset + missing[0] + 1}: missing "
                "value, and the training data had none in this column"
            )


def _as_float(series: pd.Series, name: str, source: str, row_offset: int) -> np.ndarray:
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_numeric_dtype(series):
        return series.to_numpy(dtype=np.float64, na_value=np.nan)
    if _is_time_dtype(series.dtype):
        # `to_numeric` would read them as nanoseconds since 1970: a CSV of the wrong export,
        # whose dates pyarrow parses as timestamps, scored as numbers without a word.
        raise InputError(f"{source}: column '{name}' holds dates or times, not numbers")
    converted = pd.to_numeric(series, errors="coerce")
    bad = np.flatnonzero(converted.isna().to_numpy() & series.notna().to_numpy())
    if len(bad):
        row = _first_not_a_decimal_comma(series.iloc[bad]) or 0
        value = series.iloc[bad[row]]
        raise InputError(
            f"{source}: column '{name}', row {row_offset + bad[row] + 1}: {value!r} is not a number"
        )
    return converted.to_numpy(dtype=np.float64, na_value=np.nan)


def _first_not_a_decimal_comma(values: pd.Series) -> int | None:
    """The position of the first of `values` that is not a number written with a decimal
    comma, when some are: one bad cell among a semicolon CSV's 1,5's makes the reader keep the
    column as text, and the first 1,5 was named as the bad value where the bad one lay rows
    further on."""
    # Only text can be such a number: a cell of bytes (a CSV in Latin-1) made `astype(str)`
    # raise UnicodeDecodeError, a traceback where its row was to be named.
    pointed = [v.strip().replace(",", ".") if isinstance(v, str) else "" for v in values]
    comma = pd.to_numeric(pd.Series(pointed, dtype=object), errors="coerce").notna()
    others = np.flatnonzero(~comma.to_numpy())
    return int(others[0]) if comma.any() and len(others) else None


def _category_codes(
    column: CategoricalColumn, series: pd.Series, source: str, row_offset: int
) -> np.ndarray:
    """`column.codes` of a batch, refusing values that no category can be: dates or times (a
    column of timestamps where the merchant belongs), which training refuses as features, so
    every value was unseen and every row flagged without a word; and lists and structs, which
    pandas cannot hash. Those are looked for only once hashing failed: a pass over every
    value of a text column cost a third of its encoding on each batch.

    Typed dates are refused before encoding, dates as text once none found a category; both
    fall through to the one error, so the two kinds read alike."""
    if not _is_time_dtype(series.dtype):
        _reject_inexact_codes(series, column.name, source, row_offset)
        try:
            codes = column.codes(series)
        except TypeError:
            _reject_nested(series, column.name, source, row_offset)
            raise
        if codes.all():
            return codes
        if not _unmatched_dates(column, series, codes):
            _reject_unmatched(column, series, codes, source)
            return codes
    raise InputError(f"{source}: column '{column.name}' holds dates or times, not categories")


# Rows from which a batch whose every value of a categorical column is a learnt category
# spelt otherwise is refused: a REST request of a few such rows is scored.
UNMATCHED_ROWS = 20
# Ways of writing yes and no, which an export may turn into one another.
_YES_NO = {
    **dict.fromkeys(("true", "t", "yes", "y", "1", "1.0"), "yes"),
    **dict.fromkeys(("false", "f", "no", "n", "0", "0.0"), "no"),
}


def _reject_unmatched(
    column: CategoricalColumn, series: pd.Series, codes: np.ndarray, source: str
) -> None:
    """Refuse a batch in which no value of the column is one of its categories and every one
    is a category spelt otherwise: in other case or spacing (`BLUE-COLLAR` for
    `blue-collar`), or yes and no written another way (True/False for yes/no). Such an export
    scored every row as an unseen category without a word, and 80% of a bank day's file was
    flagged. New values (a month training did not see, a new merchant) are rows to score."""
    missing = column.lookup.get(MISSING_CATEGORY, 0)
    if ((codes != 0) & (codes != missing)).any():
        return
    # Missing values (a null, a blank, "NA") are another fault (`check_category_values`).
    missing_spellings = {MISSING_CATEGORY, *null_spellings()}
    unseen = [v for v in _category_strings(series[codes == 0]) if v not in missing_spellings]
    if len(unseen) < UNMATCHED_ROWS:
        return
    spelt = {_folded(c): c for c in column.categories}
    yes_no = {_YES_NO.get(_folded(c)) for c in column.categories} - {None}
    distinct = list(dict.fromkeys(unseen))
    if all(_folded(v) in spelt for v in distinct):
        learnt = f", which the model learnt as '{spelt[_folded(distinct[0])]}'"
    elif len(yes_no) == 2 and all(_YES_NO.get(_folded(v)) for v in distinct):
        learnt = f"; the model learnt {quoted_names(column.categories)}"
    else:
        return
    raise InputError(
        f"{source}: column '{column.name}': none of its {len(unseen):,} values is a category "
        f"the model learnt (such as '{distinct[0]}'{learnt}): write the column as in the "
        "training data"
    )


def _folded(text: str) -> str:
    """A category as compared across spellings: no surrounding spaces, no case."""
    return text.strip().casefold()


def _reject_inexact_codes(series: pd.Series, name: str, source: str, row_offset: int) -> None:
    """Refuse a whole number beyond 2^53 among a category's floats: the code it was may not be
    the one it reads as. pandas holds integers beside a missing value as floats (a JSON
    request, a Spark task's batch), where merchant 9007199254740993 arrives as ...992, another
    merchant's code, and scored as that one without a word. A Parquet file's are read exactly.
    """
    if not pd.api.types.is_float_dtype(series.dtype):
        return
    values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    beyond = np.flatnonzero(np.abs(values) >= FLOAT_EXACT)
    if len(beyond):
        row = int(beyond[0])
        raise InputError(
            f"{source}: column '{name}', row {row_offset + row + 1}: the code {values[row]:.0f} "
            "came as a floating-point number, which beyond 2^53 may hold another code: send "
            "the codes as text, or as integers without missing values"
        )


def _learnt_missing(column: CategoricalColumn) -> bool:
    """Whether a missing value has a category of its own (also an old detector's "" or "NA")."""
    return bool(column.lookup.get(MISSING_CATEGORY))


def holds_a_value(series: pd.Series) -> bool:
    """Whether a column holds any value that is not missing as `CategoricalColumn.codes` reads
    it: a null, an empty text or a text a CSV reader takes for missing ("NA", "null")."""
    present = series.dropna()
    if present.empty:
        return False
    nulls = null_spellings()
    strings = _category_strings(pd.Series(present.unique(), dtype=present.dtype))
    return any(s != MISSING_CATEGORY and s not in nulls for s in strings)


def check_category_values(empty: Sequence[str], source: str) -> None:
    """Refuse the categorical columns of `empty`, missing on every row of `source`, where the
    model learnt no missing value (`TabularPreprocessor.never_missing`).

    A single missing or unseen category is a row to score (the unknown bucket is what it
    costs), but a column missing throughout is a broken export: every row scored as an unseen
    category without a word, where a number column the model never saw missing stops at its
    first missing value. Training refuses a column with no values for the same reason."""
    if empty:
        raise InputError(
            f"{source}: column '{empty[0]}' is missing on every row, and the model learnt no "
            "missing value in it: every row would score as an unseen category"
        )


def _unmatched_dates(column: CategoricalColumn, series: pd.Series, codes: np.ndarray) -> bool:
    """Whether a batch's column holds only dates or times written as text, none of them a
    category, where training's held none: the same dates typed (a Parquet timestamp column)
    are refused, and as text (a CSV, or Parquet strings) every row scored as an unseen value
    without a word. Looked at only when no value found its category: two passes over the
    codes, no more, on a batch that scores as it should."""
    missing = column.lookup.get(MISSING_CATEGORY, 0)
    if not ((codes == 0) | (codes == missing)).all():
        return False
    return _holds_dates(series) and not any(map(_is_date_value, column.categories))


def _reject_nested(series: pd.Series, name: str, source: str, row_offset: int) -> None:
    """Refuse a column of lists, structs or maps (Parquet's nested types), which are not one
    value a category can match: pandas cannot hash them, and training and scoring stopped with
    a traceback. Every value is looked at, not the first alone as an Arrow column's one type
    would allow: a frame from JSON records (a REST request) mixes a list in among texts."""
    if series.dtype != object:
        return
    for row, value in enumerate(series):
        if isinstance(value, (list, dict, np.ndarray)):
            raise InputError(
                f"{source}: column '{name}', row {row_offset + row + 1}: {value!r} is a "
                "list or struct, not one value"
            )


def _reject_infinite(values: np.ndarray, name: str, source: str, row_offset: int) -> None:
    infinite = np.flatnonzero(np.isinf(values))
    if len(infinite):
        raise InputError(
            f"{source}: column '{name}', row {row_offset + infinite[0] + 1}: infinite value"
        )


def _compress_tails_inplace(z: np.ndarray, start: float) -> None:
    """Identity within +-start, logarithmic beyond: monotone, continuous, unbounded.

    Tail cells are rare, so they are found once as flat indices and only they are rewritten:
    boolean masks over the whole matrix cost a pass each. `z` must be contiguous (C or
    Fortran order), so that its flat view writes through.
    """
    if not z.size:  # a table of categorical columns only; no array shares memory with it
        return
    flat = z.ravel(order="K")
    assert np.shares_memory(flat, z), "z must be contiguous"
    tail = np.flatnonzero(np.abs(flat) > start)
    if len(tail):
        values = flat[tail]
        # A value beyond float32's range once scaled (1e39 in a column of tens) arrives as
        # inf; its logarithm would be too, and the network's output NaN, a score that flags
        # nothing. It reads as the largest value the encoding holds instead: start + 88.7.
        beyond = np.minimum(np.abs(values) - start, np.finfo(np.float32).max)
        flat[tail] = np.sign(values) * (start + np.log1p(beyond))
