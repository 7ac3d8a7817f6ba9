"""``GET /api/events``: the live event stream as Server-Sent Events.

Each schema event is one SSE message whose data is the event's JSON and whose
id is ``<event_id>/<correlation_id>``, both percent-encoded. A browser that
reconnects sends the last id it received as ``Last-Event-ID`` (a client that
opens a new connection may pass it as ``?last_event_id=``), and gets the
events it missed first:

1. from the bus's buffer, when the event is still in it;
2. otherwise, in Redis mode, from the Redis Streams of the runs written since
   that event, which also covers a dashboard restart;
3. otherwise it gets an ``event: reset`` message, the signal to reload a
   snapshot from ``/api/state``.

A client whose queue overflows gets ``event: reset`` too. A client that stops
reading is disconnected once one send has waited ``send_timeout`` seconds, and
because every stream has its own queue, it never delays the others.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote

from redis.exceptions import RedisError
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from kaygraph_otel_exporters.bus import Event, Subscription

if TYPE_CHECKING:
    from kaygraph_otel_dashboard.app import DashboardState

logger = logging.getLogger(__name__)

STATE_URL = "/api/state"
RECONNECT_MILLIS = 1000
MAX_ID_LENGTH = 1024


@dataclass(frozen=True)
class StreamPosition:
    """The last event a client received, parsed from its ``Last-Event-ID``."""

    event_id: str
    correlation_id: str | None


def format_event_id(event: Event) -> str | None:
    """Return the SSE id of ``event``, or None when it has no string ``event_id``."""
    event_id = event.get("event_id")
    if not isinstance(event_id, str):
        return None
    correlation_id = event.get("correlation_id")
    if not isinstance(correlation_id, str):
        return quote(event_id, safe="")
    return f"{quote(event_id, safe='')}/{quote(correlation_id, safe='')}"


def parse_event_id(raw: str | None) -> StreamPosition | None:
    """Parse an SSE id made by ``format_event_id``; a plain event id is accepted too."""
    if not raw or len(raw) > MAX_ID_LENGTH:
        return None
    event_part, separator, run_part = raw.partition("/")
    event_id = unquote(event_part)
    if not event_id:
        return None
    return StreamPosition(event_id, unquote(run_part) if separator else None)


def event_message(event: Event) -> ServerSentEvent | None:
    """Return the SSE message of ``event``, or None when it cannot be encoded as JSON."""
    try:
        data = json.dumps(event, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as error:
        logger.warning("Skipped event %r that is not valid JSON: %s", event.get("event_id"), error)
        return None
    return ServerSentEvent(data=data, id=format_event_id(event))


def reset_message(reason: str) -> ServerSentEvent:
    """Return the ``event: reset`` message, which tells the client to reload ``/api/state``."""
    data = json.dumps({"reason": reason, "state_url": STATE_URL}, separators=(",", ":"))
    return ServerSentEvent(data=data, event="reset")


async def events_endpoint(request: Request) -> Response:
    state: DashboardState = request.app.state.dashboard
    raw_position = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    # Subscribing here, before the response starts, means that every event published
    # after the client has received the response headers reaches it.
    subscription = state.bus.subscribe(state.max_client_queue)
    state.streams.add(subscription)
    return EventSourceResponse(
        _stream(state, subscription, parse_event_id(raw_position)),
        ping=state.ping_seconds,
        send_timeout=state.send_timeout,
        background=BackgroundTask(state.release, subscription),
    )


async def _missed_events(state: DashboardState, position: StreamPosition) -> list[Event] | None:
    missed = state.bus.events_since(position.event_id)
    if missed is not None or state.history is None or position.correlation_id is None:
        return missed
    try:
        return await state.history.events_after(position.correlation_id, position.event_id)
    except (RedisError, OSError) as error:
        logger.warning(
            "Cannot replay events after %s from Redis: %r; the client will reload",
            position.event_id,
            error,
        )
        return None


async def _stream(
    state: DashboardState, subscription: Subscription, position: StreamPosition | None
) -> AsyncIterator[ServerSentEvent]:
    try:
        yield ServerSentEvent(retry=RECONNECT_MILLIS)
        replayed: set[str] = set()
        if position is not None:
            missed = await _missed_events(state, position)
            if missed is None:
                yield reset_message("last_event_id_unknown")
            else:
                for event in missed:
                    event_id = event.get("event_id")
                    if event_id == position.event_id or event_id in replayed:
                        continue
                    replayed.add(event_id if isinstance(event_id, str) else "")
                    message = event_message(event)
                    if message is not None:
                        yield message

        dropped = subscription.dropped
        async for event in subscription:
            # The subscription started before the replay was read, so the replay and
            # the live queue can both hold the same events.
            if replayed and event.get("event_id") in replayed:
                replayed.discard(event["event_id"])
                continue
            if subscription.dropped != dropped:
                dropped = subscription.dropped
                yield reset_message("client_too_slow")
            message = event_message(event)
            if message is not None:
                yield message
    finally:
        state.forget(subscription)
