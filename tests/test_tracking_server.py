"""A tracking server that does not answer, or answers but not as MLflow, stops a command in
seconds, in one line."""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_cli

RETRY_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
)
PROBE = "/api/2.0/mlflow/experiments/search?max_results=1"


@pytest.fixture
def mlflow_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """No retry or timeout setting of the user's own."""
    for name in RETRY_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    """A local port nothing listens on: the kernel's pick of a free one, freed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_server_nobody_listens_at_stops_each_command_in_seconds(
    mlflow_defaults: None, breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # MLflow retried for minutes, then `runs` and `train` ended in a traceback and `score`
    # said "model not found".
    uri = f"http://127.0.0.1:{closed_port()}"
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  path: {breast_cancer_files[0]}\n")
    out = tmp_path / "scored.csv"
    for args in (
        ("runs",),
        ("score", "models:/m@champion", breast_cancer_files[1], "-o", out),
        ("train", config, "--set", "training.epochs=1"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", *map(str, args), "--tracking-uri", uri],
            capture_output=True,
            text=True,
            timeout=60,  # MLflow's own retries take minutes
            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        )
        assert done.returncode == 1, args
        assert done.stderr == (
            f"Error: {uri}: cannot reach the MLflow tracking server (Connection refused)\n"
        )
        assert done.stdout == ""
    assert not out.exists()


@pytest.fixture
def unavailable_server() -> Iterator[tuple[str, list[str]]]:
    """(URI, the paths it was asked for) of a local server that answers only 503, as a gateway
    whose tracking server is down."""
    with answering_server(503, b"", "text/plain") as server:
        yield server


def test_an_unavailable_server_is_tried_as_the_user_set_mlflows_retries_else_twice(
    mlflow_defaults: None,
    unavailable_server: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    uri, asked = unavailable_server
    expected = (
        f"Error: {uri}: cannot reach the MLflow tracking server (too many 503 error responses)"
    )
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    # The user's own setting governs, as it does every other request MLflow makes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    result = run_cli("runs", "--tracking-uri", uri)
    assert result.exit_code == 1 and result.stderr.strip() == expected
    assert asked == [PROBE] * 4
    # Without one, a retry a second later, where MLflow's own would take minutes.
    asked.clear()
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    result = run_cli("runs", "--tracking-uri", uri)
    assert result.exit_code == 1 and result.stderr.strip() == expected
    assert asked == [PROBE] * 2


def test_a_server_uri_with_its_scheme_in_capitals_is_asked_too(
    mlflow_defaults: None,
    unavailable_server: tuple[str, list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # MLflow takes "HTTP://host" for a server as it does "http://host", but the question was
    # skipped for it: minutes of MLflow's retries, then a traceback. No retries here, so that
    # the skipped question shows at once as MLflow's own traceback.
    uri, asked = unavailable_server
    uri = uri.replace("http://", "HTTP://")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    result = run_cli("runs", "--tracking-uri", uri)
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"Error: {uri}: cannot reach the MLflow tracking server (too many 503 error responses)"
    )
    assert asked == [PROBE]


class Answering(http.server.BaseHTTPRequestHandler):
    """Answers every request with `status` and `body` as `content_type`; notes its path."""

    status: int
    body: bytes
    content_type: str
    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.requests.append(self.path)
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass  # not on the test's stderr


@contextlib.contextmanager
def answering_server(
    status: int, body: bytes, content_type: str
) -> Iterator[tuple[str, list[str]]]:
    """(URI, the paths it was asked for) of a local server giving every request one answer."""
    answer = {"status": status, "body": body, "content_type": content_type, "requests": []}
    handler = type("Handler", (Answering,), answer)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_that_is_not_mlflow_stops_every_command_in_one_line(
    mlflow_defaults: None, breast_cancer_files: tuple[Path, Path], tmp_path: Path
) -> None:
    # A web server at the URI (a mistyped port, a gateway's path prefix left out) answered
    # MLflow's requests with an HTML 404: `runs` and `train` ended in MLflow's traceback of the
    # page, `score`, `evaluate`, `calibrate` and `serve` in "model not found".
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  path: {breast_cancer_files[0]}\n")
    table, out = breast_cancer_files[1], tmp_path / "scored.csv"
    page = b"<html><body>404 Not Found</body></html>"
    with answering_server(404, page, "text/html; charset=utf-8") as (uri, _):
        for args in (
            ("runs",),
            ("train", config, "--set", "training.epochs=1"),
            ("score", "models:/m@champion", table, "-o", out),
            ("evaluate", "models:/m@champion", table, "--label", "label"),
            ("calibrate", "models:/m@champion", table, "--label", "label"),
            ("serve", "models:/m@champion"),
        ):
            result = run_cli(*args, "--tracking-uri", uri)
            assert result.exit_code == 1, args
            assert result.stderr == (
                f"Error: {uri}: not an MLflow tracking server, or not its address: GET "
                "/api/2.0/mlflow/experiments/search answered HTTP 404 Not Found (text/html), "
                "not MLflow's JSON\n"
            ), args
    assert not out.exists()
    # MLflow's own authentication refuses in plain text: a server, but not the user's access.
    with answering_server(401, b"You are not authenticated.", "text/plain") as (uri, _):
        result = run_cli("runs", "--tracking-uri", uri)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {uri}: the tracking server refused the request (HTTP 401 Unauthorized); set "
        "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or MLFLOW_TRACKING_TOKEN\n"
    )


def test_an_answer_in_mlflows_json_is_left_to_the_command(mlflow_defaults: None) -> None:
    """Any JSON object is MLflow's answer, an error too (a missing permission, a bad request):
    the command's own request says what it means."""
    from anomaly_vae.tracking_server import check_server_answers

    for status, body in [
        (200, b'{"experiments": []}'),
        (403, b'{"error_code": "PERMISSION_DENIED"}'),
    ]:
        with answering_server(status, body, "application/json") as (uri, _):
            check_server_answers(uri)
