"""Commands started together on a fresh SQLite store all open it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# One command's first use of the store, in a process of its own: it imports what a command
# imports, says it is ready, and opens the store once told to, as close to the others as it can.
OPEN_STORE = """
import pathlib, sys, time
import mlflow
from anomaly_vae.tracking import configure_tracking

uri, ready, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.005)
configure_tracking(uri)
mlflow.MlflowClient().search_registered_models()
"""


def test_two_commands_set_up_a_new_store_together(tmp_path: Path) -> None:
    # Both found no tables and both ran MLflow's migrations: one ended in a traceback, such as
    # "table latest_metrics already exists" or "duplicate column name: step".
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for attempt in range(2):  # each attempt lost the race without the lock
        folder = tmp_path / str(attempt)
        uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
        folder.mkdir()
        go = folder / "go"
        ready = [folder / f"ready{i}" for i in range(2)]
        processes = [
            subprocess.Popen(
                [sys.executable, "-c", OPEN_STORE, uri, str(flag), str(go)],
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for flag in ready
        ]
        deadline = time.monotonic() + 120
        while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        for process in processes:
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 0, stderr
