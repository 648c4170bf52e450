"""`anomaly-vae score --engine spark`: a local[2] Spark session scoring through MLflow's UDF."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

pytest.importorskip("pyspark", reason="needs the spark extra: pip install -e '.[spark]'")
if shutil.which("java") is None:
    pytest.skip("Spark needs Java 17 or later on the PATH", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def stop_spark() -> Iterator[None]:
    """The JVM holds a gigabyte; give it back once this module is done."""
    yield
    from pyspark.sql import SparkSession

    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()


def parts_folder(folder: Path, *parts: pd.DataFrame) -> Path:
    """A new folder of Parquet parts part-0, part-1, ... holding `parts` in order."""
    folder.mkdir()
    for i, part in enumerate(parts):
        part.to_parquet(folder / f"part-{i}.parquet")
    return folder


def test_spark_writes_parquet_parts_equal_to_the_single_process_scores(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_uri, tracking = breast_cancer_model
    _, test_path = breast_cancer_files
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ("--allow-extra-columns", "--tracking-uri", tracking)
    assert run_cli("score", model_uri, test_path, "-o", local, *common).exit_code == 0

    result = run_cli("score", model_uri, test_path, "-o", spark, "--engine", "spark", *common)

    assert result.exit_code == 0, result.output
    rows = len(pd.read_parquet(test_path))
    assert f"scored {rows:,} rows" in result.stderr
    assert len(list(spark.glob("part-*.parquet"))) >= 2  # one file in, spread over both cores
    # Parts read back in input order: the same rows, columns and numbers as one process.
    pd.testing.assert_frame_equal(
        pd.read_parquet(spark), pd.read_parquet(local), check_dtype=False, rtol=1e-12
    )


def test_spark_reads_a_frame_saved_with_its_row_numbers_as_the_local_engine_does(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """`frame[mask].to_parquet()` saves the row numbers as __index_level_0__, which pandas
    reads back as the index and Spark as a column: refused as unexpected after 26 s."""
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    filtered = tmp_path / "filtered.parquet"
    frame[frame["id"] % 2 == 0].to_parquet(filtered)
    assert "__index_level_0__" in pq.read_schema(filtered).names
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    assert (
        run_cli("score", model_uri, filtered, "-o", local, "--tracking-uri", tracking).exit_code
        == 0
    )
    result = run_cli(
        "score", model_uri, filtered, "-o", spark, "--engine", "spark", "--tracking-uri", tracking
    )
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(spark), pd.read_parquet(local), check_dtype=False, rtol=1e-12
    )


def test_spark_prints_the_summary_and_not_the_jvms_start_up_lines(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """A fresh JVM printed Spark's log4j profile, its default level, a native-Hadoop WARN and
    stage progress bars around the one line `score` has to say."""
    model_uri, tracking = breast_cancer_model
    output = tmp_path / "scored"
    done = subprocess.run(
        [
            sys.executable, "-m", "pipelines.cli", "score", model_uri, str(breast_cancer_files[1]),
            "-o", str(output), "--engine", "spark", "--allow-extra-columns",
            "--tracking-uri", tracking,
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The JVM itself announces the incubator module Spark 4 loads; nothing can turn that off
    # (pipelines/score_spark.py, spark_session).
    lines = [line for line in done.stderr.splitlines() if "incubator modules" not in line]
    assert len(lines) == 1 and lines[0].startswith("scored "), done.stderr


def test_spark_refuses_bad_input_in_one_line_without_leaving_output(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1])
    missing_column = tmp_path / "missing_column.parquet"
    frame.drop(columns=["mean radius"]).to_parquet(missing_column)
    missing_value = tmp_path / "missing_value.parquet"
    frame.assign(
        **{"worst radius": frame["worst radius"].where(frame.index != 7, np.nan)}
    ).to_parquet(missing_value)

    for path, named in [(missing_column, "'mean radius'"), (missing_value, "'worst radius'")]:
        output = tmp_path / f"{path.stem}_scored.parquet"
        result = run_cli(
            "score", model_uri, path, "-o", output, "--engine", "spark",
            "--allow-extra-columns", "--tracking-uri", tracking,
        )  # fmt: skip
        assert result.exit_code != 0
        message = result.output.strip().splitlines()[-1]
        assert named in message and str(path) in message, result.output
        assert not any(
            p.name.startswith((output.name, f".{output.name}")) for p in tmp_path.iterdir()
        )


def test_spark_names_a_bad_rows_part_and_row_as_the_local_engine_does(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # A failed task named the row within its Arrow batch ("request: ..., row 2"), which no one
    # could find in a folder of parts.
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    later = frame.iloc[40:].reset_index(drop=True)
    later.loc[24, "worst radius"] = np.nan
    folder = parts_folder(tmp_path / "table", frame.iloc[:40], later)
    output = tmp_path / "scored"
    common = ("--tracking-uri", tracking)
    result = run_cli("score", model_uri, folder, "-o", output, "--engine", "spark", *common)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: {folder / 'part-1.parquet'}: column 'worst radius', row 25: missing value, "
        "and the training data had none in this column"
    )
    assert not output.exists()


def test_spark_keeps_a_folders_order_and_refuses_what_the_local_engine_refuses(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    # Spark packs the larger part first: its output began with part-1's rows.
    folder = parts_folder(tmp_path / "table", frame.iloc[:10], frame.iloc[10:])
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ("--tracking-uri", tracking)
    assert run_cli("score", model_uri, folder, "-o", local, *common).exit_code == 0
    result = run_cli("score", model_uri, folder, "-o", spark, "--engine", "spark", *common)
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(spark), pd.read_parquet(local), check_dtype=False, rtol=1e-5
    )

    empty = tmp_path / "empty.parquet"
    frame.head(0).to_parquet(empty)
    inside = folder / "scored"
    mixed = parts_folder(
        tmp_path / "mixed", frame.iloc[:10], frame.iloc[10:].astype({"mean area": str})
    )
    for path, output, message in [
        (empty, tmp_path / "empty_scored", f"{empty}: the file holds no rows"),
        (folder, inside, f"{inside}: the output would be written inside the input folder"),
        # Spark's read stage failed with a Py4JJavaError: a traceback around the Java one.
        (mixed, tmp_path / "mixed_scored", f"{mixed}: Spark failed: [FAILED_READ_FILE"),
    ]:
        result = run_cli("score", model_uri, path, "-o", output, "--engine", "spark", *common)
        assert result.exit_code != 0
        assert result.output.strip().splitlines()[-1].startswith(f"Error: {message}")
        assert not output.exists()


def test_spark_reads_the_parts_the_local_engine_lists_through_links(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """Spark walked the folder itself: round the link back up until it stopped on conflicting
    directory structures, where the local engine lists each part once."""
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    folder, elsewhere = tmp_path / "table", tmp_path / "archive"
    for path, rows in ((folder / "day=0" / "part-0.parquet", slice(0, 10)),
                       (elsewhere / "day=1" / "part-1.parquet", slice(10, 150)),
                       (elsewhere / "part-2.parquet", slice(150, None))):  # fmt: skip
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.iloc[rows].to_parquet(path)
    (folder / "day=1").symlink_to(elsewhere / "day=1", target_is_directory=True)
    (folder / "day=1" / "all").symlink_to(folder, target_is_directory=True)  # not followed
    (folder / "part-2.parquet").symlink_to(elsewhere / "part-2.parquet")
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    common = ("--tracking-uri", tracking)
    assert run_cli("score", model_uri, folder, "-o", local, *common).exit_code == 0
    result = run_cli("score", model_uri, folder, "-o", spark, "--engine", "spark", *common)
    assert result.exit_code == 0, result.output
    assert f"scored {len(frame):,} rows" in result.stderr
    pd.testing.assert_frame_equal(
        pd.read_parquet(spark), pd.read_parquet(local), check_dtype=False, rtol=1e-5
    )


def test_spark_scores_integer_codes_with_a_model_trained_on_their_csv_text(
    tmp_path: Path, tracking_uri: str
) -> None:
    """A CSV's categorical column is read as text, so the model's signature declares it a
    string; MLflow refused the same codes stored as integers in Parquet, which the local
    engine scores, with "Failed to enforce schema of data '  mcc  amount"."""
    from conftest import train_cli

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"mcc": np.resize([5411, 5812, 4111], 300), "amount": rng.lognormal(size=300)}
    )
    frame.to_csv(tmp_path / "train.csv", index=False)
    config = tmp_path / "codes.yaml"
    config.write_text(f"data:\n  path: {tmp_path / 'train.csv'}\n  categorical: [mcc]\n")
    model_uri = train_cli(config, "--set", "training.epochs=2")
    codes = tmp_path / "codes.parquet"
    frame.head(20).to_parquet(codes)  # mcc: int64
    local, spark = tmp_path / "local.parquet", tmp_path / "spark.parquet"
    assert run_cli("score", model_uri, codes, "-o", local).exit_code == 0

    result = run_cli("score", model_uri, codes, "-o", spark, "--engine", "spark")

    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(
        pd.read_parquet(spark), pd.read_parquet(local), check_dtype=False, rtol=1e-5
    )


def test_spark_scores_integer_codes_beyond_2_53_beside_a_null_exactly(
    tmp_path: Path, tracking_uri: str
) -> None:
    # Declared doubles, Spark cast the codes to floats: 9007199254740993 read as ...992,
    # another code, and scored as that one. Declared text, Spark casts them exactly.
    import pyarrow as pa
    import pyarrow.parquet as pq
    from conftest import train_on_codes_beyond_2_53

    low = 2**53
    model_uri = train_on_codes_beyond_2_53(tmp_path)
    day = pa.table({"code": pa.array([low, low + 1, None], pa.int64()), "amount": [1.0] * 3})
    pq.write_table(day, tmp_path / "day.parquet")
    scores = {}
    for engine in ("local", "spark"):
        out = tmp_path / f"{engine}.parquet"
        result = run_cli(
            "score", model_uri, tmp_path / "day.parquet", "-o", out, "--engine", engine
        )
        assert result.exit_code == 0, result.output
        scores[engine] = pd.read_parquet(out)["score"].tolist()
    assert scores["spark"] == pytest.approx(scores["local"], rel=1e-6)
    assert scores["spark"][0] != pytest.approx(scores["spark"][1], rel=1e-6)


def test_spark_refuses_a_category_missing_on_every_row_as_the_local_engine_does(
    tmp_path: Path, tracking_uri: str
) -> None:
    """A merchant column null (or blank, or "NA") on every row, a broken export, scored every
    row as an unseen merchant without a word with --engine spark, where `score` stops."""
    from conftest import train_cli

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "merchant": np.resize(["grocery", "fuel", "travel"], 300),
            "rate": np.resize([0.5, 1.5, 2.5], 300),
            "amount": rng.lognormal(size=300),
        }
    )
    frame.to_parquet(tmp_path / "train.parquet")
    config = tmp_path / "merchants.yaml"
    config.write_text(
        f"data:\n  path: {tmp_path / 'train.parquet'}\n  categorical: [merchant, rate]\n"
    )
    model_uri = train_cli(config, "--set", "training.epochs=2")
    day = frame.head(20)
    broken = {
        "null.parquet": ("merchant", day.assign(merchant=None)),
        "blank_and_na.parquet": ("merchant", day.assign(merchant=np.resize(["", "NA"], 20))),
        "nan.parquet": ("rate", day.assign(rate=np.nan)),
    }
    for name, (column, table) in broken.items():
        path, output = tmp_path / name, tmp_path / f"{name}.scored"
        table.to_parquet(path)
        result = run_cli("score", model_uri, path, "-o", output, "--engine", "spark")
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == (
            f"Error: {path}: column '{column}' is missing on every row, and the model learnt no "
            "missing value in it: every row would score as an unseen category"
        )
        assert not any(
            p.name.startswith((output.name, f".{output.name}")) for p in tmp_path.iterdir()
        )
    # One missing merchant is a row to score, as it is in the local engine.
    some = tmp_path / "some.parquet"
    day.assign(merchant=day["merchant"].where(day.index > 0)).to_parquet(some)
    result = run_cli("score", model_uri, some, "-o", tmp_path / "some.scored", "--engine", "spark")
    assert result.exit_code == 0, result.output


def test_spark_refuses_an_output_folder_that_cannot_be_written_first(
    breast_cancer_model: tuple[str, str],
    breast_cancer_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the local engine does, before the JVM starts: Spark found out only once it had
    started and scored the rows. Root writes anywhere, so a stand-in refuses."""
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    model_uri, tracking = breast_cancer_model
    output = tmp_path / "locked" / "scored.parquet"
    output.parent.mkdir()
    result = run_cli("score", model_uri, breast_cancer_files[1], "-o", output,
                     "--engine", "spark", "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {output}: cannot write in folder '{output.parent}' (Permission denied)\n"
    )


def test_spark_refuses_an_existing_output_folder_in_its_own_line(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """As it refuses an existing file, before the JVM starts: an existing folder got click's
    usage error instead ("File '...' is a directory.", exit 2)."""
    model_uri, tracking = breast_cancer_model
    output = tmp_path / "scored"
    output.mkdir()
    (output / "part-0.parquet").write_bytes(b"earlier scores")
    result = run_cli("score", model_uri, breast_cancer_files[1], "-o", output,
                     "--engine", "spark", "--tracking-uri", tracking)  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == f"Error: {output}: already exists; Spark writes a new folder there\n"
    assert [p.name for p in output.iterdir()] == ["part-0.parquet"]


def test_spark_stopped_by_ctrl_c_says_so_in_one_line_and_leaves_nothing(
    breast_cancer_model: tuple[str, str],
    breast_cancer_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pyspark's SIGINT handler cancelled the jobs through the JVM connection that the write
    was waiting on: py4j logged a "reentrant call" and a KeyboardInterrupt, tracebacks both,
    before "Aborted!" (exit 1), and the session went on scoring into the staging folder."""
    import os
    import signal
    import threading

    from pyspark.sql import DataFrameWriter, SparkSession

    write = DataFrameWriter.parquet

    def interrupted_write(self: DataFrameWriter, *args: object, **kwargs: object) -> None:
        # Ctrl-C half a second into the scoring job, while the write waits on the JVM.
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        write(self, *args, **kwargs)

    monkeypatch.setattr(DataFrameWriter, "parquet", interrupted_write)
    model_uri, tracking = breast_cancer_model
    output = tmp_path / "scored"
    result = run_cli("score", model_uri, breast_cancer_files[1], "-o", output,
                     "--engine", "spark", "--allow-extra-columns", "--tracking-uri", tracking)  # fmt: skip

    assert result.exit_code == 130
    assert result.stderr == "score interrupted (SIGINT)\n"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert list(tmp_path.iterdir()) == []
    assert SparkSession.getActiveSession() is None  # no task left to write
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _new_jvm_for_later_tests()


def test_spark_ctrl_c_that_py4j_reports_as_a_lost_connection_says_so_in_one_line(
    breast_cancer_model: tuple[str, str],
    breast_cancer_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Ctrl-C landing in the read-back of the scored parts, inside pyspark's call-site
    bookkeeping, came out of py4j as "Py4JNetworkError: Answer from Java side is empty": a
    traceback instead of the interrupted line (seen once in a full run of the test above)."""
    import os
    import signal
    import time

    from py4j.protocol import Py4JNetworkError
    from pyspark.sql.classic.dataframe import DataFrame  # the class a local session builds

    def first(self: DataFrame) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:  # as py4j reports a call the interrupt cut
            raise Py4JNetworkError("Answer from Java side is empty") from None

    monkeypatch.setattr(DataFrame, "first", first)
    model_uri, tracking = breast_cancer_model
    result = run_cli("score", model_uri, breast_cancer_files[1], "-o", tmp_path / "scored",
                     "--engine", "spark", "--allow-extra-columns", "--tracking-uri", tracking)  # fmt: skip

    assert result.exit_code == 130
    assert result.stderr == "score interrupted (SIGINT)\n"
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    _new_jvm_for_later_tests()


def _new_jvm_for_later_tests() -> None:
    """End this process's Spark JVM, so that a later test starts its own. The interrupt cut
    the connection pyspark stops the JVM's context on: the context may run on in the JVM, and
    a test after this one failed with "Only one SparkContext should be running in this JVM".
    The command line exits once interrupted, and its JVM with it."""
    from pyspark import SparkContext

    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    gateway.proc.kill()
    gateway.proc.wait(timeout=60)
    SparkContext._gateway = SparkContext._jvm = None


# Ctrl-C as soon as Spark's JVM is launched, while pyspark waits for it to start.
STOPPED_AS_THE_JVM_STARTS = """
import os, signal, sys
import pyspark.java_gateway
import pipelines.cli

launch = pyspark.java_gateway.Popen

def interrupted_launch(*args, **kwargs):
    process = launch(*args, **kwargs)
    with open(sys.argv[4], "w") as pid_file:
        pid_file.write(str(process.pid))
    os.kill(os.getpid(), signal.SIGINT)
    return process

pyspark.java_gateway.Popen = interrupted_launch
pipelines.cli.main(["score", sys.argv[1], sys.argv[2], "-o", sys.argv[3], "--engine", "spark",
                    "--allow-extra-columns", "--tracking-uri", sys.argv[5]])
"""


def test_spark_stopped_by_ctrl_c_as_its_jvm_starts_leaves_no_jvm_running(
    breast_cancer_model: tuple[str, str], breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    """pyspark lost track of the JVM it was starting: the JVM, which ignores Ctrl-C, lived on
    for minutes after `score` had exited (a gigabyte of memory)."""
    import os
    import signal
    import time

    model_uri, tracking = breast_cancer_model
    pid_file, stderr = tmp_path / "jvm.pid", tmp_path / "stderr.txt"
    args = [model_uri, breast_cancer_files[1], tmp_path / "scored", pid_file, tracking]
    # A file, not a pipe, for stderr: a JVM left running holds a pipe open, and kept run()
    # waiting for the end of its output.
    with stderr.open("w") as errors:
        done = subprocess.run(
            [sys.executable, "-c", STOPPED_AS_THE_JVM_STARTS, *map(str, args)],
            stderr=errors,
            stdout=subprocess.DEVNULL,
            timeout=120,
        )
    jvm = int(pid_file.read_text())
    try:
        deadline = time.monotonic() + 20
        while _running(jvm) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _running(jvm)
    finally:
        if _running(jvm):
            os.kill(jvm, signal.SIGKILL)
    lines = [line for line in stderr.read_text().splitlines() if "incubator modules" not in line]
    assert done.returncode == 130, lines
    assert lines == ["score interrupted (SIGINT)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jvm.pid", "stderr.txt"]


def _running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited (a zombie has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")
