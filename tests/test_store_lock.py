"""The lock around opening a SQLite store never stops a command that could open it."""

from __future__ import annotations

import errno
import fcntl

import mlflow
import pytest

from anomaly_vae.tracking import configure_tracking


def test_a_store_on_a_file_system_without_locks_opens_unlocked(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS mounted without its lock service refuses flock with ENOLCK: every command on a store
    # there ended in an OSError traceback, where it had opened the store before the lock.
    def no_locks(handle: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert configure_tracking(tracking_uri) == tracking_uri
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]
