"""The one exception type users see: a one-line message naming what is wrong."""


class ClosedLoopError(Exception):
    """A user-facing error (bad file, missing stream, unknown name).

    The CLI prints ``str(error)`` on one line and exits with status 2; nothing
    already recorded is touched.
    """
