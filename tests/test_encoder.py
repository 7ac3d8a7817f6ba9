"""Encoding of instrumented spans into schema events, validated against the JSON Schema."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import kaygraph
import pocketflow
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel import attributes as attr
from kaygraph_otel import (
    instrument_kaygraph,
    instrument_pocketflow,
    run_context,
    uninstrument_kaygraph,
    uninstrument_pocketflow,
)
from kaygraph_otel_exporters.encoder import (
    encode_span,
    encode_spans,
    encode_started_span,
    event_to_json,
)
from tests import test_kaygraph_spans as kaygraph_scenarios
from tests import test_pocketflow_spans as pocketflow_scenarios
from tests.otel_fixtures import validate_event

Event = dict[str, Any]

INSTRUMENT = {
    "kaygraph": (instrument_kaygraph, uninstrument_kaygraph),
    "pocketflow": (instrument_pocketflow, uninstrument_pocketflow),
}
ALL_SCENARIOS = [
    ("kaygraph", name, scenario) for name, scenario in kaygraph_scenarios.SCENARIOS.items()
] + [("pocketflow", name, scenario) for name, scenario in pocketflow_scenarios.SCENARIOS.items()]
STARTED = {"node_started", "workflow_started"}


@contextlib.contextmanager
def instrumented(framework: str, provider: TracerProvider, **options: Any) -> Iterator[None]:
    instrument, uninstrument = INSTRUMENT[framework]
    instrument(tracer_provider=provider, **options)
    try:
        yield
    finally:
        uninstrument()


@pytest.fixture
def kaygraph_spans(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> Iterator[Callable[[], list[ReadableSpan]]]:
    """Instrument KayGraph with snapshots on and return a reader of the finished spans."""
    with instrumented("kaygraph", tracer_provider, capture_snapshots=True):
        yield lambda: list(span_exporter.get_finished_spans())


def ours(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [span for span in spans if attr.NODE_KIND in (span.attributes or {})]


def named(events: list[Event], name: str) -> list[Event]:
    return [event for event in events if event["event_name"] == name]


def of_node(events: list[Event], node_id: str) -> list[Event]:
    return [event for event in events if event["node_id"] == node_id]


@pytest.mark.parametrize(
    ("framework", "scenario"),
    [pytest.param(f, s, id=f"{f}-{n}") for f, n, s in ALL_SCENARIOS],
)
def test_every_scenario_event_validates(
    framework: str,
    scenario: Callable[[], Any],
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    with instrumented(framework, tracer_provider, capture_snapshots=True):
        scenario()
    spans = list(span_exporter.get_finished_spans())

    events = encode_spans(spans)

    assert events
    for event in events:
        validate_event(event)
        json.loads(event_to_json(event))
    assert len({event["event_id"] for event in events}) == len(events)
    for span in ours(spans):
        span_events = encode_span(span)
        assert span_events, f"span {span.name} produced no events"
        span_id = format(span.get_span_context().span_id, "016x")
        assert {event["data"]["span_id"] for event in span_events} == {span_id}
        assert len(named(span_events, "execution_time")) == 1
    assert len(named(events, "workflow_started")) == len(
        [s for s in spans if s.attributes.get(attr.NODE_KIND) == "workflow"]
    )
    assert encode_spans(spans) == events


def test_user_spans_produce_no_events(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    with instrumented("kaygraph", tracer_provider):
        kaygraph_scenarios.parallel_batch()
    user_spans = [s for s in span_exporter.get_finished_spans() if s.name == "user work"]

    assert len(user_spans) == 8
    assert encode_spans(user_spans) == []
    assert all(encode_started_span(span) is None for span in user_spans)


def test_workflow_started_carries_graph(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.branching()

    events = encode_spans(kaygraph_spans())

    started = named(events, "workflow_started")
    assert len(started) == 1
    data = started[0]["data"]
    assert data["workflow_name"] == "Graph"
    assert data["state"] == "running"
    assert data["parent_span_id"] is None
    node_ids = {node["id"] for node in data["graph"]["nodes"]}
    assert node_ids == {"router", "approved", "rejected"}
    edges = {(e["source"], e["target"], e["action"]) for e in data["graph"]["edges"]}
    assert edges == {("router", "approved", "approve"), ("router", "rejected", "reject")}
    starts = [node["id"] for node in data["graph"]["nodes"] if node.get("start")]
    assert starts == ["router"]


def test_identity_fields_of_node_events(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    with run_context(correlation_id="request-9"):
        kaygraph_scenarios.sequential()

    events = encode_spans(kaygraph_spans())

    workflow = named(events, "workflow_started")[0]
    for event in events:
        assert event["correlation_id"] == "request-9"
        assert event["workflow_id"] == workflow["workflow_id"]
        assert event["data"]["trace_id"] == workflow["data"]["trace_id"]
    load = of_node(events, "load")
    assert {event["node_type"] for event in load} == {"RecordNode"}
    assert {event["data"]["parent_node_id"] for event in load} == {"Graph"}
    assert {event["data"]["parent_span_id"] for event in load} == {workflow["data"]["span_id"]}
    assert [event["event_name"] for event in load] == [
        "node_started",
        "node_preparing",
        "data_input",
        "node_executing",
        "data_output",
        "node_completed",
        "execution_time",
        "transition",
    ]
    assert [event["data"]["state"] for event in load] == [
        "running",
        "preparing",
        "preparing",
        "executing",
        "executing",
        "completed",
        "completed",
        "completed",
    ]
    assert {event["event_type"] for event in load} == {"lifecycle", "data", "metric"}


def test_transition_events(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.branching()

    transitions = named(encode_spans(kaygraph_spans()), "transition")

    assert len(transitions) == 1
    data = transitions[0]["data"]
    assert transitions[0]["node_id"] == "router"
    assert data["from_node_id"] == "router"
    assert data["action"] == "reject"
    assert data["next_node_id"] == "rejected"


def test_snapshots_in_data_events(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.batch()

    events = of_node(encode_spans(kaygraph_spans()), "squares")

    inputs = named(events, "data_input")
    outputs = named(events, "data_output")
    assert [event["data"]["input_snapshot"] for event in inputs] == [[1, 2, 3]]
    assert [event["data"]["output_snapshot"] for event in outputs] == [[1, 4, 9]]


def test_retry_and_failure_event_fields(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.failure()

    events = encode_spans(kaygraph_spans())

    retry = named(of_node(events, "broken"), "retry_attempted")
    assert len(retry) == 1
    assert retry[0]["event_type"] == "error"
    assert retry[0]["data"]["state"] == "retrying"
    assert retry[0]["data"]["error"] == {
        "type": "ValueError",
        "message": "attempt 1 failed",
        "attempt": 1,
        "max_attempts": 2,
    }
    failed = named(of_node(events, "broken"), "node_failed")
    assert len(failed) == 1
    assert failed[0]["data"]["state"] == "failed"
    assert failed[0]["data"]["error"] == {
        "type": "ValueError",
        "message": "attempt 2 failed",
        "phase": "exec",
        "attempt": 2,
    }
    assert named(of_node(events, "broken"), "transition") == []
    timing = named(of_node(events, "broken"), "execution_time")[0]
    assert timing["data"]["state"] == "failed"
    assert timing["data"]["metrics"]["duration_ms"] >= 0
    workflow_failed = named(events, "workflow_failed")
    assert len(workflow_failed) == 1
    assert workflow_failed[0]["data"]["error"]["type"] == "ValueError"


def test_handled_error_events(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.handled_error()

    events = of_node(encode_spans(kaygraph_spans()), "handler")

    failed = named(events, "node_failed")
    assert len(failed) == 1
    assert failed[0]["data"]["state"] == "handled"
    assert failed[0]["data"]["error"]["handled"] is True
    assert failed[0]["data"]["error"]["type"] == "KeyError"
    assert named(events, "execution_time")[0]["data"]["state"] == "handled"
    assert named(events, "transition")[0]["data"]["next_node_id"] == "after"


def test_fallback_event(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.fallback()

    events = named(encode_spans(kaygraph_spans()), "fallback_triggered")

    assert len(events) == 1
    assert events[0]["event_type"] == "error"
    assert events[0]["data"]["error"]["message"] == "attempt 2 failed"
    assert events[0]["data"]["error"]["attempt"] == 2


def test_batch_item_events(kaygraph_spans: Callable[[], list[ReadableSpan]]) -> None:
    kaygraph_scenarios.batch_with_fallback()

    events = encode_spans(kaygraph_spans())

    item_events = [event for event in events if "item_index" in event["data"]]
    assert {event["node_id"] for event in item_events} == {"squares"}
    completed = named(item_events, "node_completed")
    assert sorted(event["data"]["item_index"] for event in completed) == [0, 1, 2]
    assert named(item_events, "node_started") == []
    retries = named(item_events, "retry_attempted")
    assert [event["data"]["item_index"] for event in retries] == [1]
    node_events = [event for event in events if "item_index" not in event["data"]]
    metrics = named(node_events, "queue_depth") + named(node_events, "throughput_metric")
    assert [event["event_type"] for event in metrics] == ["metric", "metric"]
    assert named(node_events, "queue_depth")[0]["data"]["metrics"] == {"queue_depth": 3}
    assert named(node_events, "throughput_metric")[0]["data"]["metrics"]["items"] == 3


def test_event_ids_stable_across_encodings(
    kaygraph_spans: Callable[[], list[ReadableSpan]],
) -> None:
    kaygraph_scenarios.nested()
    spans = kaygraph_spans()

    first = [event["event_id"] for event in encode_spans(spans)]
    second = [event["event_id"] for event in encode_spans(reversed(spans))]

    assert sorted(first) == sorted(second)
    assert len(set(first)) == len(first)


def test_include_started_false_drops_started(
    kaygraph_spans: Callable[[], list[ReadableSpan]],
) -> None:
    kaygraph_scenarios.nested()
    spans = kaygraph_spans()

    with_started = encode_spans(spans)
    without = encode_spans(spans, include_started=False)

    assert {event["event_name"] for event in without}.isdisjoint(STARTED)
    assert [e for e in with_started if e["event_name"] not in STARTED] == without
    node_like = [s for s in spans if s.attributes[attr.NODE_KIND] != "batch_item"]
    assert len([e for e in with_started if e["event_name"] in STARTED]) == len(node_like)


class StartedCapture(SpanProcessor):
    """Span processor that encodes started events as spans start and notes when spans end."""

    def __init__(self) -> None:
        self.timeline: list[tuple[str, Any]] = []

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        self.timeline.append(("start", encode_started_span(span)))

    def on_end(self, span: ReadableSpan) -> None:
        self.timeline.append(("end", span))


@pytest.fixture
def live_provider() -> tuple[TracerProvider, StartedCapture, InMemorySpanExporter]:
    capture = StartedCapture()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(capture)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, capture, exporter


def test_started_events_before_any_span_ends(
    live_provider: tuple[TracerProvider, StartedCapture, InMemorySpanExporter],
) -> None:
    provider, capture, exporter = live_provider

    with instrumented("kaygraph", provider):
        kaygraph_scenarios.nested()

    kind, workflow_started = capture.timeline[0]
    assert kind == "start"
    assert workflow_started is not None
    validate_event(workflow_started)
    assert workflow_started["event_name"] == "workflow_started"
    graph_ids = {node["id"] for node in workflow_started["data"]["graph"]["nodes"]}
    assert graph_ids == {"first", "inner", "inner_a", "inner_b", "last"}
    first_end = next(i for i, (kind, _) in enumerate(capture.timeline) if kind == "end")
    started = [item for kind, item in capture.timeline[:first_end] if kind == "start"]
    assert [event["node_id"] for event in started if event] == ["Graph", "first"]


def test_started_event_ids_match_ended_encoding(
    live_provider: tuple[TracerProvider, StartedCapture, InMemorySpanExporter],
) -> None:
    provider, capture, exporter = live_provider

    with instrumented("pocketflow", provider):
        pocketflow_scenarios.async_flow()
    live = [item for kind, item in capture.timeline if kind == "start" and item is not None]
    ended = [e for e in encode_spans(exporter.get_finished_spans()) if e["event_name"] in STARTED]

    for event in live:
        validate_event(event)
    assert sorted(event["event_id"] for event in live) == sorted(e["event_id"] for e in ended)
    assert {event["node_id"] for event in live} == {"AsyncFlow", "Count", "Triple", "Halve"}


def test_started_event_none_for_items(
    live_provider: tuple[TracerProvider, StartedCapture, InMemorySpanExporter],
) -> None:
    provider, capture, exporter = live_provider

    with instrumented("kaygraph", provider):
        kaygraph_scenarios.batch()

    starts = [item for kind, item in capture.timeline if kind == "start"]
    assert len(starts) == 5
    assert [event["event_name"] for event in starts if event] == [
        "workflow_started",
        "node_started",
    ]


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str is broken")


class HostileInput(kaygraph.Node):
    """Node whose prep returns a cyclic dict that contains an unprintable object."""

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        value: dict[str, Any] = {"object": Unprintable(), "password": "hunter2"}
        value["self"] = value
        return value

    def exec(self, prep_res: dict[str, Any]) -> Unprintable:
        return prep_res["object"]

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["reached_post"] = True


class HostileError(kaygraph.Node):
    def exec(self, prep_res: Any) -> None:
        raise UnprintableError()


class HostileFlowInput(pocketflow.Node):
    def prep(self, shared: dict[str, Any]) -> list[Any]:
        value: list[Any] = [Unprintable()]
        value.append(value)
        return value

    def exec(self, prep_res: list[Any]) -> None:
        raise UnprintableError()


def run_hostile_kaygraph() -> tuple[dict[str, Any], BaseException | None]:
    start = HostileInput(node_id="hostile_input")
    start >> HostileError(node_id="hostile_error")
    shared: dict[str, Any] = {}
    try:
        kaygraph.Graph(start=start).run(shared)
    except UnprintableError as exc:
        return shared, exc
    return shared, None


def test_hostile_values_still_validate(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    plain_shared, plain_error = run_hostile_kaygraph()
    with instrumented("kaygraph", tracer_provider, capture_snapshots=True):
        shared, error = run_hostile_kaygraph()
    events = encode_spans(span_exporter.get_finished_spans())

    assert shared == plain_shared == {"reached_post": True}
    assert type(error) is type(plain_error) is UnprintableError
    for event in events:
        validate_event(event)
    data_input = named(of_node(events, "hostile_input"), "data_input")[0]["data"]
    assert data_input["input_snapshot"] == {
        "object": "<unrepresentable Unprintable object>",
        "password": "[scrubbed]",
        "self": "<cycle to dict>",
    }
    assert data_input["scrubbed"] == ["$.password"]
    data_output = named(of_node(events, "hostile_input"), "data_output")[0]["data"]
    assert data_output["output_snapshot"] == "<unrepresentable Unprintable object>"
    failed = named(of_node(events, "hostile_error"), "node_failed")[0]["data"]["error"]
    assert failed["type"] == "UnprintableError"
    assert failed["message"] == "<unprintable UnprintableError object>"
    assert named(events, "workflow_failed")[0]["data"]["error"]["message"] == (
        "<unprintable UnprintableError object>"
    )


def test_hostile_pocketflow_values_validate(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    with instrumented("pocketflow", tracer_provider, capture_snapshots=True):
        with pytest.raises(UnprintableError):
            pocketflow.Flow(start=HostileFlowInput()).run({})
    events = encode_spans(span_exporter.get_finished_spans())

    for event in events:
        validate_event(event)
    snapshot = named(events, "data_input")[0]["data"]["input_snapshot"]
    assert snapshot == ["<unrepresentable Unprintable object>", "<cycle to list>"]


class LargeOutput(kaygraph.Node):
    def prep(self, shared: dict[str, Any]) -> list[int]:
        return [1, 2]

    def exec(self, prep_res: list[int]) -> dict[str, str]:
        return {"text": "é" * 500}


def test_small_snapshot_cap_validates(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    with instrumented("kaygraph", tracer_provider, capture_snapshots=True, max_snapshot_bytes=256):
        kaygraph.Graph(start=LargeOutput(node_id="large")).run({})
    events = encode_spans(span_exporter.get_finished_spans())

    for event in events:
        validate_event(event)
    data_input = named(of_node(events, "large"), "data_input")[0]["data"]
    assert data_input["input_snapshot"] == [1, 2]
    output = named(of_node(events, "large"), "data_output")[0]["data"]["output_snapshot"]
    assert output["truncated"] is True
    assert output["size_bytes"] > 256
    assert output["prefix"]
    assert len(json.dumps(output, ensure_ascii=False).encode()) <= 256


def test_event_to_json_is_compact_unicode() -> None:
    event = {"node_id": "naïve", "data": {"state": "running"}}

    text = event_to_json(event)

    assert text == '{"node_id":"naïve","data":{"state":"running"}}'


@pytest.mark.parametrize("name", ["", "a", "0" * 48 + "node_started:0", "ü-節点"])
def test_event_id_is_uuid5(name: str) -> None:
    import uuid

    from kaygraph_otel_exporters.encoder import _NAMESPACE, _uuid5

    assert _uuid5(name) == str(uuid.uuid5(_NAMESPACE, name))
