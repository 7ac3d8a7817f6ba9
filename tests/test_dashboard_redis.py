"""Tests of the dashboard's Redis Streams reads against a real redis-server.

The tests write what the Redis exporter writes, by hand: ``PUBLISH`` on the
channel, ``XADD`` to ``kaygraph:stream:{correlation_id}`` with the field
``event``, and ``ZADD`` of the run to ``kaygraph:runs``. Then they check that a
browser reconnecting with ``Last-Event-ID`` gets what it missed, even from a
dashboard process that started after those events were written.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.history import parse_entry_id
from kaygraph_otel_dashboard.server import RunningServer, start_in_thread
from kaygraph_otel_exporters.redis import DEFAULT_RUNS_KEY, DEFAULT_STREAM_PREFIX, STREAM_FIELD
from tests.helpers import wait_for
from tests.test_dashboard import READ_TIMEOUT_S, SSEReader, compact, make_event, sse_id

# JSON nested deeper than Python's recursion limit, which json.loads cannot decode.
DEEP_JSON = "[" * 100_000 + "]" * 100_000


@pytest.fixture
def channel() -> str:
    return f"kaygraph:test:{uuid.uuid4().hex}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=5.0)
    try:
        yield connection
    finally:
        connection.close()


def write(client: redis.Redis, channel: str, events: list[dict[str, Any]]) -> None:
    """Write events as the Redis exporter does: publish, append to the run's stream, index."""
    for event in events:
        text = compact(event)
        run = event["correlation_id"]
        client.publish(channel, text)
        client.xadd(f"{DEFAULT_STREAM_PREFIX}{run}", {STREAM_FIELD: text})
        client.zadd(DEFAULT_RUNS_KEY, {run: time.time()})


def start(redis_url: str, channel: str, **options: Any) -> RunningServer:
    """Start a Redis-mode dashboard and wait until its relay has subscribed."""
    server = start_in_thread(create_app(redis_url=redis_url, channel=channel, **options))
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        if not wait_for(lambda: http.get("/healthz").json()["relay"]["connected"], 15.0):
            server.stop()
            raise AssertionError("the relay did not connect to Redis within 15 s")
    return server


def events_of(run: str, count: int, prefix: str = "node") -> list[dict[str, Any]]:
    return [make_event("node_started", f"{prefix}-{index}", run=run) for index in range(count)]


def test_replay_from_stream_after_dashboard_restart(
    redis_url: str, channel: str, client: redis.Redis
) -> None:
    before = events_of("run-a", 3)
    missed_a = events_of("run-a", 2, "later")
    missed_b = events_of("run-b", 2)
    live = make_event("node_completed", "live", run="run-a", state="completed")

    first = start(redis_url, channel, history_runs=0)
    try:
        with httpx.Client(base_url=first.url, timeout=READ_TIMEOUT_S) as http:
            with http.stream("GET", "/api/events") as response:
                reader = SSEReader(response)
                write(client, channel, before)
                seen = [reader.next_message()["id"] for _ in before]
    finally:
        first.stop()

    # Written while no dashboard runs: Pub/Sub drops them, the streams keep them.
    write(client, channel, missed_a[:1] + missed_b + missed_a[1:])

    second = start(redis_url, channel, history_runs=0)
    try:
        with httpx.Client(base_url=second.url, timeout=READ_TIMEOUT_S) as http:
            assert http.get("/api/state").json() == {"events": []}
            headers = {"Last-Event-ID": seen[-1]}
            with http.stream("GET", "/api/events", headers=headers) as response:
                reader = SSEReader(response)
                replayed = [reader.next_message() for _ in range(4)]
                write(client, channel, [live])
                after = reader.next_message()
    finally:
        second.stop()

    received = [json.loads(message["data"]) for message in replayed]
    assert seen == [sse_id(event) for event in before]
    assert sorted(message["id"] for message in replayed) == sorted(
        sse_id(event) for event in missed_a + missed_b
    )
    # Stream ids order the entries of one run exactly; runs may interleave differently.
    assert [event for event in received if event["correlation_id"] == "run-a"] == missed_a
    assert [event for event in received if event["correlation_id"] == "run-b"] == missed_b
    assert after["id"] == sse_id(live)


def test_replay_unknown_event_resets(redis_url: str, channel: str, client: redis.Redis) -> None:
    write(client, channel, events_of("run-a", 2))
    server = start(redis_url, channel, history_runs=0)
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            missing = f"{uuid.uuid4()}/run-a"
            with http.stream("GET", "/api/events", headers={"Last-Event-ID": missing}) as r:
                reset = SSEReader(r).next_message()
    finally:
        server.stop()
    assert reset["event"] == "reset"
    assert json.loads(reset["data"])["reason"] == "last_event_id_unknown"


def test_replay_too_long_resets(redis_url: str, channel: str, client: redis.Redis) -> None:
    events = events_of("run-a", 12)
    write(client, channel, events)
    server = start(redis_url, channel, history_runs=0)
    try:
        history = server._server.config.app.state.dashboard.history
        history.max_replay = 5
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            long_gap = {"Last-Event-ID": sse_id(events[0])}
            short_gap = {"Last-Event-ID": sse_id(events[-4])}
            with http.stream("GET", "/api/events", headers=long_gap) as response:
                reset = SSEReader(response).next_message()
            with http.stream("GET", "/api/events", headers=short_gap) as response:
                reader = SSEReader(response)
                short = [reader.next_message()["id"] for _ in range(3)]
    finally:
        server.stop()
    assert reset["event"] == "reset"
    assert short == [sse_id(event) for event in events[-3:]]


def test_run_detail_read_from_stream(redis_url: str, channel: str, client: redis.Redis) -> None:
    graph = {
        "nodes": [{"id": "load", "type": "LoadNode", "parent": "Flow", "start": True}],
        "edges": [],
    }
    events = [
        make_event("workflow_started", "Flow", run="old-run", node_type="Flow",
                   workflow_name="nightly", graph=graph),
        make_event("node_started", "load", run="old-run"),
        make_event("node_completed", "load", run="old-run", state="completed"),
        make_event("workflow_completed", "Flow", run="old-run", node_type="Flow",
                   state="completed"),
    ]  # fmt: skip
    for event in events:
        client.xadd(f"{DEFAULT_STREAM_PREFIX}old-run", {STREAM_FIELD: compact(event)})
    server = start(redis_url, channel, history_runs=0)
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            runs = http.get("/api/runs").json()["runs"]
            detail = http.get("/api/runs/old-run").json()
            graph_view = http.get("/api/runs/old-run/graph").json()
            missing = http.get("/api/runs/never-written")
    finally:
        server.stop()
    assert runs == []
    assert detail["events"] == events
    assert detail["run"]["status"] == "completed"
    assert detail["run"]["workflow_name"] == "nightly"
    assert graph_view["nodes"][0]["state"] == "completed"
    assert missing.status_code == 404


def test_recent_runs_loaded_at_startup(redis_url: str, channel: str, client: redis.Redis) -> None:
    first, second = events_of("run-1", 2), events_of("run-2", 3)
    write(client, channel, first)
    write(client, channel, second)
    server = start(redis_url, channel, history_runs=5)
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            assert wait_for(lambda: len(http.get("/api/runs").json()["runs"]) == 2, 10.0)
            state = http.get("/api/state").json()["events"]
    finally:
        server.stop()
    assert [event for event in state if event["correlation_id"] == "run-1"] == first
    assert [event for event in state if event["correlation_id"] == "run-2"] == second
    assert len(state) == len(first) + len(second)


def test_history_skips_invalid_entries(redis_url: str, channel: str, client: redis.Redis) -> None:
    good = events_of("run-x", 1)
    client.xadd(f"{DEFAULT_STREAM_PREFIX}run-x", {"other": "field"})
    client.xadd(f"{DEFAULT_STREAM_PREFIX}run-x", {STREAM_FIELD: "not json"})
    client.xadd(f"{DEFAULT_STREAM_PREFIX}run-x", {STREAM_FIELD: DEEP_JSON})
    client.xadd(f"{DEFAULT_STREAM_PREFIX}run-x", {STREAM_FIELD: compact(good[0])})
    server = start(redis_url, channel, history_runs=0)
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            response = http.get("/api/runs/run-x")
    finally:
        server.stop()
    assert response.status_code == 200
    assert response.json()["events"] == good


def test_startup_history_skips_deep_entry(
    redis_url: str, channel: str, client: redis.Redis
) -> None:
    good = events_of("run-deep", 2)
    client.xadd(f"{DEFAULT_STREAM_PREFIX}run-deep", {STREAM_FIELD: DEEP_JSON})
    write(client, channel, good)
    app = create_app(redis_url=redis_url, channel=channel, history_runs=5)
    server = start_in_thread(app)
    try:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
            loaded = wait_for(lambda: len(http.get("/api/runs").json()["runs"]) == 1, 10.0)
            state = http.get("/api/state").json()["events"]
    finally:
        server.stop()
    assert loaded
    assert state == good
    assert app.state.dashboard.history.invalid == 1


@pytest.mark.parametrize(
    ("raw", "expected"), [(b"1700000000000-3", (1700000000000, 3)), ("5-0", (5, 0)), ("7", (7, 0))]
)
def test_parse_entry_id(raw: bytes | str, expected: tuple[int, int]) -> None:
    assert parse_entry_id(raw) == expected
