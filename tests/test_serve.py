"""`anomaly-vae serve`: the real MLflow scoring server on a loopback port, against the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, run_cli

STARTUP_SECONDS = 180  # importing torch and MLflow on a busy two-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def post(url: str, body: bytes, content_type: str = "application/json") -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def split_json(frame: pd.DataFrame) -> bytes:
    return json.dumps(
        {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    ).encode()


def wait_for_ping(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"no answer on {url}/ping in {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def server(
    breast_cancer_model: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of `anomaly-vae serve MODEL` running in its own process group."""
    model_uri, tracking = breast_cancer_model
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    command = [sys.executable, "-m", "pipelines.cli", "serve", model_uri, "--port", str(port)]
    with log.open("wb") as out:
        process = subprocess.Popen(
            [*command, "--tracking-uri", tracking],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the server and its uvicorn child stop together
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_ping(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture(scope="module")
def cli_scores(
    breast_cancer_model: tuple[str, str],
    breast_cancer_files: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> pd.DataFrame:
    model_uri, tracking = breast_cancer_model
    output = tmp_path_factory.mktemp("cli") / "scored.parquet"
    _, test_path = breast_cancer_files
    result = run_cli(
        "score",
        model_uri,
        test_path,
        "-o",
        output,
        "--allow-extra-columns",
        "--tracking-uri",
        tracking,
    )
    assert result.exit_code == 0, result.output
    return pd.read_parquet(output)


@pytest.fixture(scope="module")
def rows(breast_cancer_files: tuple[Path, Path]) -> pd.DataFrame:
    """The test file as a client would send it: ids and features, no label."""
    return pd.read_parquet(breast_cancer_files[1]).drop(columns=["label"])


def test_json_and_csv_requests_return_what_the_cli_writes(
    server: str, rows: pd.DataFrame, cli_scores: pd.DataFrame
) -> None:
    status, body = post(f"{server}/invocations", split_json(rows))
    assert status == 200, body
    served = pd.DataFrame(body["predictions"])
    assert list(served.columns) == list(cli_scores.columns)
    pd.testing.assert_frame_equal(served, cli_scores, check_dtype=False, rtol=1e-12)
    assert served["id"].tolist() == rows["id"].tolist()  # ids come back as sent, not as floats

    status, body = post(f"{server}/invocations", rows.to_csv(index=False).encode(), "text/csv")
    assert status == 200, body
    pd.testing.assert_frame_equal(
        pd.DataFrame(body["predictions"]), cli_scores, check_dtype=False, rtol=1e-12
    )


def test_one_row_without_ids_is_scored(
    server: str, rows: pd.DataFrame, cli_scores: pd.DataFrame
) -> None:
    status, body = post(f"{server}/invocations", split_json(rows.drop(columns=["id"]).head(1)))
    assert status == 200, body
    (scored,) = body["predictions"]
    assert "id" not in scored
    # float32 matrix products round differently for one row than for a batch of 214
    assert np.isclose(scored["score"], cli_scores["score"].iloc[0], rtol=1e-6)


def test_bad_payloads_get_400_naming_the_problem_and_the_server_keeps_serving(
    server: str, rows: pd.DataFrame
) -> None:
    sample = rows.head(3)
    wrong_type = sample.astype({"mean area": object})
    wrong_type.loc[wrong_type.index[1], "mean area"] = "large"
    missing_value = sample.copy()
    missing_value.loc[missing_value.index[2], "worst radius"] = np.nan
    bad = {
        "missing column": (split_json(sample.drop(columns=["mean radius"])), "mean radius"),
        "wrong type": (split_json(wrong_type), "mean area"),
        "missing value": (split_json(missing_value), "worst radius"),
        "malformed JSON": (b'{"dataframe_split": {"columns": [', "JSON"),
    }
    for case, (payload, named) in bad.items():
        status, body = post(f"{server}/invocations", payload)
        assert status == 400, (case, body)
        assert named in body["message"], (case, body["message"])

    status, body = post(f"{server}/invocations", split_json(sample))
    assert status == 200, body
    assert len(body["predictions"]) == 3


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve` fails the test where it would replace itself with the server."""

    def no_exec(*args: object) -> None:
        raise AssertionError("the server must not start")

    monkeypatch.setattr("pipelines.serve.os.execve", no_exec)


@pytest.mark.usefixtures("no_server")
def test_serve_refuses_an_unknown_model_and_a_busy_port_before_starting(
    breast_cancer_model: tuple[str, str],
) -> None:
    model_uri, tracking = breast_cancer_model
    result = run_cli("serve", "models:/no-such-model@champion", "--tracking-uri", tracking)
    assert result.exit_code != 0
    assert "no-such-model" in result.output and "Traceback" not in result.output

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", model_uri, "--port", port, "--tracking-uri", tracking)
    assert result.exit_code != 0
    assert f"127.0.0.1:{port}" in result.output


def cut_short(weights: Path) -> None:
    weights.write_bytes(weights.read_bytes()[:100])


@pytest.mark.usefixtures("no_server")
@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        # The server started and stopped in 85 lines of uvicorn's and MLflow's tracebacks.
        (cut_short, "corrupt detector artifact"),
        # A version whose weights were deleted from the artifacts: a TypeError traceback.
        (Path.unlink, "not a detector directory (weights.safetensors missing)"),
    ],
)
def test_serve_refuses_a_model_that_cannot_load_before_starting(
    breast_cancer_model: tuple[str, str],
    tmp_path: Path,
    damage: Callable[[Path], None],
    problem: str,
) -> None:
    from anomaly_vae.detector import WEIGHTS_FILE
    from anomaly_vae.tracking import resolve_model_dir

    model_uri, tracking = breast_cancer_model
    damaged = tmp_path / "model"
    shutil.copytree(resolve_model_dir(model_uri, tracking), damaged)
    detector = damaged / "artifacts" / "detector"
    damage(detector / WEIGHTS_FILE)
    result = run_cli("serve", damaged, "--tracking-uri", tracking)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {detector}: ") and result.stderr.count("\n") == 1
    assert problem in result.stderr


@pytest.fixture
def started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """The server command lines `serve` would replace itself with, in a private temporary
    folder and cache folder (`tmp_path/tmp`, `tmp_path/cache`)."""
    import tempfile

    from anomaly_vae.tracking import _download_root

    commands: list[list[str]] = []
    monkeypatch.setattr("pipelines.serve.os.execve", lambda exe, argv, env: commands.append(argv))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _download_root.cache_clear()  # a folder this process made before would hide new copies
    yield commands
    _download_root.cache_clear()


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


@pytest.mark.parametrize("store", ["local", "remote"])
def test_starting_serve_again_and_again_leaves_no_more_files(
    breast_cancer_model: tuple[str, str],
    started: list[list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: str,
) -> None:
    """Each start left a copy of the model (about 400 KB) in /tmp: the server replaces the
    process, which so never removed it."""
    model_uri, tracking = breast_cancer_model
    if store == "remote":  # artifacts that are not local files, as on a tracking server
        monkeypatch.setattr("anomaly_vae.tracking._stored_model_dir", lambda *args: None)
    left: list[list[Path]] = []
    for _ in range(2):
        result = run_cli("serve", model_uri, "--tracking-uri", tracking)
        assert result.exit_code == 0, result.output
        left.append(files_under(tmp_path))

    first, second = (Path(command[command.index("--model-uri") + 1]) for command in started)
    assert first == second and (first / "MLmodel").is_file()
    assert left[0] == left[1]
    assert files_under(tmp_path / "tmp") == []
    if store == "local":  # served from the store's own folder: no copy at all
        assert first.is_relative_to(Path(tracking.removeprefix("sqlite:///")).parent)
        assert not (tmp_path / "cache").exists()
    else:  # one copy, in the cache, found again by the second start
        assert first.parent == tmp_path / "cache" / "anomaly-vae" / "models"
        assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_serve_replaces_a_cached_model_whose_files_were_deleted(
    breast_cancer_model: tuple[str, str],
    started: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cached copy missing its weights was served as it was: every later start failed with
    "no anomaly-vae detector found there" until the user found and deleted the folder."""
    from anomaly_vae.detector import WEIGHTS_FILE

    model_uri, tracking = breast_cancer_model
    monkeypatch.setattr("anomaly_vae.tracking._stored_model_dir", lambda *args: None)
    assert run_cli("serve", model_uri, "--tracking-uri", tracking).exit_code == 0
    cached = Path(started[0][started[0].index("--model-uri") + 1])
    intact = files_under(cached)
    (cached / "artifacts" / "detector" / WEIGHTS_FILE).unlink()

    result = run_cli("serve", model_uri, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    assert Path(started[1][started[1].index("--model-uri") + 1]) == cached
    assert files_under(cached) == intact
    assert [p.name for p in cached.parent.iterdir()] == [cached.name]  # no damaged copy left


def test_serve_removes_the_download_of_a_start_killed_a_day_ago(
    breast_cancer_model: tuple[str, str],
    started: list[list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A start killed while downloading left a hidden copy of the model in the cache, for good;
    a download as recent as another start's in progress is left alone."""
    model_uri, tracking = breast_cancer_model
    monkeypatch.setattr("anomaly_vae.tracking._stored_model_dir", lambda *args: None)
    models = tmp_path / "cache" / "anomaly-vae" / "models"
    killed, running = models / ".download-killed", models / ".download-running"
    for folder in (killed, running):
        (folder / "partial").mkdir(parents=True)
        (folder / "partial" / "MLmodel").write_text("flavors: {}")
    two_days_ago = time.time() - 2 * 24 * 3600
    os.utime(killed, (two_days_ago, two_days_ago))

    assert run_cli("serve", model_uri, "--tracking-uri", tracking).exit_code == 0
    assert not killed.exists() and running.is_dir()


def test_serve_starts_where_no_cache_folder_can_be_made(
    breast_cancer_model: tuple[str, str],
    started: list[list[str]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A container's home is often read-only or missing: the cache folder could not be made,
    and `serve` of a tracking server's model stopped in a traceback where it used to start."""
    model_uri, tracking = breast_cancer_model
    monkeypatch.setattr("anomaly_vae.tracking._stored_model_dir", lambda *args: None)
    (tmp_path / "home").write_text("not a folder")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME")
    result = run_cli("serve", model_uri, "--tracking-uri", tracking)
    assert result.exit_code == 0, result.output
    (command,) = started
    assert (Path(command[command.index("--model-uri") + 1]) / "MLmodel").is_file()


def test_serve_names_a_missing_store_and_does_not_make_it(started, tmp_path: Path) -> None:
    # serve made the store, an empty mlruns/mlflow.db, and said the model was not found in it.
    missing = f"sqlite:///{tmp_path}/typo/mlflow.db"
    result = run_cli("serve", "models:/fraud@champion", "--tracking-uri", missing)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {missing}: no MLflow tracking store there; `anomaly-vae train` makes one"
    )
    assert not (tmp_path / "typo").exists() and not started
