"""Who may see the dashboard: this machine only, unless the user asked for more and set a token.

* It listens on 127.0.0.1 unless ``--host`` names another address, and then only with ``--token``
  (:func:`check_binding`).
* With a token, every request carries it (``?token=`` or ``Authorization: Bearer``); else 403.
* A request from another machine is refused (403) unless the dashboard listens beyond this machine,
  whatever let it through; while it listens on loopback only, a request naming another host (a web
  page rebinding its domain name to 127.0.0.1) is refused too.
* Only GET and HEAD are answered: nothing the dashboard serves writes anything.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qs

from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from closedloop.errors import ClosedLoopError

LOCAL_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is this machine only."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises
    ------
    ClosedLoopError
        ``host`` is not loopback and no (non-empty) token was given.
    """
    if not is_loopback(host) and not token:
        raise ClosedLoopError(f"dashboard --host {host}: listening beyond this machine needs --token (every "
                              "request must then carry it)")


class Guard:
    """ASGI middleware that answers 403 to a request the rules above refuse.

    Parameters
    ----------
    app : ASGI app
        What a permitted request reaches.
    remote : bool
        Whether clients on other machines may connect (the dashboard listens beyond loopback).
    token : str, optional
        The secret every request must carry.
    """

    def __init__(self, app: ASGIApp, remote: bool, token: str | None):
        self.app, self.remote, self.token = app, remote, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            why = self.refusal(scope)
            if why is not None:
                await PlainTextResponse(why, status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> str | None:
        """Why the request of ``scope`` is refused, or None."""
        client = scope.get("client")
        if not self.remote and (client is None or not is_loopback(client[0])):
            return "this dashboard answers this machine only"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not self.remote and not is_loopback(_hostname(headers.get("host", ""))):
            return "this dashboard answers requests for 127.0.0.1 or localhost only"
        if self.token is not None and not any(hmac.compare_digest(given.encode(), self.token.encode())
                                              for given in _tokens(scope, headers)):
            return "a token is required (?token= or Authorization: Bearer)"
        return None


def _hostname(host: str) -> str:
    """The name or address of a Host header, without its port (``[::1]:8765`` -> ``::1``)."""
    if host.startswith("["):
        return host[1:host.find("]")]
    return host.rsplit(":", 1)[0]


def _tokens(scope: Scope, headers: dict[str, str]) -> list[str]:
    """The tokens a request carries: its ``token`` query parameters and its bearer token."""
    given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    return given + ([credential.strip()] if scheme.lower() == "bearer" else [])
