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
