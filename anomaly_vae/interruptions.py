"""Ctrl-C or SIGTERM once a command has registered a model version: finish, then say so.

Stopped between MLflow's calls that register a version, `calibrate --promote` left a version
whose champion alias had not moved, and stopped after them, it exited as interrupted without
naming the version it had registered: the user could not tell what the store now held. From
its point of no return (`hold_interruptions`, as registration begins) to the end of the
command (`interruptions_held_to_the_end`), a command finishes its few remaining steps and
reports them; the signal is acted on after that. A second signal acts at once, for a
tracking server that hangs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class HeldInterruptions:
    """The signal held since the point of no return, if any, and the handlers it replaced."""

    signum: int | None = None
    replaced: dict[int, Any] = field(default_factory=dict)

    def hold(self, signum: int, _frame: object) -> None:
        if self.signum is not None:  # asked twice: stop now, as the replaced handler would
            self.restore()
            signal.raise_signal(signum)
            return
        self.signum = signum

    def restore(self) -> None:
        for signum, handler in self.replaced.items():
            signal.signal(signum, handler)
        self.replaced.clear()


# The command now running, if it defers interruptions at all; only the main thread's.
_command: list[HeldInterruptions] = []


@contextlib.contextmanager
def interruptions_held_to_the_end() -> Iterator[HeldInterruptions]:
    """The span of one command, in which `hold_interruptions` may begin holding SIGINT and
    SIGTERM; they act normally until it does. The caller acts on `signum` afterwards."""
    held = HeldInterruptions()
    _command.append(held)
    try:
        yield held
    finally:
        _command.remove(held)
        held.restore()


def hold_interruptions() -> None:
    """From here to the end of the command, SIGINT and SIGTERM are held, not acted on.

    Outside a command's span (the library called from Python), or off the main thread, where
    no handler can be set, signals act as ever."""
    if not _command or threading.current_thread() is not threading.main_thread():
        return
    held = _command[-1]
    for signum in _SIGNALS:
        # An ignored signal stays ignored: a command started in the background by a script
        # (`cmd &`, where the shell ignores SIGINT for it) is not to be stopped by the Ctrl-C
        # meant for the script.
        if signum not in held.replaced and signal.getsignal(signum) is not signal.SIG_IGN:
            held.replaced[signum] = signal.signal(signum, held.hold)
