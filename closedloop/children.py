"""Child processes that die with their parent and leave Ctrl-C to it.

A session starts two children (the simulator and the model worker). Neither may outlive the
session, even when it is killed with SIGKILL, and neither may answer a Ctrl-C sent to the
process group: the session stops them itself, in order.

* :func:`die_with_parent` (in the child): on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the
  kernel kills the child the moment its parent dies; ``getppid`` is checked just after, which
  closes the race with a parent that died before the call. Everywhere, a thread polls
  ``getppid`` every :data:`WATCH_EVERY` s as the portable fallback.
* :func:`sigint_shielded` (in the parent, around starting a child): the child is born ignoring
  SIGINT; :func:`ignore_sigint` (in the child) makes sure of it.

The parent death signal follows the *thread* that started the child: start children from the
thread that outlives them (the session's).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_EVERY = 0.5  # s between two looks at the parent (the fallback)
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None


def set_death_signal(parent: int) -> None:
    """Have the kernel kill this process (SIGKILL) when ``parent`` dies (Linux; elsewhere a no-op).

    Safe in ``subprocess.Popen(preexec_fn=...)``. If ``parent`` is already gone (this process was
    reparented before the call), exit at once.
    """
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def watch_parent(parent: int, on_orphan: Callable[[], None]) -> None:
    """Call ``on_orphan`` (once, from a daemon thread) when this process's parent is no longer ``parent``."""
    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(WATCH_EVERY)
        on_orphan()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def die_with_parent(parent: int, on_orphan: Callable[[], None] = lambda: os._exit(1)) -> None:
    """In a child: end with ``parent`` (pid): the kernel's death signal, and the polling fallback
    that calls ``on_orphan`` (default: exit at once) within :data:`WATCH_EVERY` s."""
    set_death_signal(parent)
    watch_parent(parent, on_orphan)


@contextlib.contextmanager
def sigint_shielded() -> Iterator[None]:
    """Children started inside ignore SIGINT (an ignored signal stays ignored across ``exec``, and
    Python then installs no KeyboardInterrupt handler): a Ctrl-C reaches only the parent.

    SIGINT is ignored here meanwhile; only the main thread may change that, so elsewhere the
    children must call :func:`ignore_sigint` themselves.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def ignore_sigint() -> None:
    """In a child of a session: leave Ctrl-C to the parent, which stops this process in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
