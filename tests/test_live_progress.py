"""The live path reports events of spans that are still open, once each, in order."""

from __future__ import annotations

import threading
import time
from typing import Any

import pocketflow
from opentelemetry.sdk.trace import TracerProvider

from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.bus_exporter import BusEventExporter
from kaygraph_otel_exporters.live import LiveSpanProcessor
from tests.otel_fixtures import validate_event

RETRY_WAIT_SECONDS = 0.4


class SlowFlaky(pocketflow.Node):
    """Fails twice, waiting between attempts, then succeeds."""

    def exec(self, prep_res: Any) -> str:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls < 3:
            raise TimeoutError(f"upstream timed out on attempt {self.calls}")
        return "ok"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["result"] = exec_res


def test_retries_arrive_while_node_runs() -> None:
    bus = EventBus()
    provider = TracerProvider()
    processor = LiveSpanProcessor(BusEventExporter(bus), schedule_delay_millis=50)
    provider.add_span_processor(processor)
    instrument_pocketflow(tracer_provider=provider)
    shared: dict[str, Any] = {}
    finished = threading.Event()
    seen_while_running: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 10
        while not finished.is_set() and time.monotonic() < deadline:
            for event in bus.recent():
                if event["event_name"] == "retry_attempted" and not finished.is_set():
                    seen_while_running.append(event["event_id"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        pocketflow.Flow(start=SlowFlaky(max_retries=3, wait=RETRY_WAIT_SECONDS)).run(shared)
        finished.set()
        provider.force_flush()
    finally:
        uninstrument_pocketflow()
        watcher.join(5)
        provider.shutdown()

    assert shared == {"result": "ok"}
    assert seen_while_running, "no retry_attempted event arrived before the node ended"
    events = bus.recent()
    for event in events:
        validate_event(event)
    node_events = [e["event_name"] for e in events if e["node_type"] == "SlowFlaky"]
    assert node_events.count("retry_attempted") == 2
    assert node_events.count("node_started") == 1
    assert node_events.count("node_executing") == 1
    assert node_events.count("node_completed") == 1
    ids = [e["event_id"] for e in events]
    assert len(ids) == len(set(ids)), "an event was sent twice"
    attempts = [
        e["data"]["error"]["attempt"] for e in events if e["event_name"] == "retry_attempted"
    ]
    assert attempts == [1, 2]


def test_report_progress_sends_only_new_events() -> None:
    bus = EventBus()
    provider = TracerProvider()
    processor = LiveSpanProcessor(BusEventExporter(bus), schedule_delay_millis=60_000)
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("tests")
    span = tracer.start_span(
        "node Manual",
        attributes={"kaygraph.node_kind": "node", "kaygraph.node_id": "manual",
                    "kaygraph.node_type": "Manual", "kaygraph.workflow_id": "w"},
    )  # fmt: skip
    span.add_event("node_preparing", {"kaygraph.state": "preparing"})
    assert processor.report_progress() == 1
    assert processor.report_progress() == 0
    span.add_event("node_executing", {"kaygraph.state": "executing"})
    assert processor.report_progress() == 1
    span.add_event("node_completed", {"kaygraph.state": "completed"})
    span.end()
    assert processor.report_progress() == 0
    provider.force_flush()
    provider.shutdown()

    names = [e["event_name"] for e in bus.recent()]
    assert names == [
        "node_started",
        "node_preparing",
        "node_executing",
        "node_completed",
        "execution_time",
    ]
