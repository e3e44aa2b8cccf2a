"""The one exception type the command line turns into a single clear line, and the exit status it gets."""

EXIT_BAD_INPUT = 2  # bad input: one line on stderr, no traceback


class UnlearnError(Exception):
    """A problem the user can fix: the message names it and says how.

    Raised anywhere in the package; `python -m unlearn` prints `error: <message>` and exits non-zero,
    without a traceback.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors often run to a page), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
