"""A tracking server that does not answer stops a command in seconds, in one line."""

from __future__ import annotations

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


class Unavailable(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, as a gateway whose tracking server is down; counts them."""

    requests: list[str]

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.requests.append(self.path)
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass  # not on the test's stderr


@pytest.fixture
def unavailable_server() -> Iterator[tuple[str, list[str]]]:
    """(URI, the paths it was asked for) of a local server that answers only 503."""
    handler = type("Handler", (Unavailable,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


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
    assert asked == ["/health"] * 4
    # Without one, a retry a second later, where MLflow's own would take minutes.
    asked.clear()
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    result = run_cli("runs", "--tracking-uri", uri)
    assert result.exit_code == 1 and result.stderr.strip() == expected
    assert asked == ["/health"] * 2


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
    assert asked == ["/health"]
