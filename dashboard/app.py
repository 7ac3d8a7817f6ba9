"""The dashboard's Starlette app: the web page, recent events as JSON, and a live event stream.

Usage::

    from kaygraph_otel_dashboard.app import create_app
    from kaygraph_otel_dashboard.server import serve

    serve(create_app(redis_url="redis://127.0.0.1:6379/0"), "127.0.0.1", 8080)

The app always reads events from an ``EventBus``. In embedded mode that is the
bus of the process it runs in, which the bus exporter fills. In Redis mode a
relay task copies every event from a Redis Pub/Sub channel into a bus of the
app's own.

Routes:

- ``GET /``: the page; ``GET /static/...``: its script and style sheet.
- ``GET /api/events``: Server-Sent Events, one message per schema event with the
  event's ``event_id`` as the SSE id. A client that sends ``Last-Event-ID`` (or
  ``?last_event_id=``) first gets the events it missed. When those are no longer
  buffered it gets an ``event: reset`` message instead, the signal to reload
  ``/api/state``.
- ``GET /api/state?limit=N``: the N most recent events, oldest first.
- ``GET /healthz``: status, number of bus subscribers and mode.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kaygraph_otel_dashboard.relay import DEFAULT_CHANNEL, RedisRelay
from kaygraph_otel_exporters.bus import Event, EventBus, Subscription, get_default_bus

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_STATE_LIMIT = 2000
MAX_STATE_LIMIT = 10_000
MIN_TOKEN_LENGTH = 16
SEND_TIMEOUT_SECONDS = 30.0
STATE_URL = "/api/state"

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


class ConfigurationError(ValueError):
    """An invalid dashboard setting, such as a malformed Redis URL or a short token."""


@dataclass
class DashboardState:
    """Shared state of the routes, stored on ``app.state.dashboard``."""

    bus: EventBus
    mode: str
    ping_seconds: float
    max_client_queue: int
    token: str | None
    relay: RedisRelay | None = None
    streams: set[Subscription] = field(default_factory=set)

    def forget(self, subscription: Subscription) -> None:
        """Close a stream's subscription and stop tracking it; safe to call twice."""
        subscription.close()
        self.streams.discard(subscription)

    async def release(self, subscription: Subscription) -> None:
        """Do what ``forget`` does, as a coroutine that a background task can await."""
        self.forget(subscription)


def create_app(
    *,
    bus: EventBus | None = None,
    redis_url: str | None = None,
    channel: str = DEFAULT_CHANNEL,
    ping_seconds: float = 15,
    max_client_queue: int = 1000,
    token: str | None = None,
) -> Starlette:
    """Build the dashboard app.

    Args:
        bus: the bus to serve. Defaults to the process-wide bus in embedded mode and
            to a new bus of the app's own in Redis mode.
        redis_url: when set, a relay copies events from this Redis server's Pub/Sub
            channel into the bus for as long as the app runs.
        channel: the Pub/Sub channel that the relay subscribes to.
        ping_seconds: interval between keep-alive comments on an event stream.
        max_client_queue: events queued per stream before the oldest are dropped; a
            stream that drops events sends ``event: reset`` to its client.
        token: when set, every request except for static files must carry it as
            ``Authorization: Bearer <token>`` or ``?token=<token>``.

    Raises:
        ConfigurationError: the Redis URL is invalid, the token is shorter than
            ``MIN_TOKEN_LENGTH`` characters, or a number is out of range.
    """
    if ping_seconds <= 0:
        raise ConfigurationError(f"ping_seconds must be positive, got {ping_seconds!r}")
    if max_client_queue < 1:
        raise ConfigurationError(f"max_client_queue must be at least 1, got {max_client_queue!r}")
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"the dashboard token has {len(token)} characters, expected at least "
            f"{MIN_TOKEN_LENGTH}; generate one with "
            "`python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
        )

    relay = None
    if redis_url is not None:
        bus = bus if bus is not None else EventBus()
        try:
            relay = RedisRelay(bus, redis_url, channel)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
    elif bus is None:
        bus = get_default_bus()

    state = DashboardState(
        bus=bus,
        mode="redis" if relay is not None else "embedded",
        ping_seconds=ping_seconds,
        max_client_queue=max_client_queue,
        token=token,
        relay=relay,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        if state.relay is not None:
            state.relay.start()
        try:
            yield
        finally:
            for subscription in list(state.streams):
                state.forget(subscription)
            if state.relay is not None:
                await state.relay.stop()

    routes = [
        Route("/", _page, methods=["GET"]),
        Route("/api/events", _events, methods=["GET"]),
        Route("/api/state", _state, methods=["GET"]),
        Route("/healthz", _health, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.dashboard = state
    app.add_middleware(_GuardMiddleware, token=token)
    return app


def dashboard_token(app: Any) -> str | None:
    """Return the token that ``app`` requires; None when it requires none or is no dashboard."""
    state = getattr(getattr(app, "state", None), "dashboard", None)
    return state.token if isinstance(state, DashboardState) else None


def close_event_streams(app: Any) -> int:
    """End every open event stream of ``app`` and return how many there were.

    An SSE response only ends when its client leaves, so a server that wants to
    shut down promptly calls this first. Must run on the app's event loop.
    """
    state = getattr(getattr(app, "state", None), "dashboard", None)
    if not isinstance(state, DashboardState):
        return 0
    streams = list(state.streams)
    for subscription in streams:
        subscription.close()
    state.streams.clear()
    return len(streams)


def _dashboard(request: Request) -> DashboardState:
    return request.app.state.dashboard  # type: ignore[no-any-return]


async def _page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


async def _state(request: Request) -> Response:
    raw_limit = request.query_params.get("limit")
    limit = DEFAULT_STATE_LIMIT
    if raw_limit is not None:
        if not (raw_limit.isascii() and raw_limit.isdigit()) or not (
            1 <= int(raw_limit) <= MAX_STATE_LIMIT
        ):
            return JSONResponse(
                {
                    "error": f"invalid limit {raw_limit[:40]!r}: expected a whole number "
                    f"from 1 to {MAX_STATE_LIMIT}"
                },
                status_code=400,
            )
        limit = int(raw_limit)
    events = _dashboard(request).bus.recent(limit)
    return JSONResponse({"events": events}, headers={"cache-control": "no-store"})


async def _health(request: Request) -> Response:
    state = _dashboard(request)
    body: dict[str, Any] = {
        "status": "ok",
        "subscribers": state.bus.subscriber_count,
        "mode": state.mode,
    }
    if state.relay is not None:
        body["relay"] = state.relay.stats()
    return JSONResponse(body, headers={"cache-control": "no-store"})


async def _events(request: Request) -> Response:
    state = _dashboard(request)
    last_event_id = request.headers.get("last-event-id") or request.query_params.get(
        "last_event_id"
    )
    # Subscribing here, before the response starts, means that every event published
    # after the client has received the response headers reaches it.
    subscription = state.bus.subscribe(state.max_client_queue)
    state.streams.add(subscription)
    return EventSourceResponse(
        _stream(state, subscription, last_event_id or None),
        ping=state.ping_seconds,
        send_timeout=SEND_TIMEOUT_SECONDS,
        background=BackgroundTask(state.release, subscription),
    )


async def _stream(
    state: DashboardState, subscription: Subscription, last_event_id: str | None
) -> AsyncIterator[ServerSentEvent]:
    try:
        replayed: set[str] = set()
        if last_event_id is not None:
            missed = state.bus.events_since(last_event_id)
            if missed is None:
                yield _reset_message("last_event_id_unknown")
            else:
                for event in missed:
                    replayed.add(event.get("event_id", ""))
                    message = _event_message(event)
                    if message is not None:
                        yield message

        dropped = subscription.dropped
        async for event in subscription:
            if replayed:
                # The subscription started before the replay was read, so its first
                # events can be the replay's last ones.
                if event.get("event_id") in replayed:
                    continue
                replayed.clear()
            if subscription.dropped != dropped:
                dropped = subscription.dropped
                yield _reset_message("client_too_slow")
            message = _event_message(event)
            if message is not None:
                yield message
    finally:
        state.forget(subscription)


def _event_message(event: Event) -> ServerSentEvent | None:
    try:
        data = json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        logger.warning("Skipped event %r that is not valid JSON: %s", event.get("event_id"), error)
        return None
    event_id = event.get("event_id")
    return ServerSentEvent(data=data, id=event_id if isinstance(event_id, str) else None)


def _reset_message(reason: str) -> ServerSentEvent:
    data = json.dumps({"reason": reason, "state_url": STATE_URL}, separators=(",", ":"))
    return ServerSentEvent(data=data, event="reset")


def _is_loopback_host_header(host_header: str) -> bool:
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


class _GuardMiddleware:
    """Add security headers to every response and check the token and Host header.

    Without a token the app only serves requests whose Host header names a
    loopback address, so a web page that rebinds its own domain name to 127.0.0.1
    cannot read the dashboard. With a token, every request except for static
    files must carry it. Static files hold no event data, and a browser cannot
    add a token to the script and style sheet that the page loads.
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
            if not _is_loopback_host_header(host_header):
                return JSONResponse(
                    {
                        "error": f"Host header {host_header[:100]!r} is not a loopback "
                        "address; open the dashboard at http://127.0.0.1:PORT/ or start "
                        "it with a token"
                    },
                    status_code=400,
                )
            return None
        if scope["path"].startswith("/static/") or self._authorized(scope, headers):
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
