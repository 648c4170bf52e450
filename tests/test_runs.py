"""`anomaly-vae runs`: a run whose process was killed outright is not shown as running."""

from __future__ import annotations

import datetime
import signal
import socket
import subprocess
import sys
import time
import zoneinfo

import mlflow
import pytest
from conftest import REPO, run_cli

from anomaly_vae.tracking import (
    ENDED_TAG,
    HOST_TAG,
    PID_TAG,
    PROCESS_TAG,
    _process_tags,
    _this_machine,
    process_gone,
)

needs_proc = pytest.mark.skipif(_this_machine() is None, reason="needs Linux /proc")

# A command's run, as `train`, `calibrate` and `evaluate` start theirs; it waits to be killed.
CHILD = """
import time
from anomaly_vae.tracking import configure_tracking, tracked_run, use_experiment

configure_tracking()
use_experiment("killed")
with tracked_run("train killed.parquet") as run:
    print(run.info.run_id, flush=True)
    time.sleep(600)
"""


def listed_status(run_id: str) -> str:
    result = run_cli("runs", "--experiment", "killed")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    row = next(r for r in rows if r.startswith(run_id))
    return row.split()[header.split().index("status") + 1]  # the start time is two words


@needs_proc
def test_a_run_whose_process_was_killed_outright_is_listed_and_stored_as_killed(
    tracking_uri: str,
) -> None:
    """kill -9 (or the OOM killer) ran no handler, and the run stayed RUNNING for good."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = child.stdout.readline().strip()
        assert run_id, "the child process started no run"
        assert listed_status(run_id) == "RUNNING"  # alive: left alone
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()

    assert listed_status(run_id) == "KILLED"
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    assert run.info.end_time is None  # when it died is not known
    assert f"process {child.pid} on {socket.gethostname()}" in run.data.tags[ENDED_TAG]


@needs_proc
@pytest.mark.parametrize(
    "change, gone",
    [
        ({}, False),  # this very process
        ({"start": "1"}, True),  # its pid taken by a later process
        ({"pid": "exited"}, True),
        ({HOST_TAG: "elsewhere", "pid": "exited"}, False),  # another machine: never judged
        ({"namespace": "pid:[1]", "pid": "exited"}, False),  # another container of this host
        ({PROCESS_TAG: None, "pid": "exited"}, False),  # recorded no process (an older run)
    ],
)
def test_only_a_process_of_this_machine_that_has_certainly_ended_counts_as_gone(
    change: dict[str, str | None], gone: bool
) -> None:
    tags = _process_tags()
    boot, namespace, start = tags[PROCESS_TAG].split(" ")
    if change.pop("pid", None):
        exited = subprocess.Popen([sys.executable, "-c", "pass"])
        exited.wait()
        tags[PID_TAG] = str(exited.pid)
    namespace = change.pop("namespace", namespace)
    start = change.pop("start", start)
    tags[PROCESS_TAG] = f"{boot} {namespace} {start}"
    tags.update(change)
    assert process_gone({k: v for k, v in tags.items() if v is not None}) is gone


@needs_proc
def test_runs_lists_a_read_only_store_whose_run_lost_its_process(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Marking the run KILLED is a write: on a store that cannot be written (a read-only copy
    or mount, a full disk, a server that grants reading only) `runs` stopped in a traceback."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        run_id = child.stdout.readline().strip()
        assert run_id, "the child process started no run"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    from mlflow.exceptions import MlflowException

    def read_only(*args: object, **kwargs: object) -> None:
        raise MlflowException("(sqlite3.OperationalError) attempt to write a readonly database")

    with monkeypatch.context() as patch:
        patch.setattr(mlflow.MlflowClient, "set_tag", read_only)
        patch.setattr(mlflow.MlflowClient, "update_run", read_only)
        result = run_cli("runs", "--experiment", "killed")
    assert result.exit_code == 0, result.output
    assert run_id in result.stdout
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"  # as stored


def test_runs_lists_start_times_in_the_local_time_zone(tracking_uri, monkeypatch) -> None:
    """MLflow's start times are UTC: `runs` listed them so, unlabelled, in any time zone."""
    client = mlflow.MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("zoned"))
    started = run.info.start_time / 1000
    try:
        with monkeypatch.context() as zone:
            zone.setenv("TZ", "America/New_York")
            time.tzset()
            listed = run_cli("runs", "--experiment", "zoned")
    finally:
        time.tzset()
    assert listed.exit_code == 0, listed.output
    local = datetime.datetime.fromtimestamp(started, zoneinfo.ZoneInfo("America/New_York"))
    assert local.strftime("%Y-%m-%d %H:%M") in listed.stdout
