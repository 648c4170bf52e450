"""Whether progress bars go to a person: every bar of training and scoring asks the same."""

from __future__ import annotations

import sys


def stderr_is_terminal() -> bool:
    """A bar only on a terminal: in a log file or CI output its redrawn lines are garbage.
    With no stderr at all (pythonw, a service, `2>&-`) there is none to draw on, where
    `sys.stderr.isatty()` raised an AttributeError."""
    return sys.stderr is not None and sys.stderr.isatty()
