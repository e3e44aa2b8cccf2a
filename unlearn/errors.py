"""The one exception type the command line turns into a single clear line."""


class UnlearnError(Exception):
    """A problem the user can fix: the message names it and says how.

    Raised anywhere in the package; `python -m unlearn` prints `error: <message>` and exits non-zero,
    without a traceback.
    """
