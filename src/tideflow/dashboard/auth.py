"""Who may see the dashboard: anyone on this machine by default (it listens on 127.0.0.1);
anyone else only with authentication configured - a token, or ``user:password``."""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tideflow.errors import TideflowError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

COOKIE = "tideflow_dashboard"


class DashboardConfigError(TideflowError, ValueError):
    """The dashboard's options do not fit together (a public bind without authentication)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, auth: str | None) -> None:
    """Refuse to serve beyond this machine without authentication."""
    if not is_loopback(host) and not auth:
        raise DashboardConfigError(
            f"refusing to serve the dashboard on {host} without authentication: pass "
            "--auth TOKEN or --auth user:password (or $TIDEFLOW_DASHBOARD_AUTH), or bind "
            "127.0.0.1"
        )


class Authentication:
    """ASGI middleware: with ``auth`` = ``user:password``, HTTP basic auth; with a token, the
    token as a bearer token, as the basic-auth password (any user name), or once as
    ``?token=`` (then kept in a cookie). Without ``auth``, everything passes."""

    def __init__(self, app: ASGIApp, auth: str | None) -> None:
        self.app = app
        self.auth = auth

    def allowed(self, headers: dict[str, str], query: str) -> tuple[bool, bool]:
        """(allowed, set the cookie)."""
        auth = self.auth
        if not auth:
            return True, False
        user, _, password = auth.partition(":") if ":" in auth else ("", "", auth)
        given = headers.get("authorization", "")
        if given.lower().startswith("basic "):
            try:
                name, _, secret = base64.b64decode(given[6:]).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False, False
            ok = hmac.compare_digest(secret, password) and (not user or name == user)
            return ok, False
        if not user:
            if given.lower().startswith("bearer "):
                return hmac.compare_digest(given[7:], password), False
            for part in headers.get("cookie", "").split(";"):
                name, _, value = part.strip().partition("=")
                if name == COOKIE and hmac.compare_digest(value, password):
                    return True, False
            for part in query.split("&"):
                name, _, value = part.partition("=")
                if name == "token" and hmac.compare_digest(value, password):
                    return True, True
        return False, False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        ok, set_cookie = self.allowed(headers, scope.get("query_string", b"").decode("latin-1"))
        if not ok:
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"www-authenticate", b'Basic realm="tideflow"'),
                        (b"content-type", b"text/plain; charset=utf-8"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b"authentication required\n"})
            return
        if not set_cookie:
            await self.app(scope, receive, send)
            return
        cookie = f"{COOKIE}={self.auth}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")

        async def send_with_cookie(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"set-cookie", cookie)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)
