"""Relay of schema events from a Redis Pub/Sub channel into an in-process ``EventBus``.

The dashboard serves browsers from its own bus. In Redis mode one ``RedisRelay``
task subscribes to the channel that the Redis exporter publishes to and puts
each event it receives on that bus. When Redis goes away the relay reconnects
with exponential backoff, so a Redis restart costs the dashboard the events
published while it was down and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import RedisError

from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.bus import EventBus

logger = logging.getLogger(__name__)

DEFAULT_CHANNEL = "kaygraph:events"
MAX_MESSAGE_BYTES = 1024 * 1024
CONNECT_TIMEOUT_SECONDS = 5.0
POLL_TIMEOUT_SECONDS = 1.0
HEALTH_CHECK_SECONDS = 10


def validate_redis_url(url: str) -> None:
    """Check that ``url`` is a Redis URL that redis-py accepts, without connecting.

    Raises:
        ValueError: the URL has another scheme or an invalid query parameter.
    """
    try:
        parse_url(url)
    except ValueError as error:
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: {error}; "
            "use a URL such as redis://127.0.0.1:6379/0"
        ) from None


class InvalidInputLog:
    """Counter of rejected messages or stream entries that logs one WARNING per interval at most.

    Args:
        source: what was rejected and where, such as "message(s) on Redis channel X".
        interval: minimum number of seconds between two warnings.
        log: the logger that receives the warnings.
    """

    def __init__(self, source: str, interval: float, log: logging.Logger = logger) -> None:
        self._source = source
        self._interval = interval
        self._logger = log
        self._last_log: float | None = None
        self._unlogged = 0
        self.total = 0

    def record(self, reason: str) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if self._last_log is not None and now - self._last_log < self._interval:
            return
        self._logger.warning(
            "Rejected %d invalid %s since the last warning (%d in total); latest: %s",
            self._unlogged,
            self._source,
            self.total,
            reason,
        )
        self._unlogged = 0
        self._last_log = now


def decode_event(payload: bytes | str) -> dict[str, Any]:
    """Decode one Pub/Sub message into a schema event.

    Only the shape the dashboard relies on is checked: a JSON object whose
    ``event_id`` is a string. Full schema validation is the publisher's job.

    Raises:
        ValueError: the message is too large, not JSON, or not an event object.
    """
    size = len(payload)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"message of {size} bytes exceeds the limit of {MAX_MESSAGE_BYTES}")
    try:
        event = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"message is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError("message is JSON nested deeper than Python's recursion limit") from None
    if not isinstance(event, dict):
        raise ValueError(f"message is JSON {type(event).__name__}, expected an object")
    if not isinstance(event.get("event_id"), str):
        raise ValueError("message has no string event_id")
    return event


class RedisRelay:
    """Subscribe to a Redis Pub/Sub channel and publish every valid event to ``bus``.

    Call ``start()`` from a running event loop and ``await stop()`` before the
    loop ends. Only cancellation ends the relay task. Any exception, normally a
    lost connection, leads to a reconnect after a delay that doubles from
    ``initial_backoff`` up to ``max_backoff`` seconds, and invalid messages are
    counted and skipped.

    Args:
        bus: the bus that receives the events.
        redis_url: URL of the Redis server, such as ``redis://127.0.0.1:6379/0``.
        channel: the Pub/Sub channel to subscribe to.
        initial_backoff: seconds to wait before the first reconnect.
        max_backoff: maximum number of seconds between two reconnects.
        log_interval: minimum number of seconds between two invalid-message warnings.

    Raises:
        ValueError: ``redis_url`` is not a valid Redis URL, or a delay is not positive.
    """

    def __init__(
        self,
        bus: EventBus,
        redis_url: str,
        channel: str = DEFAULT_CHANNEL,
        *,
        initial_backoff: float = 0.2,
        max_backoff: float = 10.0,
        log_interval: float = 30.0,
    ) -> None:
        validate_redis_url(redis_url)
        if initial_backoff <= 0 or max_backoff < initial_backoff:
            raise ValueError(
                f"backoff must satisfy 0 < initial_backoff <= max_backoff, got "
                f"initial_backoff={initial_backoff!r}, max_backoff={max_backoff!r}"
            )
        self._bus = bus
        self._url = redis_url
        self._target = redact_url(redis_url)
        self._channel = channel
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._invalid = InvalidInputLog(f"message(s) on Redis channel {channel}", log_interval)
        self._task: asyncio.Task[None] | None = None
        self.connected = False
        self.received = 0
        self.reconnect_attempts = 0

    @property
    def channel(self) -> str:
        return self._channel

    @property
    def invalid(self) -> int:
        """Number of messages rejected as invalid since the relay was created."""
        return self._invalid.total

    def stats(self) -> dict[str, Any]:
        """Return the relay's counters for the health endpoint."""
        return {
            "channel": self._channel,
            "connected": self.connected,
            "received": self.received,
            "invalid": self.invalid,
            "reconnect_attempts": self.reconnect_attempts,
        }

    def start(self) -> asyncio.Task[None]:
        """Start the relay task on the running event loop; a second call returns the same task."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"kaygraph-otel redis relay {self._channel}"
            )
        return self._task

    async def stop(self) -> None:
        """Cancel the relay task and wait until its connection is closed."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("Redis relay for channel %s had stopped with an error", self._channel)

    async def _run(self) -> None:
        logger.info("Relaying events from Redis %s channel %s", self._target, self._channel)
        failures = 0
        while True:
            try:
                await self._relay_until_error()
            except asyncio.CancelledError:
                self.connected = False
                logger.info("Stopped relaying Redis channel %s", self._channel)
                raise
            except Exception as error:
                if self.connected:
                    # The subscription worked until now, so the backoff starts again.
                    failures = 0
                    self.connected = False
                failures += 1
                await self._wait_before_reconnect(failures, error)

    async def _wait_before_reconnect(self, failures: int, error: Exception) -> None:
        delay = min(self._max_backoff, self._initial_backoff * 2 ** min(failures - 1, 30))
        # A Redis or socket error is expected when Redis restarts; anything else is a bug,
        # logged with its traceback, and the relay still keeps going.
        expected = isinstance(error, (RedisError, OSError))
        if failures == 1:
            # NOTE: Pub/Sub keeps no history, so events published while the relay
            # is disconnected never reach the dashboard.
            logger.warning(
                "Lost or cannot open Redis %s channel %s: %r; reconnecting in %.1f s",
                self._target,
                self._channel,
                error,
                delay,
                exc_info=not expected,
            )
        else:
            logger.warning(
                "Reconnect %d to Redis %s channel %s failed: %r; retrying in %.1f s",
                failures - 1,
                self._target,
                self._channel,
                error,
                delay,
                exc_info=not expected,
            )
        self.reconnect_attempts += 1
        await asyncio.sleep(delay)

    async def _relay_until_error(self) -> None:
        client = aioredis.from_url(
            self._url,
            socket_connect_timeout=CONNECT_TIMEOUT_SECONDS,
            socket_timeout=CONNECT_TIMEOUT_SECONDS,
            health_check_interval=HEALTH_CHECK_SECONDS,
            # Reconnects are handled by _run, with its own backoff and logging.
            retry=Retry(NoBackoff(), 0),
        )
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.connected = True
            logger.info("Subscribed to Redis %s channel %s", self._target, self._channel)
            while True:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=POLL_TIMEOUT_SECONDS
                )
                if message is not None and message.get("type") == "message":
                    self._handle(message["data"])
        finally:
            await self._close(pubsub, client)

    def _handle(self, payload: bytes | str) -> None:
        try:
            event = decode_event(payload)
        except ValueError as error:
            self._invalid.record(str(error))
            return
        self.received += 1
        self._bus.publish(event)

    async def _close(self, pubsub: Any, client: aioredis.Redis) -> None:
        # Closing after a lost connection can fail again; the relay is leaving anyway.
        with contextlib.suppress(RedisError, OSError):
            await pubsub.aclose()
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
