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
