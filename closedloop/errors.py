"""The one exception type users see: a one-line message naming what is wrong."""


class ClosedLoopError(Exception):
    """A user-facing error (bad file, missing stream, unknown name).

    The CLI prints ``str(error)`` on one line and exits with status 2; nothing
    already recorded is touched.
    """


def one_line(error: BaseException) -> str:
    """An exception a library raised as ``Type: message`` on one line, at most 160 characters,
    for a :class:`ClosedLoopError` that names the file or stream it came from."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}".rstrip(": ")
    return text if len(text) <= 160 else text[:157] + "..."
