"""A workflow's events reach a real SSE client of the dashboard while the workflow runs.

The workflow is PocketFlow's (real); the dashboard is served by uvicorn on a
loopback port and read by httpx as a Server-Sent Events stream, through the
in-process bus or through a real redis-server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pocketflow
import pytest

from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.server import start_in_thread
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.setup import configure
from tests.helpers import wait_for
from tests.otel_fixtures import validate_event

SLOW_NODE_SECONDS = 1.0


class Load(pocketflow.Node):
    def prep(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    def exec(self, numbers: list[int]) -> int:
        return sum(numbers)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> str:
        shared["total"] = exec_res
        return "default"


class Slow(pocketflow.Node):
    def exec(self, prep_res: Any) -> str:
        time.sleep(SLOW_NODE_SECONDS)
        return "slept"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["slow"] = exec_res


def build_flow() -> pocketflow.Flow:
    load = Load()
    load >> Slow()
    return pocketflow.Flow(start=load)


@dataclass
class SseReader:
    """Reads ``/api/events`` in a thread and timestamps each event on arrival."""

    url: str
    received: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    connected: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(5.0, read=1.0)) as client:
            while not self.stop.is_set():
                try:
                    self._read(client)
                except httpx.ReadTimeout:
                    continue

    def _read(self, client: httpx.Client) -> None:
        with client.stream("GET", self.url + "/api/events") as response:
            response.raise_for_status()
            self.connected.set()
            for line in response.iter_lines():
                if line.startswith("data:"):
                    self.received.append((time.monotonic(), json.loads(line[5:].strip())))
                if self.stop.is_set():
                    return

    def names(self, node_type: str) -> list[str]:
        return [e["event_name"] for _, e in self.received if e["node_type"] == node_type]


def run_flow_and_watch(base_url: str, provider: Any) -> tuple[SseReader, float, dict[str, Any]]:
    reader = SseReader(base_url)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    assert reader.connected.wait(10), "the SSE stream did not connect within 10 s"
    instrument_pocketflow(tracer_provider=provider)
    try:
        shared: dict[str, Any] = {"numbers": [1, 2, 3]}
        build_flow().run(shared)
        finished_at = time.monotonic()
        provider.force_flush()
        assert wait_for(lambda: "workflow_completed" in reader.names("Flow"), timeout=10)
    finally:
        uninstrument_pocketflow()
        reader.stop.set()
        thread.join(5)
    return reader, finished_at, shared


def assert_slow_node_seen_while_running(reader: SseReader, finished_at: float) -> None:
    started = [
        t
        for t, e in reader.received
        if e["event_name"] == "node_started" and e["node_type"] == "Slow"
    ]
    assert len(started) == 1, reader.names("Slow")
    assert started[0] < finished_at, (
        "node_started of the slow node arrived only after the workflow ended"
    )
    assert finished_at - started[0] > SLOW_NODE_SECONDS / 2


@pytest.fixture
def embedded() -> Iterator[tuple[str, Any]]:
    bus = EventBus()
    server = start_in_thread(create_app(bus=bus), "127.0.0.1", 0)
    provider = configure(bus=bus, set_global=False, schedule_delay_millis=100)
    try:
        yield server.url, provider
    finally:
        provider.shutdown()
        server.stop()


def test_embedded_stream_shows_running_node(embedded: tuple[str, Any]) -> None:
    url, provider = embedded
    reader, finished_at, shared = run_flow_and_watch(url, provider)

    assert shared == {"numbers": [1, 2, 3], "total": 6, "slow": "slept"}
    assert_slow_node_seen_while_running(reader, finished_at)
    for _, event in reader.received:
        validate_event(event)
    assert reader.names("Slow")[-1] in ("node_completed", "execution_time")
    assert "node_completed" in reader.names("Load")
    ids = [e["event_id"] for _, e in reader.received]
    assert len(ids) == len(set(ids)), "an event arrived twice"


def test_redis_stream_shows_running_node(redis_url: str) -> None:
    server = start_in_thread(create_app(redis_url=redis_url), "127.0.0.1", 0)
    provider = configure(redis_url=redis_url, set_global=False, schedule_delay_millis=100)
    try:
        assert wait_for(
            lambda: httpx.get(server.url + "/healthz").json()["mode"] == "redis", timeout=5
        )
        reader, finished_at, shared = run_flow_and_watch(server.url, provider)
    finally:
        provider.shutdown()
        server.stop()

    assert shared["slow"] == "slept"
    assert_slow_node_seen_while_running(reader, finished_at)
    for _, event in reader.received:
        validate_event(event)
    graph_events = [e for _, e in reader.received if e["event_name"] == "workflow_started"]
    assert len(graph_events) == 1
    assert [n["id"] for n in graph_events[0]["data"]["graph"]["nodes"]] == ["Load", "Slow"]


def test_workflow_unchanged_when_redis_unreachable(redis_server: Any) -> None:
    expected: dict[str, Any] = {"numbers": [4, 5]}
    build_flow().run(expected)
    redis_server.stop()
    provider = configure(redis_url=redis_server.url, set_global=False, schedule_delay_millis=50)
    instrument_pocketflow(tracer_provider=provider)
    try:
        shared: dict[str, Any] = {"numbers": [4, 5]}
        build_flow().run(shared)
        provider.force_flush(5000)
    finally:
        uninstrument_pocketflow()
        provider.shutdown()
        redis_server.start()
    assert shared == expected
