"""The dashboard's web server (starlette on uvicorn): it only reads the session directory.

=========================  =====================================================================
``GET /``                  the page (:mod:`closedloop.dashboard.page`), the current snapshot inside
``GET /state``             the snapshot (:func:`closedloop.dashboard.snapshot.snapshot`) as JSON, and
                           ``server``: the snapshot's version and how many ``/events`` clients have it
``GET /events``            server-sent events: ``snapshot`` (its JSON) each time the files change
``GET /image/{i}.png``     pool image ``i``
=========================  =====================================================================

The session's files are looked at every :data:`POLL_EVERY` s, from a worker thread (the event loop
never reads the disk), and each change is pushed to every ``/events`` client. Access rules:
:mod:`closedloop.dashboard.access`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from closedloop.dashboard.access import Guard, check_binding, is_loopback
from closedloop.dashboard.follow import SessionFollower
from closedloop.dashboard.images import PoolImages
from closedloop.dashboard.page import page
from closedloop.dashboard.snapshot import snapshot
from closedloop.errors import ClosedLoopError

POLL_EVERY = 0.25  # s between two looks at the session's files
KEEP_ALIVE = 15.0  # s of silence after which /events sends a comment (proxies close idle streams)
NO_STORE = {"Cache-Control": "no-store"}
SECURITY = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                       "img-src 'self'; connect-src 'self'"}


class Hub:
    """The followed session's latest snapshot, and who has been sent it.

    Parameters
    ----------
    path : Path
        The session directory.
    """

    def __init__(self, path: Path):
        self.follower = SessionFollower(path)
        self.images = PoolImages(path)
        self.version = 0
        self.error: str | None = None
        self.snapshot = {**snapshot(self.follower), "error": None}
        self.sent: dict[int, int] = {}  # /events client -> the version it was last sent
        self._clients = itertools.count()
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        """Read what the session appended; on a change, make the new snapshot and wake the ``/events`` clients."""
        async with self._lock:
            made = await anyio.to_thread.run_sync(self._update)
        if made:
            async with self._changed:
                self._changed.notify_all()

    def _update(self) -> bool:
        """Poll the session (in a worker thread); whether the snapshot changed."""
        try:
            changed, error = self.follower.poll(), None
        except ClosedLoopError as exc:
            changed, error = False, str(exc)
        if not changed and error == self.error:
            return False
        self.error = error
        self.snapshot = {**snapshot(self.follower), "error": error}
        self.version += 1
        return True

    async def follow(self) -> None:
        """Refresh every :data:`POLL_EVERY` s, forever."""
        while True:
            await self.refresh()
            await asyncio.sleep(POLL_EVERY)

    async def stream(self) -> AsyncIterator[str]:
        """One ``/events`` client's stream: the current snapshot, then each new one."""
        client, sent = next(self._clients), -1
        self.sent[client] = sent
        try:
            while True:
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait_for(lambda: self.version != sent), KEEP_ALIVE)
                    except TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                sent = self.version
                yield f"id: {sent}\nevent: snapshot\ndata: {json.dumps(self.snapshot)}\n\n"
                self.sent[client] = sent  # resumed after the event was handed to the server
        finally:
            del self.sent[client]


def make_app(session: Path | str, remote: bool = False, token: str | None = None) -> Guard:
    """The dashboard of ``session`` as an ASGI app.

    Parameters
    ----------
    session : Path
        The session directory (it may appear later).
    remote : bool
        Answer clients on other machines (the server listens beyond loopback).
    token : str, optional
        Required of every request.
    """
    hub = Hub(Path(session))

    async def index(request: Request) -> Response:
        await hub.refresh()
        return HTMLResponse(page(hub.snapshot), headers={**NO_STORE, **SECURITY})

    async def state(request: Request) -> Response:
        await hub.refresh()
        server = {"version": hub.version, "clients": len(hub.sent),
                  "clients_behind": sum(v != hub.version for v in hub.sent.values())}
        return JSONResponse({**hub.snapshot, "server": server}, headers=NO_STORE)

    async def events(request: Request) -> Response:
        return StreamingResponse(hub.stream(), media_type="text/event-stream", headers=NO_STORE)

    async def image(request: Request) -> Response:
        pool_index = request.path_params["pool_index"]
        try:
            png = await anyio.to_thread.run_sync(hub.images.png, pool_index)
        except ClosedLoopError as exc:
            return Response(str(exc), status_code=500, media_type="text/plain")
        if png is None:
            return Response(f"no pool image {pool_index}", status_code=404, media_type="text/plain")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(hub.follow())
        yield
        task.cancel()

    routes = [Route("/", index, methods=["GET"]), Route("/state", state, methods=["GET"]),
              Route("/events", events, methods=["GET"]), Route("/image/{pool_index:int}.png", image, methods=["GET"])]
    return Guard(Starlette(routes=routes, lifespan=lifespan), remote, token)


def bind(host: str, port: int, token: str | None) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: any free port) for the dashboard.

    Raises
    ------
    ClosedLoopError
        ``host`` is not loopback and there is no token, or the address cannot be bound (one line).
    """
    check_binding(host, token)
    try:
        address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(address[0], socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address[4])
        sock.listen(64)
    except OSError as exc:
        raise ClosedLoopError(f"dashboard {host}:{port}: cannot listen ({exc.strerror or exc}); choose another "
                              "--port") from None
    sock.set_inheritable(True)
    return sock


def url(sock: socket.socket, host: str, token: str | None) -> str:
    """The page's address on ``sock`` (with the token when there is one)."""
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def serve(session: Path, sock: socket.socket, host: str, token: str | None, child: bool = False) -> None:
    """Serve the dashboard of ``session`` on ``sock`` (see :func:`bind`) until stopped.

    Parameters
    ----------
    child : bool
        Started by a session: served from a worker thread, where uvicorn installs no signal handlers
        (Ctrl-C stays with the session, SIGTERM ends this process at once); else Ctrl-C stops it.
    """
    config = uvicorn.Config(make_app(session, not is_loopback(host), token), log_level="warning", access_log=False,
                            timeout_graceful_shutdown=1, lifespan="on")
    server = uvicorn.Server(config)
    if not child:
        server.run(sockets=[sock])
        return
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True)
    thread.start()
    thread.join()
