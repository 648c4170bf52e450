"""Score with Spark: the MLflow pyfunc model as a Spark UDF over a Parquet dataset.

For data that outgrows one process. Each Spark task loads the same pyfunc model that
`anomaly-vae serve` and `mlflow.pyfunc.load_model` load and scores its Arrow batches, so the
scores equal those of `anomaly-vae score`. `score_dataframe` is the recipe for a Spark job of
your own (any session, any cluster where anomaly-vae is installed on the workers);
`score_with_spark` runs it with a local session for `anomaly-vae score --engine spark`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import shutil
import signal
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_vae.data.files import check_output_folder
from anomaly_vae.errors import InputError, first_line
from pipelines.score import ScoreSummary, refuse_overwriting

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

DEFAULT_MASTER = "local[2]"
_SCORES = "__anomaly_vae_scores"
_ROW = "__anomaly_vae_row"
_FILE = "__anomaly_vae_file"
_PATH = "__anomaly_vae_path"
_NUMERIC = {"double", "float", "long", "integer"}
_LOG4J2 = Path(__file__).with_name("spark-log4j2.properties")


def _require_pyspark() -> None:
    """Refuse the Spark engine in one line where pyspark (an extra) is not installed."""
    if importlib.util.find_spec("pyspark") is None:
        raise InputError("--engine spark needs pyspark: pip install 'anomaly-vae[spark]'")


def spark_session(master: str = DEFAULT_MASTER) -> SparkSession:
    """A Spark session whose Python workers run this interpreter, bound to the loopback."""
    _require_pyspark()
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    from anomaly_vae.tracking import quiet_mlflow

    # Local sessions talk to their own workers only; without this Spark binds to the first
    # network interface it finds and warns about it.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Workers run `python3` from PATH unless told otherwise: outside an activated virtual
    # environment that interpreter has neither torch nor this package.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # The JVM and its Python workers inherit MLflow's quiet variables from here: once the
    # model lookup's `tracking_for_call` had put the caller's back, each load printed download
    # bars and an INFO line around the summary. So the session keeps them, as `serve` does.
    quiet_mlflow()
    # env_manager="local" is the point (the workers run this environment), not a risk to
    # warn about; and pandas 3 works for the Arrow UDFs used here.
    logging.getLogger("mlflow.pyfunc").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas", FutureWarning)
    try:
        session = (
            SparkSession.builder.master(master)
            .appName("anomaly-vae score")
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
            # Neither stage progress bars (redrawn lines, garbage in a log file) nor the JVM's
            # start-up lines (spark-log4j2.properties): the summary line is the output. Bar
            # "WARNING: Using incubator modules: jdk.incubator.vector", which no option here
            # removes: Spark's launcher always adds --add-modules=jdk.incubator.vector
            # (JavaModuleOptions), and the JVM prints that line for any incubator module,
            # before logging starts; only hiding the JVM's whole stderr would drop it.
            .config("spark.ui.showConsoleProgress", "false")
            .config(
                "spark.driver.extraJavaOptions",
                f"-Dlog4j2.configurationFile={_LOG4J2.resolve().as_uri()}",
            )
            .getOrCreate()
        )
    except PySparkException as exc:
        raise InputError(
            f"Spark did not start; it needs Java 17 or later ({first_line(exc)})"
        ) from None
    # Not even errors: a failed task logged 200 to 370 lines of Java and Python stack traces
    # before the one line that says what was wrong, which the failure raises here anyway.
    session.sparkContext.setLogLevel("OFF")
    return session


def score_dataframe(
    frame: DataFrame, model_uri: str, keep_columns: bool = False, source: str = "input"
) -> DataFrame:
    """`frame`'s id columns (all columns with `keep_columns`) plus the model's score columns.

    Columns are cast to the numeric types of the model's signature first: MLflow refuses
    to widen a long column to the doubles it was logged with, while `anomaly-vae score` reads
    both alike. A column the signature declares as text (a categorical column of a model
    trained on a CSV) is cast to text: MLflow refused a Parquet file's integer codes, which
    `anomaly-vae score` matches to the digits they were trained as.
    """
    import mlflow
    from pyspark.sql import functions as F
    from pyspark.sql.types import NumericType, StringType, StructField, StructType

    from anomaly_vae.data.schema import check_kept_columns

    # The MLmodel file alone: `get_model_info` also looks the logged model up in the tracking
    # store MLflow points at, which holds no such model when `score` was given the store by
    # --tracking-uri and has put the caller's back.
    signature = mlflow.models.Model.load(model_uri).signature
    input_names = set(signature.inputs.input_names())
    types = {field.name: field.dataType for field in frame.schema.fields}
    arguments = []
    for spec in signature.inputs.inputs:
        if spec.name not in types:
            continue
        column = F.col(f"`{spec.name}`")
        if spec.type.name in _NUMERIC:
            if not isinstance(types[spec.name], NumericType):
                raise InputError(
                    f"{source}: column '{spec.name}' holds {types[spec.name].simpleString()} "
                    "values; the model expects numbers"
                )
            column = column.cast(spec.type.to_spark())
        elif spec.type.name == "string" and not isinstance(types[spec.name], StringType):
            column = column.cast(StringType())
        arguments.append(column.alias(spec.name))
    outputs = signature.outputs.as_spark_schema()
    # The detector echoes the id columns it was trained with; the rest are its scores.
    ids = [f.name for f in outputs.fields if f.name in input_names and f.name in types]
    # Nullable: Arrow batches coming back from pandas never declare a column non-null.
    scores = StructType(
        [StructField(f.name, f.dataType) for f in outputs.fields if f.name not in input_names]
    )
    kept = frame.columns if keep_columns else ids
    check_kept_columns(kept, source)
    udf = mlflow.pyfunc.spark_udf(
        frame.sparkSession, model_uri, result_type=scores, env_manager="local"
    )
    return frame.select(
        *[F.col(f"`{c}`") for c in kept], udf(F.struct(*arguments)).alias(_SCORES)
    ).select(*[F.col(f"`{c}`") for c in kept], f"{_SCORES}.*")


def score_with_spark(
    model_uri: str,
    input_path: str | Path,
    output_path: str | Path,
    keep_columns: bool = False,
    allow_extra: bool = False,
    tracking_uri: str | None = None,
    master: str = DEFAULT_MASTER,
) -> ScoreSummary:
    """Score a Parquet file or folder into a new folder of Parquet parts, in input order.

    The output appears (by rename) only once every part is written.
    """
    from anomaly_vae.data.preprocessing import check_category_values
    from anomaly_vae.data.tables import is_row_number
    from anomaly_vae.detector import load_detector
    from anomaly_vae.tracking import resolve_detector_dir, resolve_model_dir

    source, output = str(input_path), Path(output_path)
    _check_paths(Path(input_path), output)
    refuse_overwriting(input_path, output)
    files = _listed_files(Path(input_path))
    model_dir = resolve_model_dir(model_uri, tracking_uri)
    detector = load_detector(resolve_detector_dir(str(model_dir)))
    if detector.kind != "tabular":
        raise InputError(f"model '{model_uri}': --engine spark scores tables, not {detector.kind}s")
    _require_pyspark()  # before the imports the `except` clauses below name
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import AnalysisException, PythonException
    from pyspark.sql import functions as F

    started = time.perf_counter()
    staging = output.parent / f".{output.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with _session_stopped_by_ctrl_c(master) as spark:
            try:
                frame = spark.read.parquet(*(str(file) for file in files))
            except AnalysisException as exc:
                raise InputError(
                    f"{source}: not a readable Parquet dataset ({first_line(exc)})"
                ) from None
            frame = frame.drop(*filter(is_row_number, frame.columns))  # pandas' saved index
            detector.check_columns(frame.columns, source, allow_extra)
            observed, empty_categories = _observe_empty_categories(
                _in_input_order(frame, files), detector.preprocessor.never_missing
            )
            scored = score_dataframe(observed, str(model_dir), keep_columns, source)
            scored.write.parquet(str(staging))
            rows, anomalies = (
                spark.read.parquet(str(staging))
                .agg(F.count(F.lit(1)), F.sum(F.col("is_anomaly").cast("long")))
                .first()
            )
            if not rows:  # as the local engine: an empty output of an empty input helps no one
                kind = "folder" if Path(input_path).is_dir() else "file"
                raise InputError(f"{source}: the {kind} holds no rows")
            check_category_values(empty_categories(), source)
            staging.rename(output)
    except PythonException as exc:
        raise InputError(_failed_task(exc, detector, Path(input_path))) from None
    except Py4JJavaError as exc:
        # Spark's own failures, such as parts that store a column with different types, came
        # as a Python traceback around the Java one.
        raise InputError(f"{source}: Spark failed: {_java_error(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ScoreSummary(rows, anomalies or 0, time.perf_counter() - started, output)


@contextmanager
def _session_stopped_by_ctrl_c(master: str) -> Iterator[SparkSession]:
    """`spark_session(master)`, stopped by Ctrl-C, so that no task writes into the staging
    folder once it is removed; the KeyboardInterrupt goes on to the command line's one line.

    pyspark's own SIGINT handler cancels the jobs through the JVM connection that the main
    thread is waiting on: a "reentrant call", and py4j's tracebacks before "Aborted!".
    Python's own handler cuts that wait short instead, which py4j still logs with tracebacks:
    silenced (`_py4j_silenced`) while the session works. Ctrl-C while the JVM starts waits
    for it: cut short there, pyspark lost track of the JVM, which lived on without this process
    (the JVM itself ignores Ctrl-C).
    """
    previous = signal.getsignal(signal.SIGINT)
    pressed: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: pressed.append(signum))

    def interrupt(signum: int, _frame: object) -> None:
        pressed.append(signum)
        raise KeyboardInterrupt

    try:
        with _py4j_silenced():
            session = spark_session(master)
            signal.signal(signal.SIGINT, interrupt)  # pyspark set its own
            try:
                if pressed:
                    raise KeyboardInterrupt
                yield session
            except BaseException:
                # Ctrl-C, whatever py4j made of it: one that cut a call inside pyspark's
                # call-site bookkeeping came out as "Py4JNetworkError: Answer from Java side is
                # empty", a traceback.
                if not pressed:
                    raise
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second one would cut the stop
                with warnings.catch_warnings():
                    # "Unable to cleanly shutdown Spark JVM process", at times, on a connection
                    # the interrupt cut: the JVM ends with this process anyway.
                    warnings.simplefilter("ignore", RuntimeWarning)
                    session.stop()
                raise KeyboardInterrupt from None
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def _py4j_silenced() -> Iterator[None]:
    """No py4j log records: a call to the JVM that Ctrl-C cut short is logged with tracebacks,
    on the root logger (`logging.exception`) and on py4j's own loggers."""
    from anomaly_vae.terminal import loggers_at

    root = logging.getLogger()
    root.addFilter(_not_from_py4j)
    try:
        with loggers_at(logging.CRITICAL + 1, "py4j"):
            yield
    finally:
        root.removeFilter(_not_from_py4j)


def _not_from_py4j(record: logging.LogRecord) -> bool:
    import py4j

    return not record.pathname.startswith(os.path.dirname(py4j.__file__))


def _listed_files(input_path: Path) -> list[Path]:
    """The files of the input as `anomaly-vae score` lists them, in its order, under the
    input's real path but through any link below it, as Spark names them when it reads them.

    Given the folder, Spark walked it its own way: round a link back up until its paths
    conflicted (CONFLICTING_DIRECTORY_STRUCTURES), and past the parts of a subfolder, linked
    or not, that lies beside parts, which `score` reads. Given the files, it reads what
    `score` does, and makes partition folders (date=2026-11-25/) columns no more than `score`
    does."""
    from anomaly_vae.data.tables import table_files

    root = input_path.resolve()
    return [root / file.relative_to(input_path) for file in table_files(input_path)[1]]


def _in_input_order(frame: DataFrame, files: list[Path]) -> DataFrame:
    """The rows in input order (the files in `_listed_files` order, each file's rows in
    order), split by row ranges over every core, so that the parts read back in that order.

    Spark packs a folder's files into partitions largest first: without the file's rank the
    output of a two-part folder began with the larger part. One file is often one partition,
    which the ranges spread over the cores."""
    from pyspark.sql import functions as F

    cores = frame.sparkSession.sparkContext.defaultParallelism
    ranks = [F.lit(x) for rank, file in enumerate(files) for x in (file.as_uri(), rank)]
    file_name = F.input_file_name()
    keys = (_FILE, _PATH, _ROW)  # the path orders files whose URI Spark spells otherwise
    return (
        frame.withColumn(_FILE, F.element_at(F.create_map(*ranks), file_name))
        .withColumn(_PATH, file_name)
        .withColumn(_ROW, F.monotonically_increasing_id())
        .repartitionByRange(cores, *keys)
        .sortWithinPartitions(*keys)
        .drop(*keys)
    )


def _observe_empty_categories(
    frame: DataFrame, columns: list[str]
) -> tuple[DataFrame, Callable[[], list[str]]]:
    """`frame`, observed while the write scores it, and a function naming those of `columns`
    in which no row held a value, as `holds_a_value` reads one (not null, NaN, blank or "NA"),
    once the write is done.

    Observed in the write job itself: a separate aggregate would read the input once more."""
    if not columns:
        return frame, list
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    observation = Observation("anomaly-vae categories holding a value")
    types = dict(frame.dtypes)
    metrics = [F.max(_holds_a_value(c, types[c]).cast("int")).alias(c) for c in columns]
    return frame.observe(observation, *metrics), lambda: [
        name for name, held in observation.get.items() if not held
    ]


def _holds_a_value(name: str, dtype: str) -> Column:
    """Whether a row's value in column `name` of Spark type `dtype` is not missing."""
    from pyspark.sql import functions as F

    from anomaly_vae.data.preprocessing import null_spellings

    column = F.col(f"`{name}`")
    present = column.isNotNull()
    if dtype in {"double", "float"}:
        return present & ~F.isnan(column)
    if dtype == "string":
        return present & ~column.isin(*sorted(null_spellings()))
    return present


def _check_paths(input_path: Path, output: Path) -> None:
    if not input_path.exists():
        raise InputError(f"{input_path}: file not found")
    if input_path.is_file() and input_path.suffix.lower() not in {".parquet", ".pq"}:
        raise InputError(f"{input_path}: --engine spark reads Parquet files or folders")
    if output.exists():
        raise InputError(f"{output}: already exists; Spark writes a new folder there")
    check_output_folder(output)  # the staging folder is made beside it


def _java_error(exc: Exception) -> str:
    """The first line of the Java exception's message, without its class name."""
    java = getattr(exc, "java_exception", None)
    text = first_line(Exception(str(java))) if java is not None else first_line(exc)
    return text.split(": ", 1)[-1] if text.startswith(("org.", "java.")) else text


# The row a task's error names, which is the row within the Arrow batch the task scored.
_BATCH_ROW = re.compile(r"\brow \d+:")


def _failed_task(exc: Exception, detector, input_path: Path) -> str:  # noqa: ANN001
    """The line for a failed Spark task. A bad value's row was the row within the task's
    batch of rows ("row 8" of a part's 900th row), which no one could find in the file: the
    input is checked here as `anomaly-vae score` reads it, which names the file (or part) and
    the row in it. Costs a pass over the rows up to the first bad one, only when a task failed
    on a row; where that pass finds none, the row is said to be the batch's."""
    from pipelines.score import table_batches

    error = _task_error(exc)
    if not _BATCH_ROW.search(error):
        return f"{input_path}: a Spark task failed: {error}"
    try:
        for batch in table_batches(detector, input_path):
            detector.preprocessor.check(batch.frame, batch.source, batch.first_row)
    except InputError as local:
        return str(local)
    return f"{input_path}: a Spark task failed: {error} (a row of the task's batch, not the file's)"


def _task_error(exc: Exception) -> str:
    """The model's own one-line message (else the last exception line) of a failed task."""
    text = str(exc)
    found = re.findall(r"MlflowException: (.*)", text) or re.findall(
        r"^(\w+(?:Error|Exception): .*)$", text, re.MULTILINE
    )
    return found[-1].strip() if found else first_line(exc)
