"""One process at a time sets up a new SQLite tracking store.

MLflow creates a SQLite store's tables on first use, in a few dozen migrations, checking first
whether the tables exist: two commands started together on a fresh store (two `train`s of a
sweep, `train` beside `runs`) both found none and both migrated, and one ended in a traceback
("table latest_metrics already exists", "duplicate column name: step"). SQLite's own locks
guard each statement, not the sequence.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def store_lock(db: Path) -> Iterator[None]:
    """Hold an exclusive lock on `<db>.lock` (made if missing) while MLflow opens the store.

    Every command opens the store under it, so a second one waits for the first to finish the
    tables, then finds them all there. It is held for as long as an open takes (milliseconds
    on a store set up already), and the kernel releases it when the holder exits, however it
    exits. A lock file that cannot be made (a read-only folder) is done without: no process
    can make the store's tables there either.
    """
    try:
        handle = os.open(f"{db}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock
