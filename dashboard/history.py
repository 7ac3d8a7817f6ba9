"""Read workflow runs back from the Redis Streams that the Redis exporter writes.

The Redis exporter appends every event of a run to the stream
``{stream_prefix}{correlation_id}`` (one field, ``event``, holding the event's
JSON) and scores each run in the sorted set ``runs_key`` with the Unix time of
its latest batch. This module reads that layout back, so that the dashboard can

- replay the events a browser missed while it was disconnected, even across a
  dashboard restart (``events_after``),
- serve a run that it no longer keeps in memory (``run_events``), and
- load the most recent runs when it starts (``recent_events``).

Stream entry ids are ``<milliseconds>-<sequence>`` from the Redis server's
clock, so entries of different streams can be merged into one timeline by id.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from kaygraph_otel_dashboard.relay import InvalidInputLog, decode_event, validate_redis_url
from kaygraph_otel_exporters.redis import DEFAULT_RUNS_KEY, DEFAULT_STREAM_PREFIX, STREAM_FIELD

logger = logging.getLogger(__name__)

Event = dict[str, Any]
EntryId = tuple[int, int]

DEFAULT_MAX_REPLAY = 10_000
INVALID_LOG_INTERVAL_SECONDS = 30.0
DEFAULT_SCAN_LIMIT = 10_000
SCAN_BATCH = 500
TIMEOUT_SECONDS = 5.0
# Runs are scored with the exporter's clock and entry ids use the Redis server's,
# so the search for runs active after an entry allows this much difference.
CLOCK_SKEW_SECONDS = 60.0
MAX_REPLAY_RUNS = 1000


def parse_entry_id(raw: bytes | str) -> EntryId:
    """Return a stream entry id such as ``b"1700000000000-3"`` as (milliseconds, sequence).

    Raises:
        ValueError: the id is not two whole numbers joined by a dash.
    """
    text = raw.decode() if isinstance(raw, bytes) else raw
    millis, _, sequence = text.partition("-")
    return int(millis), int(sequence or 0)


class RedisHistory:
    """Reads per-run Redis Streams with its own small connection pool.

    Args:
        redis_url: URL of the Redis server that the exporter writes to.
        stream_prefix: the exporter's stream key prefix.
        runs_key: the exporter's sorted set of runs.
        max_replay: the maximum number of events one replay returns; a longer gap is
            reported as "no longer kept", so the browser reloads a snapshot instead.
        scan_limit: how many of a run's newest entries are searched for the last
            event a browser received.

    Raises:
        ValueError: the URL is not a valid Redis URL.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        stream_prefix: str = DEFAULT_STREAM_PREFIX,
        runs_key: str = DEFAULT_RUNS_KEY,
        max_replay: int = DEFAULT_MAX_REPLAY,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> None:
        validate_redis_url(redis_url)
        self._url = redis_url
        self.stream_prefix = stream_prefix
        self.runs_key = runs_key
        self.max_replay = max_replay
        self.scan_limit = scan_limit
        self._field = STREAM_FIELD.encode()
        self._client: aioredis.Redis | None = None
        self._invalid = InvalidInputLog(
            f"entries of Redis streams {stream_prefix}*", INVALID_LOG_INTERVAL_SECONDS, logger
        )

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            self._client = aioredis.from_url(
                self._url,
                socket_timeout=TIMEOUT_SECONDS,
                socket_connect_timeout=TIMEOUT_SECONDS,
                retry=Retry(NoBackoff(), 0),
            )
        return self._client

    async def aclose(self) -> None:
        """Close the connection pool; the object can be used again afterwards."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def invalid(self) -> int:
        """Number of stream entries skipped as invalid since this object was created."""
        return self._invalid.total

    def stream_key(self, correlation_id: str) -> str:
        return f"{self.stream_prefix}{correlation_id}"

    async def recent_runs(self, limit: int) -> list[str]:
        """Return the ids of up to ``limit`` most recently active runs, newest first."""
        members = await self._redis().zrevrange(self.runs_key, 0, limit - 1)
        return [member.decode("utf-8", "replace") for member in members]

    async def run_events(self, correlation_id: str, limit: int) -> list[Event]:
        """Return the newest ``limit`` events of one run, oldest first; empty when unknown."""
        entries = await self._redis().xrevrange(self.stream_key(correlation_id), count=limit)
        return [event for _, event in self._decode(reversed(entries or []))]

    async def recent_events(self, runs: int, per_run: int) -> list[Event]:
        """Return the events of the ``runs`` most recently active runs, in stream-id order."""
        client = self._redis()
        run_ids = await self.recent_runs(runs)
        if not run_ids:
            return []
        pipe = client.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.xrevrange(self.stream_key(run_id), count=per_run)
        merged: list[tuple[EntryId, Event]] = []
        for entries in await pipe.execute():
            merged.extend(self._decode(reversed(entries or [])))
        merged.sort(key=lambda item: item[0])
        return [event for _, event in merged]

    async def events_after(self, correlation_id: str, event_id: str) -> list[Event] | None:
        """Return the events of all runs written after event ``event_id`` of ``correlation_id``.

        Returns None when that event is not among the run's newest ``scan_limit``
        entries, or when more than ``max_replay`` events follow it. Events of
        other runs written in the same millisecond are included, so a caller may
        receive a few it already has and must drop duplicates by ``event_id``.
        Each run's events keep their stream order, but stream ids cannot order
        entries of different runs written in the same millisecond, so those
        follow one another by run id.
        """
        anchor = await self._find(correlation_id, event_id)
        if anchor is None:
            return None
        millis, _ = parse_entry_id(anchor)
        client = self._redis()
        active = await client.zrangebyscore(
            self.runs_key, millis / 1000.0 - CLOCK_SKEW_SECONDS, "+inf", 0, MAX_REPLAY_RUNS
        )
        run_ids = {member.decode("utf-8", "replace") for member in active}
        run_ids.add(correlation_id)

        pipe = client.pipeline(transaction=False)
        for run_id in sorted(run_ids):
            start = "(" + anchor.decode() if run_id == correlation_id else f"{millis}-0"
            pipe.xrange(self.stream_key(run_id), min=start, count=self.max_replay + 1)
        merged: list[tuple[EntryId, Event]] = []
        for entries in await pipe.execute():
            merged.extend(self._decode(entries or []))
            if len(merged) > self.max_replay:
                return None
        merged.sort(key=lambda item: item[0])
        return [event for _, event in merged]

    async def _find(self, correlation_id: str, event_id: str) -> bytes | None:
        client = self._redis()
        key = self.stream_key(correlation_id)
        # Events are stored as compact JSON, so the id appears exactly like this.
        needle = f'"event_id":"{event_id}"'.encode()
        upper = "+"
        scanned = 0
        while scanned < self.scan_limit:
            entries = await client.xrevrange(key, max=upper, min="-", count=SCAN_BATCH)
            if not entries:
                return None
            for entry_id, fields in entries:
                raw = fields.get(self._field)
                if raw is not None and needle in raw:
                    return bytes(entry_id)
            scanned += len(entries)
            if len(entries) < SCAN_BATCH:
                return None
            upper = "(" + entries[-1][0].decode()
        return None

    def _decode(self, entries: Any) -> list[tuple[EntryId, Event]]:
        decoded = []
        for entry_id, fields in entries:
            raw = fields.get(self._field)
            try:
                if raw is None:
                    raise ValueError(f"entry has no {STREAM_FIELD!r} field")
                decoded.append((parse_entry_id(entry_id), decode_event(raw)))
            except ValueError as error:
                self._invalid.record(f"entry {entry_id!r}: {error}")
        return decoded
