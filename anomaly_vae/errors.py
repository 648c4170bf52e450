"""The one exception type for mistakes a user can fix.

Everything that goes wrong because of the input (a file, a column, a config key, a model URI)
raises `InputError` with a message that names the culprit in one line. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """A problem with user-supplied input, explained in one line."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for wrapping library errors in one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM stopped a command; the message says what it left (a run ended KILLED).

    A BaseException, as KeyboardInterrupt and SystemExit are: an `except Exception` between
    the stop and the command line must not take it for a failure.
    """

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
