"""One process at a time sets up a new SQLite tracking store.

MLflow creates a SQLite store's tables on first use, in a few dozen migrations, checking first
whether the tables exist: two commands started together on a fresh store (two `train`s of a
sweep, `train` beside `runs`) both found none and both migrated, and one ended in a traceback
("table latest_metrics already exists", "duplicate column name: step"). SQLite's own locks
guard each statement, not the sequence.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator
from pathlib import Path

if sys.platform == "win32":
    import msvcrt
else:
    import fcntl


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
        _lock(handle)
        yield
    finally:
        _unlock(handle)
        os.close(handle)


def _lock(handle: int) -> None:
    """Take the exclusive lock on `handle`, waiting for it. A file system that keeps no locks
    (NFS mounted without its lock service answers ENOLCK, some FUSE ones EOPNOTSUPP) is done
    without, as a lock file that cannot be made is: every command there stopped on an OSError
    traceback before it opened a store that had served it well."""
    with contextlib.suppress(OSError):
        _lock_file(handle)


if sys.platform == "win32":

    def _lock_file(handle: int) -> None:
        """Windows has no flock: lock the file's first byte. msvcrt's waiting lock gives up
        with EDEADLOCK after ten tries a second apart, less than a new store's set-up may
        take on a slow disk, so it is asked again until it holds."""
        while True:
            try:
                msvcrt.locking(handle, msvcrt.LK_LOCK, 1)
                return
            except OSError as exc:
                if exc.errno != errno.EDEADLOCK:
                    raise

    def _unlock(handle: int) -> None:
        """Windows frees a lock left at close only "when resources allow", while waiters
        ask again each second."""
        with contextlib.suppress(OSError):  # not held: no locks on this file system
            msvcrt.locking(handle, msvcrt.LK_UNLCK, 1)

else:

    def _lock_file(handle: int) -> None:
        fcntl.flock(handle, fcntl.LOCK_EX)

    def _unlock(handle: int) -> None:
        """Closing the handle, next, releases the lock."""
