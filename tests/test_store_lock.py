"""Opening a SQLite store: the lock around it never stops a command that could open it, and a
store that keeps nothing past the command is refused."""

from __future__ import annotations

import errno
from pathlib import Path

import mlflow
import pytest
from conftest import run_cli

from anomaly_vae import store_lock
from anomaly_vae.tracking import configure_tracking


def test_a_store_on_a_file_system_without_locks_opens_unlocked(
    tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NFS mounted without its lock service refuses flock with ENOLCK: every command on a store
    # there ended in an OSError traceback, where it had opened the store before the lock.
    def no_locks(handle: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(store_lock, "_lock_file", no_locks)
    assert configure_tracking(tracking_uri) == tracking_uri
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    assert [e.name for e in client.search_experiments()] == ["Default"]


@pytest.mark.parametrize("uri", ["sqlite:///:memory:", "sqlite://"])
def test_an_in_memory_store_is_refused_before_anything_is_written(
    uri: str,
    breast_cancer_files: tuple[Path, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # train registered its model in a store gone when the command exited, printed the model's
    # URI all the same, and left artifacts/ and a ':memory:.lock' file in the working folder.
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.yaml"
    config.write_text(f"data:\n  path: {breast_cancer_files[0]}\ntraining:\n  epochs: 1\n")
    result = run_cli("train", config, "--tracking-uri", uri)
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {uri}: an in-memory store keeps no run or model once the command ends; "
        "give a file, such as sqlite:///mlruns/mlflow.db\n"
    )
    assert result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_store_uri_with_sqlite_options_reads_the_store_file(tracking_uri: str) -> None:
    # SQLAlchemy reads '.../mlflow.db?timeout=20' as the file mlflow.db with an option, but the
    # store was looked for at a file named 'mlflow.db?timeout=20': runs said there was none.
    client = mlflow.MlflowClient(tracking_uri)
    run = client.create_run(client.create_experiment("present"))
    client.set_terminated(run.info.run_id)
    result = run_cli("runs", "--tracking-uri", f"{tracking_uri}?timeout=20")
    assert result.exit_code == 0, result.output
    assert run.info.run_id in result.stdout


def test_the_windows_lock_asks_again_until_it_holds_and_unlocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The win32 branch, loaded here beside a stand-in for msvcrt: its waiting lock gives up
    with EDEADLOCK after ten one-second tries, which must not end the wait; any other error
    is the file system's (no locks there), and the lock is released before the close."""
    import importlib.util
    import sys
    import types

    calls: list[tuple[int, int]] = []
    refusals = [errno.EDEADLOCK, errno.EDEADLOCK]

    def locking(handle: int, mode: int, size: int) -> None:
        calls.append((mode, size))
        if mode == fake.LK_LOCK and refusals:
            raise OSError(refusals.pop(0), "Resource deadlock avoided")

    fake = types.ModuleType("msvcrt")
    fake.LK_LOCK, fake.LK_UNLCK, fake.locking = 1, 0, locking
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    monkeypatch.setattr(sys, "platform", "win32")
    spec = importlib.util.spec_from_file_location("store_lock_win32", store_lock.__file__)
    windows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(windows)

    with windows.store_lock(tmp_path / "mlflow.db"):
        assert calls == [(1, 1)] * 3  # asked again after each EDEADLOCK
    assert calls[-1] == (0, 1)  # unlocked before the close
    calls.clear()
    refusals[:] = [errno.ENOLCK]  # a file system without locks: done without
    with windows.store_lock(tmp_path / "mlflow.db"):
        assert calls == [(1, 1)]
