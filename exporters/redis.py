"""Export kaygraph-otel schema events to Redis Pub/Sub.

Usage::

    from opentelemetry.sdk.trace import TracerProvider
    from kaygraph_otel_exporters import LiveSpanProcessor, RedisEventExporter

    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(RedisEventExporter("redis://127.0.0.1:6379/0")))

Each event is published as compact JSON text on one channel. A batch of spans
is sent as one pipeline, so one export costs one network round trip however
many events it contains. The client that the exporter builds retries nothing,
so a batch that fails is counted as dropped and logged at most once per interval.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

import redis
from kaygraph_otel_exporters._base import Event, SchemaEventExporter
from kaygraph_otel_exporters._drops import DEFAULT_LOG_INTERVAL_SECONDS
from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.encoder import event_to_json
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CHANNEL = "kaygraph:events"
CLIENT_NAME = "kaygraph-otel-exporter"
_URL_SCHEMES = ("redis", "rediss", "unix")


class RedisEventExporter(SchemaEventExporter):
    """Publish the schema events of kaygraph-otel spans to a Redis Pub/Sub channel.

    Args:
        url: Redis URL with scheme ``redis://``, ``rediss://`` (TLS) or ``unix://``.
            Ignored when ``client`` is given.
        channel: the Pub/Sub channel that receives one message per event.
        socket_timeout: seconds to wait for a reply before the batch fails.
        socket_connect_timeout: seconds to wait for a connection before the batch fails.
        health_check_interval: seconds a pooled connection may sit idle before it is
            checked with PING; 0 disables the check.
        client: a ready ``redis.Redis`` client to use in place of one built from ``url``.
            The caller keeps ownership of it, so ``shutdown`` does not close it.
        include_started: whether an ended span also yields its started event. A
            ``LiveSpanProcessor`` sets it False because it sends that event when the
            span starts; behind a plain ``BatchSpanProcessor`` keep it True.
        drop_log_interval: minimum number of seconds between two warnings about
            dropped events.

    Raises:
        ValueError: when the channel is empty, the URL scheme is not supported, the URL
            cannot be parsed, or a timeout is not positive.
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        channel: str = DEFAULT_CHANNEL,
        *,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        health_check_interval: int = 30,
        client: redis.Redis | None = None,
        include_started: bool = True,
        drop_log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
    ) -> None:
        if not isinstance(channel, str) or not channel:
            raise ValueError(
                f"channel must be a non-empty string, got {channel!r}; "
                f"pass a channel name such as {DEFAULT_CHANNEL!r}"
            )
        _validate_timeouts(socket_timeout, socket_connect_timeout, health_check_interval)

        if client is None:
            _validate_url(url)
            target = redact_url(url)
            client = _create_client(
                url, target, socket_timeout, socket_connect_timeout, health_check_interval
            )
            self._owns_client = True
        else:
            target = _describe_client(client)
            self._owns_client = False

        super().__init__(
            name=type(self).__name__,
            target=target,
            logger=logger,
            include_started=include_started,
            drop_log_interval=drop_log_interval,
        )
        self._client = client
        self._channel = channel
        self._target = target

    @property
    def channel(self) -> str:
        """The Pub/Sub channel that events are published to."""
        return self._channel

    @property
    def target(self) -> str:
        """The Redis server the exporter sends to, with any password replaced."""
        return self._target

    def _send(self, events: list[Event]) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            for event in events:
                pipe.publish(self._channel, event_to_json(event))
            pipe.execute()

    def _classify(self, error: Exception) -> str:
        if isinstance(error, redis.TimeoutError):
            return "timeout"
        if isinstance(error, redis.AuthenticationError):
            return "authentication"
        if isinstance(error, redis.ConnectionError):
            return "connection"
        if isinstance(error, redis.RedisError):
            return "redis_error"
        return super()._classify(error)

    def _close(self) -> None:
        if not self._owns_client:
            return
        try:
            self._client.close()
        except (redis.RedisError, OSError) as exc:
            logger.debug("Closing the Redis client for %s failed: %s", self._target, exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r}, channel={self._channel!r})"


def _validate_url(url: str) -> None:
    if not isinstance(url, str) or not url:
        raise ValueError(
            f"url must be a non-empty Redis URL, got {url!r}; "
            f"pass a URL such as {DEFAULT_REDIS_URL!r}"
        )
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise ValueError(
            f"invalid Redis URL {redact_url(url)!r}: {exc}; "
            f"pass a URL such as {DEFAULT_REDIS_URL!r}"
        ) from None
    if scheme not in _URL_SCHEMES:
        raise ValueError(
            f"unsupported Redis URL scheme {scheme!r} in {redact_url(url)!r}; "
            "use redis://, rediss:// (TLS) or unix://"
        )


def _validate_timeouts(
    socket_timeout: float, socket_connect_timeout: float, health_check_interval: int
) -> None:
    for name, value in (
        ("socket_timeout", socket_timeout),
        ("socket_connect_timeout", socket_connect_timeout),
    ):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise ValueError(
                f"{name} must be a positive number of seconds, got {value!r}; "
                "a missing timeout would let a stalled Redis block the export thread"
            )
    if (
        not isinstance(health_check_interval, int)
        or isinstance(health_check_interval, bool)
        or health_check_interval < 0
    ):
        raise ValueError(
            f"health_check_interval must be a whole number of seconds >= 0, "
            f"got {health_check_interval!r}. Pass 0 to disable the check"
        )


def _create_client(
    url: str,
    target: str,
    socket_timeout: float,
    socket_connect_timeout: float,
    health_check_interval: int,
) -> redis.Redis:
    # By default redis-py 8 retries connection errors and timeouts up to 10 times with
    # backoff. An export that waits for retries delays every span queued behind it, so
    # a failed batch is dropped at once and the next batch tries again.
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_connect_timeout,
            health_check_interval=health_check_interval,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
            client_name=CLIENT_NAME,
        )
    except ValueError as exc:
        raise ValueError(
            f"invalid Redis URL {target!r}: {exc}. Check its port, database number and "
            "query parameters"
        ) from None


def _describe_client(client: redis.Redis) -> str:
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    path = kwargs.get("path")
    if path:
        return f"unix://{path}?db={kwargs.get('db', 0)}"
    host = kwargs.get("host", "localhost")
    if ":" in str(host):
        host = f"[{host}]"
    return f"redis://{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
