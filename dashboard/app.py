"""The dashboard's Starlette app: the page, the live event stream, REST endpoints and OTLP intake.

Usage::

    from kaygraph_otel_dashboard.app import create_app
    from kaygraph_otel_dashboard.server import serve

    serve(create_app(redis_url="redis://127.0.0.1:6379/0"), "127.0.0.1", 8080)

The app always reads events from an ``EventBus``. In embedded mode that is the
bus of the process it runs in, which the bus exporter fills. In Redis mode a
relay task copies every event from a Redis Pub/Sub channel into a bus of the
app's own, and the per-run Redis Streams serve replays and runs the app no
longer keeps. Spans posted to the OTLP receiver are encoded and published on
the same bus. A feed task applies every event on the bus to the run store and
the metrics.

Routes:

- ``GET /`` and ``GET /static/...``: the page, its scripts and style sheet.
- ``GET /api/events``: Server-Sent Events (see ``kaygraph_otel_dashboard.sse``).
- ``GET /api/state``, ``/api/runs``, ``/api/runs/{correlation_id}``,
  ``/api/runs/{correlation_id}/graph``, ``/api/metrics``, ``/healthz``: JSON (see
  ``kaygraph_otel_dashboard.routes``).
- ``POST /v1/traces``: the OTLP/HTTP receiver (see ``kaygraph_otel_dashboard.otlp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from kaygraph_otel_dashboard import routes
from kaygraph_otel_dashboard.feed import EventFeed
from kaygraph_otel_dashboard.guard import CONTENT_SECURITY_POLICY, MIN_TOKEN_LENGTH, GuardMiddleware
from kaygraph_otel_dashboard.history import RedisHistory
from kaygraph_otel_dashboard.metrics import DEFAULT_WINDOW_SECONDS, NodeMetrics
from kaygraph_otel_dashboard.otlp import DEFAULT_MAX_BODY_BYTES, ReceiverStats, traces_endpoint
from kaygraph_otel_dashboard.relay import DEFAULT_CHANNEL, RedisRelay
from kaygraph_otel_dashboard.routes import MAX_STATE_LIMIT, STATIC_DIR
from kaygraph_otel_dashboard.runs import DEFAULT_MAX_RUNS, RunStore
from kaygraph_otel_dashboard.sse import STATE_URL, events_endpoint
from kaygraph_otel_exporters.bus import EventBus, Subscription, get_default_bus
from kaygraph_otel_exporters.redis import DEFAULT_RUNS_KEY, DEFAULT_STREAM_PREFIX

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "MAX_STATE_LIMIT",
    "MIN_TOKEN_LENGTH",
    "STATE_URL",
    "STATIC_DIR",
    "ConfigurationError",
    "DashboardState",
    "check_token",
    "close_event_streams",
    "create_app",
    "dashboard_token",
]

logger = logging.getLogger(__name__)

DEFAULT_SEND_TIMEOUT_SECONDS = 10.0
DEFAULT_HISTORY_RUNS = 20
HISTORY_EVENTS_PER_RUN = 2000


class ConfigurationError(ValueError):
    """An invalid dashboard setting, such as a malformed Redis URL or a short token."""


@dataclass
class DashboardState:
    """Shared state of the routes, stored on ``app.state.dashboard``."""

    bus: EventBus
    mode: str
    ping_seconds: float
    max_client_queue: int
    send_timeout: float
    token: str | None
    feed: EventFeed
    max_body_bytes: int
    history_runs: int = 0
    relay: RedisRelay | None = None
    history: RedisHistory | None = None
    otlp_stats: ReceiverStats = field(default_factory=ReceiverStats)
    streams: set[Subscription] = field(default_factory=set)

    def forget(self, subscription: Subscription) -> None:
        """Close a stream's subscription and stop tracking it; safe to call twice."""
        subscription.close()
        self.streams.discard(subscription)

    async def release(self, subscription: Subscription) -> None:
        """Do what ``forget`` does, as a coroutine that a background task can await."""
        self.forget(subscription)


def _check_settings(
    ping_seconds: float,
    max_client_queue: int,
    send_timeout: float,
    max_body_bytes: int,
    history_runs: int,
    token: str | None,
) -> None:
    if ping_seconds <= 0:
        raise ConfigurationError(f"ping_seconds must be positive, got {ping_seconds!r}")
    if max_client_queue < 1:
        raise ConfigurationError(f"max_client_queue must be at least 1, got {max_client_queue!r}")
    if not send_timeout > 0:
        raise ConfigurationError(f"send_timeout must be positive seconds, got {send_timeout!r}")
    if max_body_bytes < 1:
        raise ConfigurationError(f"max_body_bytes must be at least 1, got {max_body_bytes!r}")
    if history_runs < 0:
        raise ConfigurationError(f"history_runs must be 0 or more, got {history_runs!r}")
    if token is not None:
        check_token(token)


def check_token(token: str) -> None:
    """Check that a dashboard token is long enough and has no whitespace.

    Raises:
        ConfigurationError: the token is too short or contains whitespace.
    """
    fix = "generate one with `python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
    if any(character.isspace() for character in token):
        raise ConfigurationError(
            f"the dashboard token of {len(token)} characters contains whitespace; {fix}"
        )
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"the dashboard token has {len(token)} characters, expected at least "
            f"{MIN_TOKEN_LENGTH}; {fix}"
        )


def create_app(
    *,
    bus: EventBus | None = None,
    redis_url: str | None = None,
    channel: str = DEFAULT_CHANNEL,
    stream_prefix: str = DEFAULT_STREAM_PREFIX,
    runs_key: str = DEFAULT_RUNS_KEY,
    history_runs: int = DEFAULT_HISTORY_RUNS,
    ping_seconds: float = 15,
    max_client_queue: int = 1000,
    send_timeout: float = DEFAULT_SEND_TIMEOUT_SECONDS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_runs: int = DEFAULT_MAX_RUNS,
    metrics_window: float = DEFAULT_WINDOW_SECONDS,
    token: str | None = None,
) -> Starlette:
    """Build the dashboard app.

    Args:
        bus: the bus to serve. Defaults to the process-wide bus in embedded mode and
            to a new bus of the app's own in Redis mode.
        redis_url: when set, a relay copies events from this Redis server's Pub/Sub
            channel into the bus for as long as the app runs, and replays read the
            exporter's per-run streams.
        channel: the Pub/Sub channel that the relay subscribes to.
        stream_prefix: the Redis exporter's stream key prefix.
        runs_key: the Redis exporter's sorted set of runs.
        history_runs: in Redis mode, how many of the most recently active runs are
            loaded from their streams at startup; 0 loads none.
        ping_seconds: interval between keep-alive comments on an event stream.
        max_client_queue: events queued per stream before the oldest are dropped; a
            stream that drops events sends ``event: reset`` to its client.
        send_timeout: seconds one write to an event stream may wait for a client
            that does not read before that client is disconnected.
        max_body_bytes: the largest OTLP request body accepted, before and after
            gzip decompression; larger ones get 413.
        max_runs: how many runs the run store keeps.
        metrics_window: the maximum metrics window in seconds.
        token: when set, every request except for static files must carry it as
            ``Authorization: Bearer <token>`` or ``?token=<token>``.

    Raises:
        ConfigurationError: the Redis URL is invalid, the token is shorter than
            ``MIN_TOKEN_LENGTH`` characters, or a number is out of range.
    """
    _check_settings(
        ping_seconds, max_client_queue, send_timeout, max_body_bytes, history_runs, token
    )
    relay = history = None
    if redis_url is not None:
        bus = bus if bus is not None else EventBus()
        try:
            relay = RedisRelay(bus, redis_url, channel)
            history = RedisHistory(redis_url, stream_prefix=stream_prefix, runs_key=runs_key)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None
    elif bus is None:
        bus = get_default_bus()
    try:
        feed = EventFeed(bus, RunStore(max_runs), NodeMetrics(window_seconds=metrics_window))
    except ValueError as error:
        raise ConfigurationError(str(error)) from None

    state = DashboardState(
        bus=bus,
        mode="redis" if relay is not None else "embedded",
        ping_seconds=ping_seconds,
        max_client_queue=max_client_queue,
        send_timeout=send_timeout,
        token=token,
        feed=feed,
        max_body_bytes=max_body_bytes,
        history_runs=history_runs,
        relay=relay,
        history=history,
    )
    app = Starlette(routes=_routes(), lifespan=_lifespan(state))
    app.state.dashboard = state
    app.add_middleware(GuardMiddleware, token=token)
    return app


def _routes() -> list[Route | Mount]:
    return [
        Route("/", routes.page, methods=["GET"]),
        Route("/favicon.ico", routes.favicon, methods=["GET"]),
        Route("/api/events", events_endpoint, methods=["GET"]),
        Route("/api/state", routes.recent_state, methods=["GET"]),
        Route("/api/runs", routes.list_runs, methods=["GET"]),
        # A run id may contain "/", so the graph route comes first and both take paths.
        Route("/api/runs/{correlation_id:path}/graph", routes.run_graph, methods=["GET"]),
        Route("/api/runs/{correlation_id:path}", routes.run_detail, methods=["GET"]),
        Route("/api/metrics", routes.metrics, methods=["GET"]),
        Route("/healthz", routes.health, methods=["GET"]),
        Route("/v1/traces", traces_endpoint, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]


def _lifespan(state: DashboardState) -> Any:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # The feed subscribes first, so that it receives every event the relay and the
        # history loader publish.
        state.feed.start()
        if state.relay is not None:
            state.relay.start()
        loader = None
        if state.history is not None and state.history_runs:
            loader = asyncio.get_running_loop().create_task(_load_history(state))
        try:
            yield
        finally:
            if loader is not None:
                loader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loader
            for subscription in list(state.streams):
                state.forget(subscription)
            if state.relay is not None:
                await state.relay.stop()
            if state.history is not None:
                await state.history.aclose()
            await state.feed.stop()

    return lifespan


async def _load_history(state: DashboardState) -> None:
    assert state.history is not None
    try:
        events = await state.history.recent_events(state.history_runs, HISTORY_EVENTS_PER_RUN)
    except (RedisError, OSError) as error:
        logger.warning("Cannot load recent runs from Redis: %r; showing live events only", error)
        return
    except Exception:
        # A failure here must not end the task with an error that fails the app's shutdown.
        logger.exception("Loading recent runs from Redis failed; showing live events only")
        return
    if events:
        # Events that the relay delivered meanwhile arrive twice; the run store and
        # the browser drop duplicates by event_id.
        state.bus.publish_many(events)
        logger.info("Loaded %d event(s) of recent runs from Redis", len(events))


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
