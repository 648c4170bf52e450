"""Score: a model URI and a CSV or Parquet file (or folder) in, the same rows with scores out.

The file streams through in batches, so memory stays flat whatever its size; the output is
written to a temporary file and renamed into place only once every row has scored.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_vae.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

    from anomaly_vae.data.tables import TableBatch

BATCH_ROWS = 65536
# A batch's memory grows with its cells, not its rows: the Arrow batch, its float64 copy, the
# encoded inputs and each feature's reconstruction term. Wide tables read fewer rows at once:
# 65,536 rows of 800 features peaked at 4.4 GB, where 30 features take 0.4 GB.
BATCH_CELLS = BATCH_ROWS * 64


def batch_rows(features: int) -> int:
    """Rows read and scored together for a model of `features` features."""
    return max(1, min(BATCH_ROWS, BATCH_CELLS // max(features, 1)))


@dataclass
class ScoreSummary:
    rows: int
    anomalies: int
    seconds: float
    output: Path
    unit: str = "rows"  # what a row of the output stands for: "images" for images
    note: str | None = None  # what the counts leave out: masks read, ids absent

    def line(self) -> str:
        share = self.anomalies / self.rows if self.rows else 0.0
        unit = self.unit if self.rows != 1 else self.unit.removesuffix("s")
        flagged = "anomalies" if self.anomalies != 1 else "an anomaly"
        line = (
            f"scored {self.rows:,} {unit}, {self.anomalies:,} flagged as {flagged} "
            f"({share:.2%}), in {self.seconds:.1f} s -> {self.output}"
        )
        return f"{line}; {self.note}" if self.note else line


def load_model(model_uri: str | Path, tracking_uri: str | None = None):  # noqa: ANN201
    """The detector behind a models:/, runs:/ or local-directory URI. A directory may be a
    Path, as `mlflow.pyfunc.load_model` takes it: it was a TypeError traceback."""
    from anomaly_vae.tracking import detector_dir_lookup

    with detector_dir_lookup(str(model_uri), tracking_uri) as detector_dir:
        from anomaly_vae.detector import load_detector  # torch loads while MLflow looks up

        return load_detector(detector_dir())


def table_detector(model_uri: str, input_path: str | Path, tracking_uri: str | None = None):  # noqa: ANN201
    """The model behind `model_uri`, checked to be a table model."""
    detector = load_model(model_uri, tracking_uri)
    if detector.kind == "image":
        raise InputError(table_for_an_image_model(model_uri, input_path))
    return detector


def table_for_an_image_model(model_uri: str, input_path: str | Path) -> str:
    """The line for a table given to a model trained on images."""
    return f"{input_path}: model '{model_uri}' reads images: give a folder or IDX file"


def scored_batches(
    detector,  # noqa: ANN001 - a TabularDetector
    input_path: str | Path,
    keep_columns: bool = False,
    allow_extra: bool = False,
    echo_exactly: bool = False,
    top_rows: int | None = None,
) -> Iterator[tuple[TableBatch, pd.DataFrame]]:
    """(input batch, scored batch) pairs, with a progress bar on a terminal. `echo_exactly`
    reads the columns copied to the output (the ids; with `keep_columns` all but the features)
    as they are in the file, to be written back unchanged; `top_rows` is `score_frame`'s."""
    from tqdm import tqdm

    from anomaly_vae.data.preprocessing import check_category_values, holds_a_value
    from anomaly_vae.data.tables import count_rows
    from anomaly_vae.terminal import stderr_is_terminal

    ids = detector.roles.id_columns
    features = set(detector.feature_names)
    empty = detector.preprocessor.never_missing  # those not yet seen to hold a value

    def echoed(name: str) -> bool:
        return name not in features if keep_columns else name in ids

    bar = stderr_is_terminal()
    with tqdm(total=count_rows(input_path), unit="rows", disable=not bar, leave=False) as progress:

        def scored(batch: TableBatch) -> tuple[TableBatch, pd.DataFrame]:
            frame = detector.score_frame(
                batch.frame, batch.source, batch.first_row, keep_columns, allow_extra, top_rows
            )
            return batch, frame

        batches = table_batches(detector, input_path, echoed if echo_exactly else None)
        for batch, scored_frame in _two_at_a_time(scored, _prefetched(batches)):
            progress.update(len(batch.frame))
            # Missing on every row of the file, not of one batch: a day's nulls may come first.
            empty = [c for c in empty if not holds_a_value(batch.frame[c])]
            yield batch, scored_frame
    check_category_values(empty, str(input_path))


def table_batches(
    detector,  # noqa: ANN001 - a table's detector
    input_path: str | Path,
    echoed: Callable[[str], bool] | None = None,
) -> Iterator[TableBatch]:
    """The input's batches as scoring reads them: the ids and the columns the model holds as
    text read from a CSV as text, `echoed` in their Arrow types (`iter_table_batches`)."""
    from anomaly_vae.data.tables import iter_table_batches

    text_columns = {*detector.roles.id_columns, *detector.preprocessor.text_columns}
    rows = batch_rows(len(detector.feature_names))
    return iter_table_batches(input_path, rows, text_columns, echoed)


def _two_at_a_time(
    work: Callable[[TableBatch], tuple[TableBatch, pd.DataFrame]], batches: Iterator[TableBatch]
) -> Iterator[tuple[TableBatch, pd.DataFrame]]:
    """`work` on each batch, in order, two batches at a time on threads of their own.

    A batch's rows are checked before they score and its output is assembled after, in
    pandas on one core, while the scoring threads wait: a fifth of the time of a 65,536-row
    batch. With a second batch in flight, its rows score meanwhile.

    The threads score with the caller's torch thread count, set as they start: a new thread
    takes the count last set by any thread, and the scoring threads set theirs to one as
    they start, which a thread starting beside them took for good (small batches, scored on
    the caller's torch threads, then ran on one).
    """
    import torch

    with ThreadPoolExecutor(
        2, initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),)
    ) as pool:
        pending: deque[Future[tuple[TableBatch, pd.DataFrame]]] = deque()
        while True:
            try:
                batch = next(batches, None)
            except Exception:
                for earlier in pending:  # a bad row before an unreadable part is the one to name
                    earlier.result()
                raise
            if batch is None:
                break
            pending.append(pool.submit(work, batch))
            if len(pending) == 2:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _prefetched(batches: Iterator[TableBatch]) -> Iterator[TableBatch]:
    """The same batches, each read on a background thread while the one before it scores.

    pyarrow decodes without holding the GIL, so reading overlaps scoring; one batch ahead
    keeps memory flat.
    """
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            yield batch


def score_file(
    model_uri: str,
    input_path: str | Path,
    output_path: str | Path,
    keep_columns: bool = False,
    allow_extra: bool = False,
    tracking_uri: str | None = None,
    maps_dir: str | Path | None = None,
) -> ScoreSummary:
    """Score a table, or a folder / IDX file of images (`maps_dir`: heatmaps, images only)."""
    from anomaly_vae.data.images import is_image_file, is_image_source
    from anomaly_vae.data.tables import AtomicTableWriter, input_table_format

    if is_image_source(input_path) or is_image_file(input_path):
        from pipelines.score_images import score_images_file

        # Ignored, they said nothing: the scores came back without the columns asked for.
        options = {"--keep-columns": keep_columns, "--allow-extra-columns": allow_extra}
        refuse_options(input_path, options, "tables")
        return score_images_file(model_uri, input_path, output_path, maps_dir, tracking_uri)
    input_table_format(input_path)  # a single image is named as one before --maps is refused
    refuse_options(input_path, {"--maps": maps_dir}, "images")
    refuse_overwriting(input_path, output_path)
    writer = AtomicTableWriter(output_path)  # checks the output's extension and folder first
    detector = table_detector(model_uri, input_path, tracking_uri)
    started = time.perf_counter()
    anomalies = 0
    # A batch is written on a thread of its own while the next one scores (pyarrow encodes
    # and compresses without the GIL), one batch behind at most: written in turn, the 10M-row
    # file's 2.6 s of writing left the scoring threads idle. The pool closes before the
    # writer, so a failed batch still leaves no output behind.
    absent_ids: list[str] = []
    with writer, ThreadPoolExecutor(1) as writing:
        written = None
        for batch, scored in scored_batches(
            detector, input_path, keep_columns, allow_extra, echo_exactly=True
        ):
            if written is None:
                absent_ids = _absent_ids(detector.roles, batch.frame.columns)
            anomalies += int(scored["is_anomaly"].sum())
            if written is not None:
                written.result()  # the previous batch's error, if any, stops the command here
            written = writing.submit(writer.write, scored, batch.source)
        if written is not None:
            written.result()
    columns = "column" if len(absent_ids) == 1 else "columns"
    note = (
        f"no id {columns} {', '.join(map(repr, absent_ids))} in {input_path}: the output's "
        "rows are in the input's order"
        if absent_ids
        else None
    )
    return ScoreSummary(
        writer.rows_written, anomalies, time.perf_counter() - started, Path(output_path), note=note
    )


def _absent_ids(roles, columns: Iterable[str]) -> list[str]:  # noqa: ANN001 - ColumnRoles
    """The model's id columns, but for its label, that the input lacks: scored without them,
    the output can be matched to the input by position alone, which the summary then says.
    The label is left out: the id of labelled files, it is absent from new ones."""
    present = set(columns)
    return [c for c in roles.id_columns if c not in present and c != roles.label]


# What `refuse_options` says an option is for.
_INPUT_KINDS = {"tables": "tables", "images": "images (a folder or an IDX file)"}


def refuse_options(input_path: str | Path, options: dict[str, object], kind: str) -> None:
    """Refuse the first given option of `options` (flag: value) as one for `kind` of input,
    "tables" or "images": an option of the other input kind was ignored without a word."""
    for option, value in options.items():
        if value:
            raise InputError(f"{input_path}: {option} is for {_INPUT_KINDS[kind]}")


def refuse_overwriting(input_path: str | Path, output_path: str | Path) -> None:
    """An output that is the input, or inside an input folder, is an error: the scores
    replaced the input's rows without a word, and a folder's next read takes them as a part."""
    source, target = Path(input_path).resolve(), Path(output_path).resolve()
    if target == source:
        raise InputError(f"{output_path}: the output would overwrite the input")
    if source in target.parents:
        raise InputError(f"{output_path}: the output would be written inside the input folder")
