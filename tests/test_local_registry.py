"""The registry lookup without MLflow: the same model as MLflow's, or no answer at all."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from anomaly_vae.errors import InputError
from anomaly_vae.local_registry import sqlite_file, stored_model_folder
from anomaly_vae.tracking import _download_model


def _db(tracking: str) -> Path:
    db = sqlite_file(tracking)
    assert db is not None
    return db


def _downloaded_by_mlflow(model_uri: str, tracking: str, root: Path) -> Path:
    root.mkdir(exist_ok=True)
    return Path(_download_model(model_uri, tracking, str(root)))


def _detector_json(model_folder: Path) -> bytes:
    return (model_folder / "artifacts" / "detector" / "detector.json").read_bytes()


@pytest.mark.parametrize("form", ["alias", "version", "alias with a slash"])
def test_finds_the_version_mlflow_finds(form, private_registry, tmp_path) -> None:
    model_uri, tracking = private_registry
    name = model_uri.removeprefix("models:/").split("@")[0]
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    # A second version in a folder of its own, so that each URI must pick one of two.
    first = client.get_model_version_by_alias(name, "champion")
    first_folder = _folder(client.get_model_version_download_uri(name, first.version))
    second_folder = Path(shutil.copytree(first_folder, tmp_path / "second"))
    second = client.create_model_version(name, second_folder.as_uri(), first.run_id)
    client.set_registered_model_alias(name, "challenger", second.version)
    uri, expected = {
        "alias": (f"models:/{name}@challenger", second_folder),
        "version": (f"models:/{name}/{first.version}", first_folder),
        "alias with a slash": (f"models:/{name}@champion/", first_folder),
    }[form]
    found = stored_model_folder(uri, tracking)
    assert found == expected
    downloaded = _downloaded_by_mlflow(uri, tracking, tmp_path / "downloaded")
    assert _detector_json(found) == _detector_json(downloaded)


def _folder(file_uri: str) -> Path:
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(file_uri).path))


def test_leaves_what_it_cannot_answer_exactly_to_mlflow(
    private_registry, tmp_path, monkeypatch
) -> None:
    model_uri, tracking = private_registry
    name = model_uri.removeprefix("models:/").split("@")[0]
    for uri in (
        f"models:/{name}/latest",  # MLflow's highest version, not a stored alias
        f"models:/{name}@latest",
        f"models:/{name}/Production",  # a stage
        f"models:/{name}@no-such-alias",
        f"models:/{name}/99",
        f"models:/{name}/99999999999999999999",  # more than SQLite's integers hold
        "models:/no-such-model@champion",
        f"models:/{name}?x@champion",  # a query to MLflow's URI parser
        f"models:/{name}\t/1",  # a tab, which urllib drops
        f"models:/{name}:x/1",  # a name MLflow's checks refuse
        f"models:/{name}@two words",  # an alias MLflow's checks refuse
        "runs:/0123456789abcdef/model",
        str(tmp_path),  # a folder
    ):
        assert stored_model_folder(uri, tracking) is None, uri
    assert stored_model_folder(model_uri, "http://127.0.0.1:5000") is None
    assert stored_model_folder(model_uri, f"sqlite:///{tmp_path / 'absent.db'}") is None
    text = tmp_path / "notes.db"
    text.write_text("not a database\n")
    assert stored_model_folder(model_uri, f"sqlite:///{text}") is None
    # SQLAlchemy decodes escapes in the path, and `:memory:` is no file even where one is.
    escaped = tmp_path / "p%41"
    escaped.mkdir()
    shutil.copy(_db(tracking), escaped / "mlflow.db")
    assert stored_model_folder(model_uri, f"sqlite:///{escaped / 'mlflow.db'}") is None
    monkeypatch.chdir(tmp_path)
    shutil.copy(_db(tracking), tmp_path / ":memory:")
    assert stored_model_folder(model_uri, "sqlite:///:memory:") is None
    assert stored_model_folder(model_uri, tracking) is not None
    monkeypatch.setenv("MLFLOW_WORKSPACE", "team")  # MLflow's workspaces: not read here
    assert stored_model_folder(model_uri, tracking) is None


def test_a_store_of_another_schema_or_in_wal_mode_is_left_to_mlflow(private_registry) -> None:
    """MLflow opens only a store of its own schema revision ("mlflow db upgrade"); a store in
    WAL mode would get -shm and -wal files from a read, which its writer may not own."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    from anomaly_vae.local_registry import _schema_head

    assert _schema_head() == _get_latest_schema_revision()
    model_uri, tracking = private_registry
    db = _db(tracking)
    with sqlite3.connect(db) as connection:
        (revision,) = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        connection.execute("UPDATE alembic_version SET version_num = 'older'")
    assert stored_model_folder(model_uri, tracking) is None
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    assert stored_model_folder(model_uri, tracking) is not None
    connection = sqlite3.connect(db)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    assert stored_model_folder(model_uri, tracking) is None
    assert sorted(p.name for p in db.parent.iterdir() if p.name.startswith(db.name)) == [db.name]


def test_a_store_with_models_in_other_workspaces_is_left_to_mlflow(private_registry) -> None:
    """MLflow refuses to open such a store while workspaces are off; the lookup must not
    score from it either."""
    model_uri, tracking = private_registry
    assert stored_model_folder(model_uri, tracking) is not None
    with sqlite3.connect(_db(tracking)) as db:
        db.execute(
            "INSERT INTO registered_models (name, creation_time, last_updated_time, workspace) "
            "VALUES ('theirs', 0, 0, 'team')"
        )
    assert stored_model_folder(model_uri, tracking) is None


def test_a_deleted_version_is_not_found(private_registry, tmp_path) -> None:
    model_uri, tracking = private_registry
    name = model_uri.removeprefix("models:/").split("@")[0]
    client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    version = client.get_model_version_by_alias(name, "champion").version
    assert stored_model_folder(f"models:/{name}/{version}", tracking) is not None
    client.delete_model_version(name, version)
    assert stored_model_folder(f"models:/{name}/{version}", tracking) is None
    with pytest.raises(InputError, match="not found"):
        _downloaded_by_mlflow(f"models:/{name}/{version}", tracking, tmp_path)


def test_files_kept_elsewhere_than_this_disk_are_left_to_mlflow(private_registry) -> None:
    model_uri, tracking = private_registry
    with sqlite3.connect(_db(tracking)) as db:
        db.execute("UPDATE model_versions SET storage_location = 's3://bucket/models/m-1'")
    assert stored_model_folder(model_uri, tracking) is None


def test_scoring_with_a_registered_model_needs_no_mlflow(
    private_registry, breast_cancer_files, tmp_path
) -> None:
    """What the lookup is for: `score` of a small file pays torch's import, not MLflow's. An
    `mlflow` that cannot be imported stands in for it, in this process and any it starts."""
    model_uri, tracking = private_registry
    _, test = breast_cancer_files
    blocked = tmp_path / "blocked" / "mlflow"
    migrations = Path("store", "db_migrations", "versions")  # read, not imported, by the lookup
    (blocked / migrations).parent.mkdir(parents=True)
    (blocked / migrations).symlink_to(Path(mlflow.__file__).parent / migrations)
    (blocked / "__init__.py").write_text("raise ImportError('mlflow was imported')\n")
    out = tmp_path / "scored.parquet"
    done = subprocess.run(
        [sys.executable, "-c", "from pipelines.cli import main; main()", "score", model_uri,
         str(test), "-o", str(out), "--tracking-uri", tracking, "--allow-extra-columns"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(blocked.parent)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert len(pd.read_parquet(out)) == len(pd.read_parquet(test))
