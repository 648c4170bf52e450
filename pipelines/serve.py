"""Serve: a registered model behind MLflow's REST scoring server.

MLflow's server (`mlflow models serve`) already answers the formats other services send
(split- or records-oriented JSON, CSV) with a `/ping` health check, and it loads the same
pyfunc wrapper as `anomaly-vae score`, so it returns the same columns and numbers. This module
only finds the model, checks what would otherwise fail deep inside the server, and hands over.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

DEFAULT_HOST = "127.0.0.1"
# `mlflow ui` and `mlflow server` take 5000; the scoring server sits beside them.
DEFAULT_PORT = 5001


def server_command(model_dir: Path, host: str, port: int) -> list[str]:
    """The `mlflow models serve` command line, run by this interpreter's own MLflow."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "--model-uri",
        str(model_dir),
        "--env-manager",
        "local",
        "--host",
        host,
        "--port",
        str(port),
    ]


def server_environment() -> dict[str, str]:
    """This environment with the interpreter's bin folder first on PATH.

    MLflow starts the server as a bare `uvicorn` command; with a virtual environment that is
    not activated (`.venv/bin/anomaly-vae serve ...`) it would not be found.
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def check_port_free(host: str, port: int) -> None:
    """Fail in one line now rather than with uvicorn's traceback after the model has loaded."""
    from anomaly_vae.errors import InputError

    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port} ({exc.strerror})") from None


def serve(
    model_uri: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    tracking_uri: str | None = None,
    echo: Callable[[str], None] = print,
) -> NoReturn:
    """Resolve MODEL to a local MLflow model, then replace this process with MLflow's server.

    Replacing (exec) rather than wrapping the server lets Ctrl-C and a supervisor's SIGTERM
    reach it directly.
    """
    from anomaly_vae.detector import load_detector
    from anomaly_vae.tracking import quiet_mlflow, resolve_detector_dir, resolve_model_dir

    # Not configure_tracking(tracking_uri): it made the default store where there was none,
    # and "model not found" in it; resolve_model_dir opens a store only to look a model up.
    quiet_mlflow()
    model_dir = resolve_model_dir(model_uri, tracking_uri)
    # A detector that cannot load (damaged weights) stopped the server after it had started,
    # in uvicorn's and MLflow's tracebacks around the one line that said why.
    load_detector(resolve_detector_dir(str(model_dir)))
    check_port_free(host, port)
    echo(f"serving {model_uri} ({model_dir}) at http://{host}:{port}/invocations")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, server_command(model_dir, host, port), server_environment())
