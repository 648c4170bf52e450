"""The one exception type for mistakes a user can fix.

Everything that goes wrong because of the input (a file, a column, a config key, a model URI)
raises `InputError` with a message that names the culprit in one line. The CLI prints that
line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class InputError(ValueError):
    """A problem with user-supplied input, explained in one line."""
