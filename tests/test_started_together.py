"""Commands started together on a new SQLite store all get through their first steps."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

# A command's first steps, in a process of its own: it imports what a command imports, says it
# is ready, waits for the word, then runs `steps` (argv[4]), as close to the others as it can.
STARTED_TOGETHER = """
import pathlib, sys, time
import mlflow
from anomaly_vae.tracking import configure_tracking, use_experiment

uri, ready, go, steps = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3]), sys.argv[4]
if steps == "experiment":
    configure_tracking(uri)
ready.touch()
while not go.exists():
    time.sleep(0.005)
if steps == "open":
    configure_tracking(uri)
    mlflow.MlflowClient().search_registered_models()
else:
    use_experiment("sweep")
"""


def start_together(folder: Path, steps: str) -> None:
    """Run `steps` ("open": open the store; "experiment": use an experiment of a store opened
    already) in two processes at once on a new store in `folder`; assert both succeed."""
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    folder.mkdir()
    go = folder / "go"
    ready = [folder / f"ready{i}" for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STARTED_TOGETHER, uri, str(flag), str(go), steps],
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


def test_two_commands_set_up_a_new_store_together(tmp_path: Path) -> None:
    # Both found no tables and both ran MLflow's migrations: one ended in a traceback, such as
    # "table latest_metrics already exists" or "duplicate column name: step".
    for attempt in range(2):  # each attempt lost the race without the lock
        start_together(tmp_path / str(attempt), "open")


def test_two_commands_make_the_same_new_experiment_together(tmp_path: Path) -> None:
    # Both found no experiment of the name and both created it: the second ended in MLflow's
    # "Experiment(name=sweep) already exists" traceback.
    for attempt in range(2):
        start_together(tmp_path / str(attempt), "experiment")
