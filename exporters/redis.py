"""Export kaygraph-otel schema events to Redis: Pub/Sub for live listeners, Streams for replay.

Usage::

    from opentelemetry.sdk.trace import TracerProvider
    from kaygraph_otel_exporters import LiveSpanProcessor, RedisEventExporter

    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(RedisEventExporter("redis://127.0.0.1:6379/0")))

Key layout
----------
With the default settings, every event is written to three places:

- ``PUBLISH kaygraph:events <event JSON>``: one Pub/Sub message per event, for
  listeners that are connected now. A listener that is not subscribed misses it.
- ``XADD kaygraph:stream:{correlation_id} MAXLEN ~ 10000 * event <event JSON>``:
  one stream per workflow run, so a dashboard that connects late can read the
  run from the beginning (``XRANGE``) and then follow it (``XREAD``). Each entry
  has a single field, ``event``. ``MAXLEN ~`` lets Redis trim whole internal
  nodes, so a stream may hold somewhat more than the limit. The stream key gets
  ``EXPIRE`` (24 h by default) on every batch, so a run expires that long after
  its last event.
- ``ZADD kaygraph:runs <unix time> <correlation_id>``: an index of runs scored by
  the time of their latest batch, trimmed to the newest 1000 runs and to runs
  seen within the TTL, and given the same TTL itself. ``ZREVRANGE kaygraph:runs
  0 49`` lists the 50 most recently active runs.

The channel, stream prefix, stream length, TTL, index key and index size are
arguments. ``stream_maxlen=0`` turns the streams and the index off.

All commands of one batch go out as one pipeline, so an export costs one
network round trip however many events it contains. The PUBLISH and XADD of
every event run inside one Lua script call (``EVALSHA``), so the client packs
one command per batch. The pipeline is not a
transaction, so a batch that fails part way may have been partly written. The
client retries nothing: a failed batch is dropped and counted, and the next
batch connects again, so the exporter recovers on its own after a Redis
restart. After ``breaker_failures`` consecutive failed batches the circuit
opens and batches are dropped without a network call for
``breaker_reset_seconds``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from kaygraph_otel_exporters._base import Event, SchemaEventExporter
from kaygraph_otel_exporters._breaker import DEFAULT_FAILURE_THRESHOLD, DEFAULT_RESET_SECONDS
from kaygraph_otel_exporters._drops import DEFAULT_LOG_INTERVAL_SECONDS
from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.encoder import event_to_json

logger = logging.getLogger(__name__)

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CHANNEL = "kaygraph:events"
DEFAULT_STREAM_PREFIX = "kaygraph:stream:"
DEFAULT_STREAM_MAXLEN = 10_000
DEFAULT_STREAM_TTL_SECONDS = 24 * 60 * 60
DEFAULT_RUNS_KEY = "kaygraph:runs"
DEFAULT_MAX_INDEXED_RUNS = 1000
STREAM_FIELD = "event"

# ARGV: the stream length cap (0 turns streams off), the channel, then a stream
# key ("" for none) and the event's JSON text for each event, in order.
PUBLISH_BATCH_SCRIPT = f"""
local maxlen = tonumber(ARGV[1])
local channel = ARGV[2]
for i = 3, #ARGV, 2 do
  redis.call('PUBLISH', channel, ARGV[i + 1])
  if maxlen > 0 and ARGV[i] ~= '' then
    redis.call('XADD', ARGV[i], 'MAXLEN', '~', maxlen, '*', '{STREAM_FIELD}', ARGV[i + 1])
  end
end
return (#ARGV - 2) / 2
"""
PUBLISH_BATCH_SHA = hashlib.sha1(PUBLISH_BATCH_SCRIPT.encode("utf-8")).hexdigest()
CLIENT_NAME = "kaygraph-otel-exporter"
_URL_SCHEMES = ("redis", "rediss", "unix")


class RedisEventExporter(SchemaEventExporter):
    """Publish the schema events of kaygraph-otel spans to Redis Pub/Sub and per-run Streams.

    Args:
        url: Redis URL with scheme ``redis://``, ``rediss://`` (TLS) or ``unix://``.
            Ignored when ``client`` is given.
        channel: the Pub/Sub channel that receives one message per event.
        stream_prefix: the stream of a run is ``{stream_prefix}{correlation_id}``.
        stream_maxlen: approximate maximum number of entries per stream (``MAXLEN ~``).
            0 turns the streams and the runs index off.
        stream_ttl_seconds: seconds a stream and the index live after their last
            write; 0 keeps them until Redis evicts them.
        runs_key: the sorted set that indexes runs by the time of their latest batch.
        max_indexed_runs: the index keeps this many most recently active runs.
        socket_timeout: seconds to wait for a reply before the batch fails.
        socket_connect_timeout: seconds to wait for a connection before the batch fails.
        health_check_interval: seconds a pooled connection may sit idle before it is
            checked with PING; 0 disables the check.
        breaker_failures: consecutive failed batches that open the circuit.
        breaker_reset_seconds: seconds the circuit stays open before a trial batch.
        client: a ready ``redis.Redis`` client to use in place of one built from ``url``.
            The caller keeps ownership of it, so ``shutdown`` does not close it.
        include_started: whether an ended span also yields its started event. A
            ``LiveSpanProcessor`` sets it False because it sends that event when the
            span starts; behind a plain ``BatchSpanProcessor`` keep it True.
        drop_log_interval: minimum number of seconds between two warnings about
            dropped events.

    Raises:
        ValueError: when the channel or a key is empty, the URL scheme is not supported,
            the URL cannot be parsed, or a timeout, size or breaker setting is out of range.
    """

    def __init__(
        self,
        url: str = DEFAULT_REDIS_URL,
        channel: str = DEFAULT_CHANNEL,
        *,
        stream_prefix: str = DEFAULT_STREAM_PREFIX,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        stream_ttl_seconds: int = DEFAULT_STREAM_TTL_SECONDS,
        runs_key: str = DEFAULT_RUNS_KEY,
        max_indexed_runs: int = DEFAULT_MAX_INDEXED_RUNS,
        socket_timeout: float = 2.0,
        socket_connect_timeout: float = 2.0,
        health_check_interval: int = 30,
        breaker_failures: int = DEFAULT_FAILURE_THRESHOLD,
        breaker_reset_seconds: float = DEFAULT_RESET_SECONDS,
        client: redis.Redis | None = None,
        include_started: bool = True,
        drop_log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
    ) -> None:
        for name, value, example in (
            ("channel", channel, DEFAULT_CHANNEL),
            ("stream_prefix", stream_prefix, DEFAULT_STREAM_PREFIX),
            ("runs_key", runs_key, DEFAULT_RUNS_KEY),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(
                    f"{name} must be a non-empty string, got {value!r}; "
                    f"pass a name such as {example!r}"
                )
        _validate_stream_settings(stream_maxlen, stream_ttl_seconds, max_indexed_runs)
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
            breaker_failures=breaker_failures,
            breaker_reset_seconds=breaker_reset_seconds,
        )
        self._client = client
        self._channel = channel
        self._stream_prefix = stream_prefix
        self._stream_maxlen = stream_maxlen
        self._stream_ttl_seconds = stream_ttl_seconds
        self._runs_key = runs_key
        self._max_indexed_runs = max_indexed_runs

    @property
    def channel(self) -> str:
        """The Pub/Sub channel that events are published to."""
        return self._channel

    @property
    def target(self) -> str:
        """The Redis server the exporter sends to, with any password replaced."""
        return self._target

    @property
    def streams_enabled(self) -> bool:
        """Whether events are also appended to per-run streams."""
        return self._stream_maxlen > 0

    def stream_key(self, correlation_id: str) -> str:
        """Return the key of the stream that contains the events of run ``correlation_id``."""
        return f"{self._stream_prefix}{correlation_id}"

    def _send(self, events: list[Event]) -> None:
        now = time.time()
        runs: set[str] = set()
        arguments: list[Any] = [self._stream_maxlen, self._channel]
        for event in events:
            correlation_id = event.get("correlation_id")
            stream_key = ""
            if self._stream_maxlen and correlation_id:
                stream_key = self.stream_key(correlation_id)
                runs.add(correlation_id)
            arguments.append(stream_key)
            arguments.append(event_to_json(event))
        try:
            self._execute(arguments, runs, now)
        except redis.exceptions.NoScriptError:
            # A new or restarted server has not seen the script yet. Nothing of the
            # batch was published, because the script call failed as a whole.
            self._client.script_load(PUBLISH_BATCH_SCRIPT)
            self._execute(arguments, runs, now)

    def _execute(self, arguments: list[Any], runs: set[str], now: float) -> None:
        with self._client.pipeline(transaction=False) as pipe:
            # One script call carries the whole batch: redis-py packs one command
            # instead of a PUBLISH and an XADD per event, which cost most of the
            # exporter's time when every event was its own command.
            pipe.evalsha(PUBLISH_BATCH_SHA, 0, *arguments)
            if runs:
                self._index_runs(pipe, runs, now)
            pipe.execute()

    def _index_runs(self, pipe: Pipeline, runs: set[str], now: float) -> None:
        ttl = self._stream_ttl_seconds
        if ttl:
            for correlation_id in runs:
                pipe.expire(self.stream_key(correlation_id), ttl)
        pipe.zadd(self._runs_key, dict.fromkeys(runs, now))
        if ttl:
            pipe.zremrangebyscore(self._runs_key, "-inf", f"({now - ttl}")
        # Ranks count from the lowest score, so this removes all but the newest runs.
        pipe.zremrangebyrank(self._runs_key, 0, -(self._max_indexed_runs + 1))
        if ttl:
            pipe.expire(self._runs_key, ttl)

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

    def stats(self) -> dict[str, Any]:
        """Return the counts of ``SchemaEventExporter.stats`` plus ``streams_enabled``."""
        stats = super().stats()
        stats["streams_enabled"] = self.streams_enabled
        return stats

    def _reset_connections_after_fork(self) -> None:
        if not self._owns_client:
            # redis-py resets a pool on its first use in a new process by itself.
            return
        # reset() drops the inherited connections without closing them, because closing
        # could send a shutdown on a socket that the parent still uses.
        self._client.connection_pool.reset()

    def _close(self, timeout_millis: int | None) -> None:
        if not self._owns_client:
            return
        try:
            self._client.close()
        except (redis.RedisError, OSError) as exc:
            logger.debug("Closing the Redis client for %s failed: %s", self._target, exc)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r}, channel={self._channel!r})"


def _validate_stream_settings(
    stream_maxlen: int, stream_ttl_seconds: int, max_indexed_runs: int
) -> None:
    for name, value, minimum, hint in (
        ("stream_maxlen", stream_maxlen, 0, "pass 0 to turn the streams off"),
        ("stream_ttl_seconds", stream_ttl_seconds, 0, "pass 0 to keep streams without expiry"),
        ("max_indexed_runs", max_indexed_runs, 1, f"the default is {DEFAULT_MAX_INDEXED_RUNS}"),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}; {hint}")


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
