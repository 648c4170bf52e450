"""Files on disk, whatever they hold: walking a folder for its data files, refusing links that
are broken or reach a file twice, and checking that an output's folder can be written.

Tables (Parquet parts) and images are listed and checked alike, so each finds the same files
a user sees and fails on the same mistakes in the same words.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path

from anomaly_vae.errors import InputError, first_line


def files_below(
    folder: Path,
    suffixes: Collection[str],
    hidden: tuple[str, ...],
    above: frozenset[Path] = frozenset(),
) -> Iterator[Path]:
    """The paths below `folder` with one of `suffixes`, but none under a name that starts with
    one of `hidden`: copies such as .ipynb_checkpoints/ are not data.

    Linked folders are followed, as linked files always were. A link back to a folder `above`
    (real paths of the folders walked down through) is not: its files are listed already, and
    following it would never end.
    """
    real = folder.resolve()
    if real in above:
        return
    try:
        entries = list(folder.iterdir())
    except OSError as exc:  # rglob skipped a folder it could not read, and its files with it
        raise InputError(f"{folder}: cannot read folder ({first_line(exc)})") from None
    for path in entries:
        if path.name.startswith(hidden):
            continue
        if path.is_dir():
            yield from files_below(path, suffixes, hidden, above | {real})
        elif path.suffix.lower() in suffixes:
            yield path


def refuse_broken_links(paths: Iterable[Path], kind: str) -> None:
    """One line for a listed link whose file is gone: an is_file() filter dropped it without a
    word, and the data it named with it."""
    if broken := next((p for p in paths if p.is_symlink() and not p.exists()), None):
        raise InputError(f"{broken}: unreadable {kind} (a broken link to {broken.readlink()})")


def real_paths(paths: Iterable[Path]) -> dict[Path, Path]:
    """Each path's real path, as `Path.resolve` gives it, each folder resolved once: a path
    that is no link itself is its folder's real path and its name. Resolved one by one, every
    file looked up each folder above it again, and listing 5,000 Parquet parts took 2.5 times
    as long as before links were followed."""
    folders: dict[str, str] = {}  # in text: pathlib's own joins and hashes cost as much
    real = {}
    for path in paths:
        if path.is_symlink():
            real[path] = path.resolve()
            continue
        folder, name = os.path.split(path)
        if folder not in folders:
            folders[folder] = os.path.realpath(folder)
        real[path] = Path(folders[folder], name)
    return real


def refuse_repeated_files(paths: Iterable[Path], real: Mapping[Path, Path], what: str) -> None:
    """One line for a file reached by two paths (`real`: each path resolved): a link to a
    folder (or file) that is listed already, whose data would be read and counted twice."""
    first: dict[Path, Path] = {}
    for path in paths:
        seen = first.setdefault(real[path], path)
        if seen != path:
            raise InputError(
                f"{path}: the same file as {seen} (a link reaches it twice); {what} is read "
                "once: remove the link"
            )


def check_output_folder(path: Path) -> None:
    """Refuse an output whose folder is missing or cannot be written, before any work is done:
    the temporary file beside it failed with a traceback (PermissionError) once the model had
    loaded, or, for a report, once the evaluation had run."""
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder '{path.parent}' does not exist")
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise InputError(
            f"{path}: cannot write in folder '{path.parent}' ({exc.strerror})"
        ) from None
