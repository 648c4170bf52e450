"""What reaches the person at the terminal: every progress bar of training and scoring asks
whether there is one, and the log records of other libraries are quieted for a span only."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def stderr_is_terminal() -> bool:
    """A bar only on a terminal: in a log file or CI output its redrawn lines are garbage.
    With no stderr at all (pythonw, a service, `2>&-`) there is none to draw on, where
    `sys.stderr.isatty()` raised an AttributeError."""
    return sys.stderr is not None and sys.stderr.isatty()


@contextmanager
def loggers_at(level: int, *names: str) -> Iterator[None]:
    """The loggers `names` at `level` for the span, then at the levels they had: a library
    caller's own logging is theirs once our call returns."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, before in zip(loggers, levels, strict=True):
            logger.setLevel(before)
