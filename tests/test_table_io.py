"""Reading and writing tables through `anomaly-vae score`: what goes in comes out exactly,
and a table that cannot be written so stops in one line, leaving no file behind."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from anomaly_vae.data.tables import AtomicTableWriter, iter_table_batches, read_table
from anomaly_vae.errors import InputError


def score(model: tuple[str, str], source: Path, out: Path) -> subprocess.CompletedProcess:
    """`anomaly-vae score` in its own process: pyarrow's CSV writer crashed the process on
    parts of another shape, which would have taken the test session with it."""
    model_uri, tracking = model
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "score", model_uri, str(source), "-o", str(out)]
        + ["--tracking-uri", tracking],
        capture_output=True,
        text=True,
    )


def output_in_empty_folder(tmp_path: Path, name: str) -> Path:
    """An output path alone in a new folder, so a refusal can show that nothing was written."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder / name


def assert_refused(result: subprocess.CompletedProcess, out: Path, message: str) -> None:
    """Exit 1, one line naming the culprit, and nothing written: not even a temporary file."""
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"Error: {message}")
    assert "Traceback" not in result.stderr
    assert list(out.parent.iterdir()) == []


def parquet_with_ids(test: Path, path: Path, ids: Callable[[list], pa.Array]) -> Path:
    """The test rows without labels as one Parquet file, its 'id' column replaced by `ids` of
    the original ids."""
    table = pa.Table.from_pandas(pd.read_parquet(test).drop(columns="label"), preserve_index=False)
    pq.write_table(table.set_column(0, "id", ids(table.column("id").to_pylist())), path)
    return path


def two_parts(
    test: Path, folder: Path, change: Callable[[pd.DataFrame], pd.DataFrame]
) -> pd.DataFrame:
    """The test rows without labels as a folder of two Parquet parts, `change` applied to the
    second; returns the rows."""
    frame = pd.read_parquet(test).drop(columns="label")
    folder.mkdir()
    frame.iloc[:100].to_parquet(folder / "part-0.parquet", index=False)
    change(frame.iloc[100:]).to_parquet(folder / "part-1.parquet", index=False)
    return frame


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda part: part.drop(columns="id"), "has no column 'id', which earlier rows have"),
        (
            lambda part: part.astype({"id": str}),
            "column 'id' is large_string here, int64 in earlier rows",
        ),
    ],
    ids=["without-id", "text-id"],
)
def test_parquet_parts_of_another_shape_are_refused(
    change, message, suffix, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # The CSV writer took part-1's table without a check: exit 139, a .tmp file left behind.
    folder = tmp_path / "table"
    two_parts(breast_cancer_files[1], folder, change)
    out = output_in_empty_folder(tmp_path, f"scored{suffix}")
    result = score(breast_cancer_model, folder, out)
    assert_refused(result, out, f"{folder / 'part-1.parquet'}: {message}")


def test_parquet_parts_whose_numbers_differ_in_width_are_cast(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    folder = tmp_path / "table"
    frame = two_parts(breast_cancer_files[1], folder, lambda part: part.astype({"id": "float64"}))
    out = tmp_path / "scored.parquet"
    assert score(breast_cancer_model, folder, out).returncode == 0
    scored = pq.read_table(out)
    assert scored.schema.field("id").type == pa.int64()
    assert scored.column("id").to_pylist() == frame["id"].tolist()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_parquet_parts_whose_first_holds_a_column_of_nulls_are_scored(
    suffix, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # pandas writes an all-None column with Arrow's null type; the output took that type
    # from the first part and refused the second's ids and notes, which training reads.
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    frame["note"] = "checked"
    folder = tmp_path / "table"
    folder.mkdir()
    first = frame.iloc[:100].assign(id=None, note=None)
    first.to_parquet(folder / "part-0.parquet", index=False)
    frame.iloc[100:].to_parquet(folder / "part-1.parquet", index=False)
    assert pq.read_schema(folder / "part-0.parquet").field("note").type == pa.null()
    model_uri, tracking = breast_cancer_model
    out = tmp_path / f"scored{suffix}"
    options = ["--keep-columns", "--allow-extra-columns", "--tracking-uri", tracking]
    result = run_cli("score", model_uri, folder, "-o", out, *options)
    assert result.exit_code == 0, result.output
    blanks_as_nulls = pacsv.ConvertOptions(strings_can_be_null=True)
    scored = (
        pq.read_table(out)
        if suffix == ".parquet"
        else pacsv.read_csv(out, convert_options=blanks_as_nulls)
    )
    assert scored.column("id").to_pylist() == [None] * 100 + frame["id"].iloc[100:].tolist()
    assert scored.column("note").to_pylist() == [None] * 100 + ["checked"] * (len(frame) - 100)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda part: part.drop(columns="mean radius"), "has no column 'mean radius', which"),
        (lambda part: part.assign(extra=1.0), "has a column 'extra' that earlier rows do not"),
        (
            lambda part: part.astype({"mean radius": str}),
            "column 'mean radius' is str here, float64 in earlier rows",
        ),
    ],
    ids=["missing", "extra", "text"],
)
def test_training_refuses_parquet_parts_of_another_shape(
    change, message, breast_cancer_files, tmp_path
) -> None:
    # Concatenated, the gaps trained as missing values and text beside numbers as categories.
    folder = tmp_path / "table"
    two_parts(breast_cancer_files[0], folder, change)
    with pytest.raises(InputError, match=f"^{folder / 'part-1.parquet'}: {message}"):
        read_table(folder)


@pytest.mark.parametrize("first_repeats", [True, False], ids=["every part", "a later part"])
def test_training_on_parquet_parts_with_a_repeated_column_name_fails_in_one_line(
    first_repeats, breast_cancer_files, tmp_path, tracking_uri
) -> None:
    # The check that parts are alike looked the repeated name up as one column, and stopped
    # with an AttributeError traceback before the line that names it; where only a later
    # part repeated it, whatever the first part held.
    table = pq.read_table(breast_cancer_files[0])
    repeated = table.append_column("worst area", table.column("worst area"))
    folder = tmp_path / "table"
    folder.mkdir()
    pq.write_table((repeated if first_repeats else table).slice(0, 100), folder / "part-0.parquet")
    pq.write_table(repeated.slice(100), folder / "part-1.parquet")
    config = tmp_path / "repeated.yaml"
    config.write_text(f"data:\n  path: {folder}\n  label: label\n")
    result = run_cli("train", config)
    assert result.exit_code == 1
    named = folder / ("part-0.parquet" if first_repeats else "part-1.parquet")
    assert result.stderr == f"Error: {named}: more than one column named 'worst area'\n"


def test_only_a_header_of_nul_separated_letters_reads_as_utf16(tmp_path) -> None:
    # Any NUL byte in the header line was taken for UTF-16, which random bytes are not.
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(InputError) as info:
        read_table(binary)
    assert "UTF-16" not in str(info.value)
    utf16 = tmp_path / "utf16.csv"
    utf16.write_bytes("id,x\n1,2\n".encode("utf-16-be"))
    with pytest.raises(InputError, match="not UTF-8 CSV text but UTF-16 text"):
        read_table(utf16)


@pytest.mark.parametrize("name", ["EXPORT.CSV.GZ", "export.csv.Bz2", "export.CSV.ZST"])
def test_a_compressed_csv_reads_whatever_the_case_of_its_extension(name, tmp_path) -> None:
    """pyarrow detects a codec by the extension's case: a .CSV.GZ, accepted as a compressed
    CSV, was read as text and refused as "gzip-compressed (name it .csv.gz)"."""
    frame = pd.DataFrame({"id": ["007", "008"], "amount": [1.5, 2.5]})
    path = tmp_path / name
    codec = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}[path.suffix.lower()]
    with pa.output_stream(str(path), compression=codec) as sink:
        sink.write(frame.to_csv(index=False).encode())
    pd.testing.assert_frame_equal(read_table(path, text_columns=["id"]), frame)
    batches = list(iter_table_batches(path, text_columns=["id"]))
    pd.testing.assert_frame_equal(batches[0].frame, frame)


def test_a_csv_streams_in_batches_of_the_rows_asked_for(tmp_path) -> None:
    # pyarrow parses a CSV in 1 MB blocks, and each block came as a batch of its own, about
    # 1,800 rows of 30 numbers: scoring a CSV paid its per-batch work 2.5 times as often.
    frame = pd.DataFrame({f"f{j}": [i / 7 + j for i in range(5_000)] for j in range(30)})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    assert path.stat().st_size > 2 << 20
    batches = list(iter_table_batches(path, batch_rows=2_000))
    assert [len(batch.frame) for batch in batches] == [2_000, 2_000, 1_000]
    assert [batch.first_row for batch in batches] == [0, 2_000, 4_000]
    pd.testing.assert_frame_equal(
        pd.concat([batch.frame for batch in batches], ignore_index=True), read_table(path)
    )


def test_a_wide_parquet_file_streams_without_a_buffer_of_each_column(tmp_path) -> None:
    # pyarrow reads each column through a buffer of its own: at 1 MB, a 300-column file held
    # 300 MB of buffers whatever the batch (scoring 200,000 rows peaked at 1.7 GB, not 1.5).
    rng = np.random.default_rng(0)
    columns = {f"f{j}": rng.standard_normal(150_000) for j in range(40)}
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table(columns), path, use_dictionary=False)
    held = rows = 0
    for batch in iter_table_batches(path, batch_rows=1_000):
        held = max(held, pa.total_allocated_bytes())
        rows += len(batch.frame)
    assert rows == 150_000
    assert held < 16 << 20  # 40 columns' 1 MB buffers, 40 MiB, failed this


def test_training_reads_parquet_parts_whose_missing_values_changed_their_dtype(
    breast_cancer_files, tmp_path
) -> None:
    # pandas reads an integer or boolean column with a missing value as floats or objects.
    frame = pd.read_parquet(breast_cancer_files[0]).astype({"label": bool})
    gapped = frame.iloc[100:].astype({"label": object})
    gapped.iloc[0, [frame.columns.get_loc("id"), frame.columns.get_loc("label")]] = None
    folder = tmp_path / "table"
    folder.mkdir()
    frame.iloc[:100].to_parquet(folder / "part-0.parquet", index=False)
    gapped.to_parquet(folder / "part-1.parquet", index=False)
    read = read_table(folder)
    assert len(read) == len(frame) and read["id"].isna().sum() == 1


def test_columns_pandas_saved_as_the_index_are_read_as_columns(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # `frame.set_index(...).to_parquet()` keeps the column in the file, but pandas read it
    # back as the index: "missing column(s) 'mean radius'", or, in training, 'id'.
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label")
    indexed = tmp_path / "indexed.parquet"
    frame.set_index("mean radius").to_parquet(indexed)
    outputs = []
    for source in (breast_cancer_files[1], indexed):
        outputs.append(tmp_path / f"scored_{len(outputs)}.parquet")
        result = run_cli("score", model_uri, source, "-o", outputs[-1], "--tracking-uri", tracking)
        assert result.exit_code == 0, result.output
    assert pd.read_parquet(outputs[0]).equals(pd.read_parquet(outputs[1]))
    frame.set_index("id").to_parquet(indexed)
    assert read_table(indexed)["id"].tolist() == frame["id"].tolist()


@pytest.mark.parametrize(
    ("ids", "kind"),
    [
        (lambda ids: pa.array([[i] for i in ids]), "list<"),
        (lambda ids: pa.array([{"a": i} for i in ids]), "struct<a: int64>"),
        (lambda ids: pa.array([bytes([i % 256, 0xFF]) for i in ids]), "binary"),
    ],
    ids=["list", "struct", "binary"],
)
def test_id_columns_a_csv_cannot_hold_are_refused(
    ids, kind, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # pyarrow's ArrowInvalid ("Unsupported Type", "Invalid UTF8 payload") came as a traceback.
    source = parquet_with_ids(breast_cancer_files[1], tmp_path / "odd_ids.parquet", ids)
    out = output_in_empty_folder(tmp_path, "scored.csv")
    result = score(breast_cancer_model, source, out)
    assert_refused(result, out, f"{source}: column 'id' ({kind}")


def test_parquet_ids_with_a_null_come_back_exactly(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # pandas turned an int64 column with a null into float64: every id printed as 1e+18.
    model_uri, tracking = breast_cancer_model
    ids = [
        None if i == 3 else 10**18 + i for i in range(len(pd.read_parquet(breast_cancer_files[1])))
    ]
    source = parquet_with_ids(
        breast_cancer_files[1], tmp_path / "null_id.parquet", lambda _: pa.array(ids, pa.int64())
    )
    for out in (tmp_path / "scored.csv", tmp_path / "scored.parquet"):
        result = run_cli("score", model_uri, source, "-o", out, "--tracking-uri", tracking)
        assert result.exit_code == 0, result.output
        scored = pq.read_table(out) if out.suffix == ".parquet" else pacsv.read_csv(out)
        assert scored.schema.field("id").type == pa.int64()
        assert scored.column("id").to_pylist() == ids


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_categorical_ids_score_to_a_file_pandas_reads_back(
    suffix, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    """Ids saved from a pandas categorical are dictionary-encoded: kept so, the scored
    Parquet file named a type `pd.read_parquet` cannot read (TypeError), and a folder's part
    of plain ids beside an encoded one was refused ("is large_string here, dictionary<...>")."""
    folder = tmp_path / "table"
    frame = two_parts(
        breast_cancer_files[1],
        folder,
        lambda part: part.astype({"id": str}),
    )
    ids = frame["id"].astype(str)
    first = pd.read_parquet(folder / "part-0.parquet").astype({"id": str})
    first.astype({"id": "category"}).to_parquet(folder / "part-0.parquet", index=False)
    for source, expected in ((folder / "part-0.parquet", ids[:100]), (folder, ids)):
        out = tmp_path / f"scored_{source.stem}{suffix}"
        assert score(breast_cancer_model, source, out).returncode == 0
        scored = pd.read_parquet(out) if suffix == ".parquet" else pd.read_csv(out, dtype=str)
        assert scored["id"].tolist() == expected.tolist()


def test_kept_categorical_columns_of_parts_encoded_and_plain_are_written(tmp_path) -> None:
    """A feature kept with --keep-columns comes as a pandas categorical from a part that saved
    one, and as text from the next: the writer refused the second part."""
    out = tmp_path / "scored.parquet"
    with AtomicTableWriter(out) as writer:
        writer.write(pd.DataFrame({"merchant": pd.Categorical(["fuel", None])}), "part-0")
        writer.write(pd.DataFrame({"merchant": ["food", "fuel"]}), "part-1")
    assert pq.read_table(out).column("merchant").to_pylist() == ["fuel", None, "food", "fuel"]


def test_kept_columns_come_back_exactly_as_written(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # Read as floats, a 19-digit account printed as 1.2345678901234568e+18 and a zip code lost
    # its leading zero.
    model_uri, tracking = breast_cancer_model
    frame = pd.read_parquet(breast_cancer_files[1]).drop(columns="label").astype(str)
    frame["account"] = [str(1234567890123456789 + i) for i in range(len(frame))]
    frame.loc[2, "account"] = ""
    frame["zip"] = [f"{i:05d}" for i in range(len(frame))]
    source = tmp_path / "accounts.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "scored.csv"
    options = ["--keep-columns", "--allow-extra-columns", "--tracking-uri", tracking]
    result = run_cli("score", model_uri, source, "-o", out, *options)
    assert result.exit_code == 0, result.output
    scored = pd.read_csv(out, dtype=str, keep_default_na=False)
    for name in ("id", "account", "zip"):
        assert scored[name].tolist() == frame[name].tolist(), name


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda text: text.replace("mean radius", "mean r\u00e9dius", 1),
            "not UTF-8 text (byte 0xe9 in the header); save it as UTF-8",
        ),
        (  # the cell named by its row, which pyarrow does not give
            lambda text: "\n".join(
                f"caf\u00e9{line}" if i == 150 else line for i, line in enumerate(text.split("\n"))
            ),
            "column 'id', row 150: not UTF-8 text; save the file as UTF-8",
        ),
    ],
    ids=["header", "cell"],
)
def test_a_latin1_csv_is_refused_in_one_line(
    edit, message, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # The header gave a UnicodeDecodeError traceback, a cell "In CSV column #0: ...".
    model_uri, tracking = breast_cancer_model
    text = pd.read_parquet(breast_cancer_files[1]).drop(columns="label").to_csv(index=False)
    source = tmp_path / "latin1.csv"
    source.write_bytes(edit(text).encode("latin-1"))
    out = output_in_empty_folder(tmp_path, "scored.csv")
    result = run_cli("score", model_uri, source, "-o", out, "--tracking-uri", tracking)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {source}: {message}"
    assert list(out.parent.iterdir()) == []


def test_a_cell_longer_than_the_csv_block_is_refused_in_one_line(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # pyarrow reads a CSV in 1 MB blocks and advised "try to increase block size?", which no
    # option of ours does.
    model_uri, tracking = breast_cancer_model
    rows = pd.concat([pd.read_parquet(breast_cancer_files[1]).drop(columns="label")] * 20)
    rows["note"] = "x"
    rows.iloc[3000, -1] = "y" * 2_000_000  # after the first block
    source = tmp_path / "notes.csv"
    rows.to_csv(source, index=False)
    out = output_in_empty_folder(tmp_path, "scored.csv")
    result = run_cli(
        "score", model_uri, source, "-o", out, "--allow-extra-columns", "--tracking-uri", tracking
    )
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {source}: a cell holds more than 1 MB of text, more than the CSV reader takes "
        "at once; drop that column or save the table as Parquet"
    )
    assert list(out.parent.iterdir()) == []


def test_an_output_that_would_replace_the_input_is_refused(
    breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # The scores silently replaced the input file, and its 30 features were gone.
    model_uri, tracking = breast_cancer_model
    source = tmp_path / "same.parquet"
    source.write_bytes(breast_cancer_files[1].read_bytes())
    folder = tmp_path / "table"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(source.read_bytes())
    for given, out, message in [
        (source, source, "the output would overwrite the input"),
        (source, tmp_path / "." / "same.parquet", "the output would overwrite the input"),
        (folder, folder / "scored.parquet", "the output would be written inside the input folder"),
    ]:
        result = run_cli("score", model_uri, given, "-o", out, "--tracking-uri", tracking)
        assert result.exit_code == 1
        assert result.stderr.strip() == f"Error: {out}: {message}"
    assert source.read_bytes() == breast_cancer_files[1].read_bytes()
    assert [p.name for p in folder.iterdir()] == ["part-0.parquet"]


@pytest.mark.parametrize(
    ("command", "name"), [("score", "scored.parquet"), ("evaluate", "report.html")]
)
def test_an_output_folder_that_cannot_be_written_is_refused_first(
    command, name, breast_cancer_model, breast_cancer_files, tmp_path, monkeypatch
) -> None:
    # The temporary file beside the output failed with a PermissionError traceback; the
    # report's only after the evaluation had run. Root writes anywhere, so a stand-in refuses.
    import tempfile

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    model_uri, tracking = breast_cancer_model
    out = output_in_empty_folder(tmp_path, name)
    result = run_cli(
        command, model_uri, breast_cancer_files[1], "-o", out, "--tracking-uri", tracking
    )
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: {out}: cannot write in folder '{out.parent}' (Permission denied)\n"
    )
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_outputs_get_the_mode_the_umask_gives(
    umask, breast_cancer_model, breast_cancer_files, tmp_path
) -> None:
    # mkstemp's temporary file made every output owner-only (0600), whatever the umask.
    model_uri, tracking = breast_cancer_model
    previous = os.umask(umask)
    try:
        for out in (tmp_path / "scored.csv", tmp_path / "scored.parquet"):
            result = run_cli(
                "score", model_uri, breast_cancer_files[1], "-o", out, "--tracking-uri", tracking
            )
            assert result.exit_code == 0, result.output
            assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    finally:
        os.umask(previous)


def test_parquet_bytes_that_are_text_read_as_the_text(tmp_path) -> None:
    """Hive or Impala write text as plain binary: read as bytes, training learnt the category
    "b'food'", which the same merchant in a CSV never matched. Bytes that are not UTF-8 text
    stay bytes, and an id column keeps the file's own type."""
    table = pa.table(
        {
            "merchant": pa.array([b"food", b"fuel", None], type=pa.binary()),
            "digest": pa.array([b"\xff\x00", b"ok", b""], type=pa.large_binary()),
            "amount": [1.0, 2.0, 3.0],
        }
    )
    pq.write_table(table, tmp_path / "binary.parquet")
    pd.DataFrame({"merchant": ["food", "fuel", None], "amount": [1.0, 2.0, 3.0]}).to_csv(
        tmp_path / "text.csv", index=False
    )
    frame = read_table(tmp_path / "binary.parquet")
    assert (
        frame["merchant"].tolist()[:2] == read_table(tmp_path / "text.csv")["merchant"].tolist()[:2]
    )
    assert frame["merchant"].tolist()[:2] == ["food", "fuel"] and pd.isna(frame["merchant"][2])
    assert frame["digest"].tolist() == [b"\xff\x00", b"ok", b""]
    echoed = next(iter_table_batches(tmp_path / "binary.parquet", echoed={"merchant"}.__contains__))
    assert echoed.frame["merchant"].dtype == pd.ArrowDtype(pa.binary())


def test_training_reads_a_csv_column_of_zero_padded_numbers_as_codes(tmp_path) -> None:
    # "01234" read as the number 1234 trained a numeric feature where the same table's
    # Parquet file (text) trained a category; a padded value past pyarrow's first 1 MB block
    # counts too. Lone zeros and numbers written plainly stay numbers.
    rows = 120_000
    frame = pd.DataFrame(
        {
            "zip": [str(10000 + i % 50) for i in range(rows)],
            "items": [i % 7 for i in range(rows)],
            "signed": [-(i % 3) for i in range(rows)],
        }
    )
    frame.loc[rows - 1, "zip"] = "01234"
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    assert path.stat().st_size > 1 << 20
    read = read_table(path)
    assert read["zip"].tolist() == frame["zip"].tolist()
    assert read.dtypes[["items", "signed"]].tolist() == ["float64", "float64"]
    # Scoring reads columns as the model knows them, so only training looks.
    batch = next(iter_table_batches(path))
    assert batch.frame["zip"].dtype == "float64"


@pytest.mark.parametrize(
    ("late", "dtype"), [("SPRING", "str"), ("2,5", "float64")], ids=["text", "numbers"]
)
def test_a_csv_column_blank_through_the_first_block_takes_the_type_of_its_values(
    late, dtype, tmp_path
) -> None:
    # Typed by pyarrow's first 1 MB block, a column blank there was read as numbers: the first
    # promo code past it stopped training ("'SPRING' is not a number"), where the same
    # table's Parquet file trains, and stopped scoring of a file whose extra column it was.
    rows = 250_000
    frame = pd.DataFrame({"items": [f"{i % 7},5" for i in range(rows)], "promo": ""})
    frame.loc[rows - 2, "promo"] = "NA"
    frame.loc[rows - 1, "promo"] = late
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False, sep=";")
    assert path.stat().st_size > 1 << 20
    read = read_table(path)
    assert read["promo"].dtype == dtype
    assert read["promo"].iloc[-1] == (late if dtype == "str" else 2.5)
    if dtype == "float64":  # blank and NA cells are missing numbers (text: missing categories)
        assert read["promo"].isna().sum() == rows - 1
    assert read["items"].iloc[1] == 1.5
    batches = list(iter_table_batches(path))
    assert [batch.frame["promo"].dtype for batch in batches][-1] == dtype


@pytest.mark.parametrize("first_decimal", [20_000, 299_990], ids=["first_block", "later"])
def test_a_semicolon_csv_whose_decimal_commas_come_late_reads_them_as_numbers(
    first_decimal, tmp_path
) -> None:
    # The decimal mark was decided by the first 64 kB alone: amounts that were whole numbers
    # there read with a decimal point, and the first 2,5 past them made the column text (a
    # category of every amount) within pyarrow's first 1 MB block, or was refused past it.
    rows = 300_000
    amounts = [str(i % 7) for i in range(rows)]
    amounts[first_decimal:] = [f"{i % 7},5" for i in range(first_decimal, rows)]
    path = tmp_path / "t.csv"
    pd.DataFrame({"amount": amounts, "items": 3}).to_csv(path, index=False, sep=";")
    assert path.stat().st_size > 1 << 20
    for read in (read_table(path), pd.concat(b.frame for b in iter_table_batches(path))):
        assert read["amount"].dtype == "float64"
        assert read["amount"].iloc[[first_decimal - 1, -1]].tolist() == [
            (first_decimal - 1) % 7,
            (rows - 1) % 7 + 0.5,
        ]


def test_a_listed_categorical_keeps_zero_padded_numbers_numeric_with_their_blanks(
    tmp_path, tracking_uri
) -> None:
    # data.categorical lists every categorical column, so "007" is a quantity here, read as a
    # number when scored; training read it as text, where a blank or "NA" cell is no number,
    # and stopped with "'' is not a number" on a file that trained before.
    amount = [f"{7 * i % 300:03d}" for i in range(200)]
    amount[5], amount[9] = "", "NA"
    frame = pd.DataFrame({"merchant": ["a", "b", "c", "d"] * 50, "amount": amount})
    frame.to_csv(tmp_path / "t.csv", index=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data: {{path: {tmp_path / 't.csv'}, categorical: [merchant]}}\ntraining: {{epochs: 1}}\n"
    )
    result = run_cli("train", config)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("seed", [0, 1])
def test_text_in_a_column_a_categorical_list_leaves_numeric_names_the_files_row(
    seed, tmp_path, tracking_uri
) -> None:
    # Found once the rows were split, the text was named by its row among the training or
    # validation rows: the file's row 6 read as row 50, or another, by the seed.
    amount = [str(i % 37) for i in range(200)]
    amount[5] = "abc"
    frame = pd.DataFrame({"merchant": ["a", "b", "c", "d"] * 50, "amount": amount})
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"data: {{path: {path}, categorical: [merchant]}}\ntraining: {{epochs: 1, seed: {seed}}}\n"
    )
    result = run_cli("train", config)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {path}: column 'amount', row 6: 'abc' is not a number (data.categorical "
        "lists every categorical column: add 'amount' there if it is one, or leave "
        "data.categorical out to infer them)"
    )
    # A listed name that is no feature is the first thing wrong, and named first.
    config.write_text(f"data: {{path: {path}, categorical: [merchnt]}}\n")
    result = run_cli("train", config)
    assert result.stderr.strip() == (
        "Error: data.categorical names columns that are not features: ['merchnt']"
    )


@pytest.mark.parametrize("kept", [0.001, 0.01, 0.7])
def test_training_on_a_truncated_csv_gz_fails_in_one_line(kept, tmp_path, tracking_uri) -> None:
    """A .csv.gz cut short (a copy that did not finish) ended `train` in an OSError traceback
    where `score` named the file. `kept` of its compressed bytes survive: the cut falls in the
    64 kB read for the delimiter, in the first 1 MB block whose types pyarrow infers, or past
    it, in the pass that looks for zero-padded codes."""
    rows = 1_000_000  # 8.9 MB, well past what pyarrow reads ahead of the first block
    frame = pd.DataFrame({"items": [i % 7 for i in range(rows)], "amount": range(rows)})
    path = tmp_path / "t.csv.gz"
    frame.to_csv(path, index=False)
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * kept)])
    config = tmp_path / "config.yaml"
    config.write_text(f"data: {{path: {path}}}\ntraining: {{epochs: 1}}\n")
    result = run_cli("train", config)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: {path}: cannot read (Truncated compressed stream)"


def test_integer_codes_beyond_2_53_with_missing_values_stay_distinct(
    tmp_path, tracking_uri
) -> None:
    # pandas reads an integer column with a null as float64, exact only to 2^53: merchant codes
    # 9007199254740992 and ...993 trained as one category and scored as one.
    from conftest import train_on_codes_beyond_2_53

    from pipelines.score import load_model

    low = 2**53
    model_uri = train_on_codes_beyond_2_53(tmp_path)
    detector = load_model(model_uri)
    assert detector.preprocessor.categorical[0].categories == [
        "9007199254740992", "9007199254740993", "<missing>"
    ]  # fmt: skip

    # Scored with and without a null beside them, each code scores as its own category.
    day = {"code": [low, low + 1], "amount": [1.0, 1.0]}
    with_null = {"code": [*day["code"], None], "amount": [*day["amount"], 1.0]}
    scores = {}
    for name, table in {"plain": day, "null": with_null}.items():
        path, out = tmp_path / f"{name}.parquet", tmp_path / f"{name}_scored.parquet"
        pq.write_table(
            pa.table(table, pa.schema([("code", pa.int64()), ("amount", pa.float64())])), path
        )
        assert run_cli("score", model_uri, path, "-o", out).exit_code == 0
        scores[name] = pd.read_parquet(out)["score"].tolist()
    # The same to float32's digits: a batch of three rows rounds otherwise than one of two.
    assert scores["null"][:2] == pytest.approx(scores["plain"], rel=1e-6)
    assert scores["plain"][0] != pytest.approx(scores["plain"][1], rel=1e-6)
    # An integer feature without nulls was always read exactly, as int64.
    assert read_table(tmp_path / "plain.parquet")["code"].tolist() == [low, low + 1]
    # The pyfunc declares them text: as longs, MLflow refused a null, and as doubles (a JSON
    # request's or a Spark batch's floats beside a null) both read as 9007199254740992 and
    # scored as one category. As floats, they are refused, naming the row.
    import mlflow

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    assert pyfunc.metadata.get_input_schema().input_dict()["code"].type.name == "string"
    texts = pd.array([str(low), str(low + 1), None], dtype="string")
    as_text = pd.DataFrame(with_null).assign(code=texts)
    assert pyfunc.predict(as_text)["score"].tolist()[:2] == pytest.approx(scores["plain"])
    floats = pd.DataFrame(with_null)
    with pytest.raises(InputError) as refused:
        load_model(model_uri).score_frame(floats, source="request")
    assert str(refused.value) == (
        "request: column 'code', row 1: the code 9007199254740992 came as a floating-point "
        "number, which beyond 2^53 may hold another code: send the codes as text, or as "
        "integers without missing values"
    )


@pytest.mark.parametrize("note", ["sep=;", '"sep=;"', "SEP=,"])
def test_a_spreadsheet_separator_line_before_the_header_is_named(tmp_path, note) -> None:
    """Excel's `sep=;` line, read as the header, gave "row 1 has 3 values, where the header
    names 2 columns"."""
    path = tmp_path / "day.csv"
    path.write_text(f"{note}\namount;merchant\n1,5;fuel\n")
    with pytest.raises(InputError) as refused:
        read_table(path)
    assert str(refused.value) == (
        f"{path}: the first line, '{note}', is a spreadsheet's note of the separator, not the "
        "header: delete that line"
    )
    path.write_text("sep;amount\nx;1\n")  # a column named sep is a header
    assert list(read_table(path).columns) == ["sep", "amount"]
