"""Request guard of the dashboard: security headers, the token check and the Host header check."""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import parse_qsl

from starlette.datastructures import MutableHeaders
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MIN_TOKEN_LENGTH = 16

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
)


def is_loopback_host_header(host_header: str) -> bool:
    """Return whether a Host header names ``localhost`` or a loopback IP address, with any port."""
    host = host_header.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class GuardMiddleware:
    """Add security headers to every response and check the token and Host header.

    Without a token the app only serves requests whose Host header names a
    loopback address, so a web page that rebinds its own domain name to 127.0.0.1
    cannot read the dashboard. With a token, every request except for static
    files and the empty favicon must carry it. Those hold no event data, and a
    browser cannot add a token to the scripts and style sheet that the page loads.
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self._app = app
        self._token = token.encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS:
                    headers.setdefault(name, value)
            await send(message)

        rejection = self._check(scope)
        if rejection is not None:
            await rejection(scope, receive, send_with_headers)
            return
        await self._app(scope, receive, send_with_headers)

    def _check(self, scope: Scope) -> Response | None:
        headers = dict(scope["headers"])
        if self._token is None:
            host_header = headers.get(b"host", b"").decode("latin-1")
            if not is_loopback_host_header(host_header):
                return JSONResponse(
                    {
                        "error": f"Host header {host_header[:100]!r} is not a loopback "
                        "address; open the dashboard at http://127.0.0.1:PORT/ or start "
                        "it with a token"
                    },
                    status_code=400,
                )
            return None
        public = scope["path"].startswith("/static/") or scope["path"] == "/favicon.ico"
        if public or self._authorized(scope, headers):
            return None
        return JSONResponse(
            {
                "error": "missing or invalid dashboard token; send it as "
                "'Authorization: Bearer <token>' or as the 'token' query parameter"
            },
            status_code=401,
            headers={"www-authenticate": 'Bearer realm="kaygraph-otel dashboard"'},
        )

    def _authorized(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        assert self._token is not None
        authorization = headers.get(b"authorization", b"")
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
            return True
        query = scope.get("query_string", b"").decode("latin-1")
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "token" and hmac.compare_digest(value.encode(), self._token):
                return True
        return False
