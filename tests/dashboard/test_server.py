"""The dashboard's server: snapshots, pushes, images, and who may see them."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest
from PIL import Image

from closedloop.dashboard.server import bind, make_app
from closedloop.errors import ClosedLoopError
from tests.dashboard.conftest import TOTAL


def files(path) -> dict:
    """Every file of a session directory with its size and modification time."""
    return {f: (f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.rglob("*"))}


def events(response: httpx.Response):
    """The snapshots an ``/events`` stream pushes, as they come."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def test_state_and_pushes_as_lines_are_appended(live_session, serve):
    live_session.present(4)
    served = serve(live_session.path)
    with httpx.Client(base_url=served.url, timeout=20) as client:
        state = client.get("/state").json()
        assert state["progress"]["presented"] == 4 and state["status"] == "running"
        with client.stream("GET", "/events") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            pushed = events(response)
            assert next(pushed)["progress"]["presented"] == 4  # what it has now
            live_session.present(3)
            assert next(pushed)["progress"]["presented"] == 7  # pushed, not asked for
            live_session.present(TOTAL - 7)
            live_session.finish()
            while not (latest := next(pushed))["complete"]:
                pass
            assert latest["progress"]["presented"] == TOTAL and latest["status"] == "complete"
            state = client.get("/state").json()
            assert state["server"] == {"version": state["server"]["version"], "clients": 1, "clients_behind": 0}
        page = client.get("/")
        assert page.status_code == 200 and 'id="presented"' in page.text and '"presented": 12' in page.text
        assert "http" not in page.text.split("<script>")[1]  # nothing fetched from elsewhere


def test_image_is_the_pool_image(live_session, serve):
    served = serve(live_session.path)
    with httpx.Client(base_url=served.url, timeout=20) as client:
        answer = client.get("/image/3.png")
        assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(answer.content))), live_session.pool.images[3])
        assert client.get(f"/image/{len(live_session.pool)}.png").status_code == 404


def test_reads_only(live_session, serve):
    """Nothing but GET is answered, and answering writes nothing."""
    live_session.present(TOTAL)
    live_session.finish()
    before = files(live_session.path)
    served = serve(live_session.path)
    with httpx.Client(base_url=served.url, timeout=20) as client:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            for path in ("/", "/state", "/events", "/image/1.png"):
                assert client.request(method, path).status_code == 405, (method, path)
        assert client.get("/state").status_code == 200 and client.get("/image/1.png").status_code == 200
    assert files(live_session.path) == before


def test_token_required_when_given(small_session, serve):
    served = serve(small_session, token="s3cret")
    with httpx.Client(base_url=served.url, timeout=20) as client:
        for path in ("/", "/state", "/events", "/image/1.png"):
            assert client.get(path).status_code == 403, path
            assert client.get(path, params={"token": "wrong"}).status_code == 403, path
        assert client.get("/state", params={"token": "s3cret"}).json()["complete"]
        assert client.get("/state", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/image/1.png", params={"token": "s3cret"}).status_code == 200


def asgi_status(app, client: tuple[str, int], host: str = "127.0.0.1:8765", query: bytes = b"") -> int:
    """The status ``app`` answers to ``GET /state`` from the address ``client`` for the Host ``host``."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": "/state", "raw_path": b"/state", "root_path": "", "query_string": query,
             "headers": [(b"host", host.encode())], "client": client, "server": ("127.0.0.1", 8765)}
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_other_machines_refused_unless_listening_for_them(small_session):
    local = make_app(small_session)
    assert asgi_status(local, ("127.0.0.1", 50000)) == 200
    assert asgi_status(local, ("10.0.0.5", 1234)) == 403  # got through somehow: still refused
    assert asgi_status(local, ("127.0.0.1", 50000), host="attacker.example") == 403  # a rebound name
    remote = make_app(small_session, remote=True, token="t")
    assert asgi_status(remote, ("10.0.0.5", 1234)) == 403
    assert asgi_status(remote, ("10.0.0.5", 1234), host="rig.lab:8765", query=b"token=t") == 200


def test_remote_host_needs_a_token(small_session):
    with pytest.raises(ClosedLoopError, match="--host 0.0.0.0: listening beyond this machine needs --token"):
        bind("0.0.0.0", 0, None)
    result = subprocess.run([sys.executable, "-m", "closedloop", "watch", str(small_session), "--host", "0.0.0.0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.splitlines() == [
        "closedloop: error: dashboard --host 0.0.0.0: listening beyond this machine needs --token (every request "
        "must then carry it)"]
