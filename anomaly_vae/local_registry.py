"""A registered model's folder in the local SQLite store, found without importing MLflow.

Scoring a file with `models:/<name>@<alias>` spent most of its start-up in MLflow: its import
and its SQLAlchemy store's (models, mappers, migrations) took 3.5 s on one core of the 2-core
machine, twice torch's import, to read two rows of a local database. The embedded store keeps
the files of each version on local disk, so a version or alias is found here with the standard
library's `sqlite3`, read-only, and the files are read where they are.

This answers only what it can answer exactly as MLflow's registry would: a version number or
an alias of a version not deleted, in a SQLite store, kept under a `file:` location that
holds the model, of the schema revision the installed MLflow writes. Anything else (`latest`,
stages, `runs:/`, a server, a store being written, in WAL mode or of another revision, a model
not found) returns None, and MLflow resolves it, with its own errors.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import sqlite3
import urllib.parse
from pathlib import Path

# What MLflow's registry writes into `current_stage` for a deleted version, which it keeps.
_DELETED = "Deleted_Internal"
# The registry's own workspace while MLflow's workspaces are off, as they are unless enabled.
_DEFAULT_WORKSPACE = "default"
_WORKSPACE_VARIABLES = ("MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE")
# Names without the characters a URI parser reads otherwise than as text (`?` a query, `#` a
# fragment, `%` an escape; urllib drops tabs and line ends) or MLflow's checks refuse (`:`, a
# leading `.`), aliases as MLflow allows them, and version numbers that SQLite's integers
# hold: anything else is MLflow's to read.
_NAME = r"[^/@?#%:.\x00-\x1f\x7f][^/@?#%:\x00-\x1f\x7f]*"
_ALIAS = r"[\w-]{1,255}"
_BY_ALIAS = re.compile(rf"models:/({_NAME})@({_ALIAS})/?\Z")
_BY_VERSION = re.compile(rf"models:/({_NAME})/([1-9][0-9]{{0,17}})/?\Z")
# MLflow's own meaning for this alias: the highest version, not a stored alias.
_LATEST = "latest"
# SQLite's wait for a writer (`train` registering a version) before the lookup gives way.
_BUSY_SECONDS = 2.0


def sqlite_file(uri: str) -> Path | None:
    """The store's file; SQLAlchemy takes what follows a '?' for its options ('?timeout=20')."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?", 1)[0])


def stored_model_folder(model_uri: str, tracking_uri: str) -> Path | None:
    """The folder of the version `model_uri` names in the store at `tracking_uri` (its MLmodel
    file and artifacts), or None where MLflow must resolve it."""
    parsed = _name_and_version_or_alias(model_uri)
    if parsed is None or any(os.environ.get(v) for v in _WORKSPACE_VARIABLES):
        return None
    db = _plain_sqlite_file(tracking_uri)  # reads the store's header: not for a folder's URI
    if db is None:
        return None
    name, version, alias = parsed
    head = _schema_head()
    try:
        with contextlib.closing(_read_only(db)) as connection:
            # MLflow opens a store of its own schema only ("mlflow db upgrade"), and refuses one
            # with models in other workspaces while workspaces are off.
            if (
                head is None
                or _one(connection, _SCHEMA_QUERY, ()) != head
                or connection.execute(_OTHER_WORKSPACES).fetchone()[0]
            ):
                return None
            if alias is not None:
                version = _one(connection, _ALIAS_QUERY, (name, alias))
                if version is None:
                    return None
            location = _one(connection, _VERSION_QUERY, (name, int(version), _DELETED))
    except sqlite3.Error:  # locked, not a store, an older layout: MLflow says what it is
        return None
    return local_model_folder(location) if isinstance(location, str) else None


def _plain_sqlite_file(tracking_uri: str) -> Path | None:
    """The SQLite file of a URI whose path SQLAlchemy reads as written: it decodes `%`
    escapes, and `:memory:` is no file (`configure_tracking` refuses it). Not one in WAL
    mode, where even a read-only connection leaves files beside it (`-shm`, `-wal`) that
    the store's writer may then be unable to write."""
    db = sqlite_file(tracking_uri)
    if db is None or "%" in tracking_uri or db.name == ":memory:" or not db.is_file():
        return None
    try:
        with db.open("rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except OSError:
        return None
    if not header.startswith(SQLITE_HEADER) or _WAL in header[_VERSIONS]:
        return None
    return db


# sqlite.org/fileformat.html: the magic string, then at bytes 18 and 19 the write and read
# versions, 2 for a database in WAL mode.
SQLITE_HEADER = b"SQLite format 3\x00"
_HEADER_BYTES = 20
_VERSIONS = slice(18, 20)
_WAL = 2


@functools.cache
def _schema_head() -> str | None:
    """The schema revision this MLflow's stores have, read from its migration scripts (the
    revision no other one follows) without importing MLflow; None where they cannot tell."""
    spec = importlib.util.find_spec("mlflow")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    scripts = Path(next(iter(spec.submodule_search_locations)), *_MIGRATIONS).glob("*.py")
    revisions: set[str] = set()
    followed: set[str] = set()
    for script in scripts:
        text = script.read_text(encoding="utf-8")
        revisions.update(_REVISION.findall(text))
        for earlier in _DOWN_REVISION.findall(text):
            followed.update(re.findall(r"\w+", earlier.replace("None", "")))
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else None


_MIGRATIONS = ("store", "db_migrations", "versions")
_REVISION = re.compile(r"^revision\s*(?::\s*str\s*)?=\s*[\"'](\w+)[\"']", re.MULTILINE)
_DOWN_REVISION = re.compile(r"^down_revision\s*(?::[^=]*)?=\s*(.+)$", re.MULTILINE)


def _name_and_version_or_alias(model_uri: str) -> tuple[str, str | None, str | None] | None:
    if (match := _BY_VERSION.match(model_uri)) is not None:
        return match.group(1), match.group(2), None
    if (match := _BY_ALIAS.match(model_uri)) is not None and match.group(2).lower() != _LATEST:
        return match.group(1), None, match.group(2)
    return None


_SCHEMA_QUERY = "SELECT version_num FROM alembic_version"
# Every query reads the default workspace only.
_OTHER_WORKSPACES = (
    f"SELECT EXISTS (SELECT 1 FROM registered_models WHERE workspace != '{_DEFAULT_WORKSPACE}')"
)
_ALIAS_QUERY = (
    "SELECT version FROM registered_model_aliases "
    f"WHERE name = ? AND alias = ? AND workspace = '{_DEFAULT_WORKSPACE}'"
)
# MLflow downloads from `storage_location`, else `source`; `source` alone is a logged model's
# `models:/m-...` URI in MLflow 3, which `local_model_folder` leaves to MLflow.
_VERSION_QUERY = (
    "SELECT COALESCE(storage_location, source) FROM model_versions "
    f"WHERE name = ? AND version = ? AND current_stage != ? AND workspace = '{_DEFAULT_WORKSPACE}'"
)


def _read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=_BUSY_SECONDS)


def _one(
    connection: sqlite3.Connection, query: str, parameters: tuple[object, ...]
) -> object | None:
    """The single value the query finds; None for none or several, which MLflow resolves."""
    rows = connection.execute(query, parameters).fetchall()
    return rows[0][0] if len(rows) == 1 else None


def local_model_folder(location: str) -> Path | None:
    """The folder of a `file:` location on this machine (no host) holding an MLflow model;
    None for any other."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme != "file" or parsed.netloc:
        return None
    from urllib.request import url2pathname  # 40 ms to import, for a model found here only

    folder = Path(url2pathname(parsed.path))
    return folder if (folder / "MLmodel").is_file() else None
