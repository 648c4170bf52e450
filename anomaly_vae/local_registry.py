"""A registered model's folder in the local SQLite store, found without importing MLflow.

Scoring a file with `models:/<name>@<alias>` spent most of its start-up in MLflow: its import
and its SQLAlchemy store's (models, mappers, migrations) took 3.5 s on one core of the 2-core
machine, twice torch's import, to read two rows of a local database. The embedded store keeps
the files of each version on local disk, so a version or alias is found here with the standard
library's `sqlite3`, read-only, and the files are read where they are.

This answers only what it can answer exactly as MLflow's registry would: a version number or
an alias of a version not deleted, in a SQLite store, kept under a `file:` location that
holds the model. Anything else (`latest`, stages, `runs:/`, a server, a store in use or of an
unknown layout, a model not found) returns None, and MLflow resolves it, with its own errors.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path

# What MLflow's registry writes into `current_stage` for a deleted version, which it keeps.
_DELETED = "Deleted_Internal"
_BY_ALIAS = re.compile(r"^models:/([^/@]+)@([^/@]+)/?$")
_BY_VERSION = re.compile(r"^models:/([^/@]+)/([1-9][0-9]*)/?$")
# MLflow's own meaning for this alias: the highest version, not a stored alias.
_LATEST = "latest"
# SQLite's wait for a writer (`train` registering a version) before the lookup gives way.
_BUSY_SECONDS = 2.0


def stored_model_folder(model_uri: str, sqlite_db: Path | None) -> Path | None:
    """The folder of the version `model_uri` names in the SQLite store at `sqlite_db` (its
    MLmodel file and artifacts), or None where MLflow must resolve it."""
    parsed = _name_and_version_or_alias(model_uri)
    if parsed is None or sqlite_db is None or not sqlite_db.is_file():
        return None
    name, version, alias = parsed
    try:
        with contextlib.closing(_read_only(sqlite_db)) as db:
            if alias is not None:
                version = _one(db, _ALIAS_QUERY, (name, alias))
                if version is None:
                    return None
            location = _one(db, _VERSION_QUERY, (name, int(version), _DELETED))
    except sqlite3.Error:  # locked, not a store, another layout: MLflow says what it is
        return None
    return _local_folder(location) if isinstance(location, str) else None


def _name_and_version_or_alias(model_uri: str) -> tuple[str, str | None, str | None] | None:
    if (match := _BY_VERSION.match(model_uri)) is not None:
        return match.group(1), match.group(2), None
    if (match := _BY_ALIAS.match(model_uri)) is not None and match.group(2).lower() != _LATEST:
        return match.group(1), None, match.group(2)
    return None


_ALIAS_QUERY = "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?"
# MLflow downloads from `storage_location`, else `source`; `source` alone is a logged model's
# `models:/m-...` URI in MLflow 3, which `_local_folder` leaves to MLflow.
_VERSION_QUERY = (
    "SELECT COALESCE(storage_location, source) FROM model_versions "
    "WHERE name = ? AND version = ? AND current_stage != ?"
)


def _read_only(path: Path) -> sqlite3.Connection:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, timeout=_BUSY_SECONDS)


def _one(db: sqlite3.Connection, query: str, parameters: tuple[object, ...]) -> object | None:
    """The single value the query finds; None for none or several (workspaces MLflow would
    tell apart), which MLflow then resolves."""
    rows = db.execute(query, parameters).fetchall()
    return rows[0][0] if len(rows) == 1 else None


def _local_folder(location: str) -> Path | None:
    """The folder of a `file:` location holding an MLflow model; None for any other."""
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme != "file" or parsed.netloc not in ("", "localhost"):
        return None
    folder = Path(urllib.request.url2pathname(parsed.path))
    return folder if (folder / "MLmodel").is_file() else None
