"""The one exception type the command line turns into a single clear line, and the exit status it gets."""

EXIT_BAD_INPUT = 2  # bad input: one line on stderr, no traceback


class UnlearnError(Exception):
    """A problem the user can fix: the message names it and says how.

    Raised anywhere in the package; `python -m unlearn` prints `error: <message>` and exits non-zero,
    without a traceback.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library errors often run to a page), or its type's name."""
    return one_line(exc, lines=1)


def one_line(exc: BaseException, lines: int | None = None) -> str:
    """An exception's message on one line: its non-empty lines (the first `lines` of them) joined by spaces, for
    errors that spread what, where and why over several lines (YAML's); or its type's name."""
    text = " ".join([line.strip() for line in str(exc).splitlines() if line.strip()][:lines])
    return text or type(exc).__name__
