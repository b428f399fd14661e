"""Ray, where closedloop runs work off the session's process: sweeps' cells and a remote learner.

One call, :func:`connect`, starts a local Ray (this machine's cores) or joins an existing cluster
(``auto``, ``HOST:6379`` from inside the cluster, or ``ray://HOST:10001`` through Ray Client from
anywhere), and says in one line what it joined. Everything that runs on Ray goes through it, so the
same code runs on a laptop and on a cluster unchanged.
"""

from __future__ import annotations

import logging
import os
import socket

from closedloop.errors import ClosedLoopError

PROBE_TIMEOUT = 5.0  # s to reach a cluster's port before Ray's own (minutes-long) retries
_joined: list[str | None] = []  # the address this process started or joined Ray with (None: local)


def connect(address: str | None = None, cpus: int | None = None) -> str:
    """Start or join Ray once per process; describe it.

    Parameters
    ----------
    address : str, optional
        None: a local Ray on this machine. Else a running cluster: ``auto``, ``HOST:PORT`` (the
        head's GCS port, 6379 by default) or ``ray://HOST:PORT`` (Ray Client, 10001 by default).
    cpus : int, optional
        A local Ray's CPUs (workers at once); ignored for a cluster. Default: every core.

    Returns
    -------
    str
        E.g. ``Ray 2.60.0, local, 2 CPUs`` or ``Ray 2.60.0 at ray://head:10001, 32 CPUs, 1 GPU``.

    Raises
    ------
    ClosedLoopError
        The cluster at ``address`` cannot be reached (the address named).
    """
    import ray

    if ray.is_initialized():
        return describe(_joined[0] if _joined else address)
    options = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    # Ray 2.60 announces its token authentication on every start: not the user's concern here
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    try:
        if address is None:  # never a cluster found by chance; workers at normal priority (Ray's default,
            # nice 15, starves them on a machine that is busy with anything else)
            ray.init(address="local", num_cpus=cpus, _system_config={"worker_niceness": 0}, **options)
        else:
            _probe(address)
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        hint = "" if address is None or os.environ.get("RAY_AUTH_MODE") == "token" else \
            "; a cluster with token authentication also needs RAY_AUTH_MODE=token and its token"
        raise ClosedLoopError(f"Ray cluster {address}: cannot connect ({str(exc).strip().splitlines()[0]}){hint}") \
            from None
    _joined[:] = [address]
    return describe(address)


def describe(address: str | None = None) -> str:
    """One line: Ray's version, where it runs, its CPUs and GPUs."""
    import ray

    resources = ray.cluster_resources()
    cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
    where = "local" if address is None else f"at {address}"
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    text = f"Ray {ray.__version__}, {where}, {cpus} CPU{'s' * (cpus != 1)}"
    if gpus:
        text += f", {gpus} GPU{'s' * (gpus != 1)}"
    return text + (f", {nodes} nodes" if nodes > 1 else "")


def _probe(address: str) -> None:
    """Fail fast, in one line, when ``HOST:PORT`` or ``ray://HOST:PORT`` accepts no connection."""
    if address == "auto":
        return  # Ray finds the local cluster's address itself, and says so at once when there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ClosedLoopError(f"Ray cluster {address}: not 'auto', HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT).close()
    except OSError as exc:
        raise ClosedLoopError(f"Ray cluster {address}: cannot connect ({exc.strerror or exc})") from None
