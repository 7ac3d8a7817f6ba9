"""Tests of the dashboard's OTLP/HTTP receiver with the OpenTelemetry SDK's real exporters.

A PocketFlow workflow is traced by an SDK ``TracerProvider`` whose spans go to
the dashboard through the protobuf or the JSON ``OTLPSpanExporter`` (and to an
in-memory exporter, for the expected result). The events the dashboard
publishes must equal what the encoder makes of the same spans locally.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pocketflow
import pytest
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.common.http import Compression as JsonCompression
from opentelemetry.exporter.otlp.json.http.trace_exporter import (
    OTLPSpanExporter as JsonSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as ProtoCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as ProtoSpanExporter,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import kaygraph_otel
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.otlp_spans import readable_spans
from kaygraph_otel_dashboard.server import RunningServer
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans
from tests.helpers import wait_for
from tests.otel_fixtures import validate_event
from tests.test_dashboard import READ_TIMEOUT_S, TOKEN, running

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def build_flow() -> pocketflow.Flow:
    """Return a flow with a retried node, a batch node and a nested flow."""

    class Load(pocketflow.Node):
        def __init__(self) -> None:
            super().__init__(max_retries=2)
            self.failures = 0

        def exec(self, prep_res: Any) -> int:
            if self.failures == 0:
                self.failures += 1
                raise ConnectionError("first attempt fails")
            return 3

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> str:
            shared["count"] = exec_res
            return "loaded"

    class Split(pocketflow.BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return list(range(shared["count"]))

        def exec(self, item: int) -> int:
            return item * 2

    class Check(pocketflow.Node):
        def exec(self, prep_res: Any) -> str:
            return "ok"

    load, split = Load(), Split()
    inner = pocketflow.Flow(start=Check())
    load - "loaded" >> split
    split >> inner
    return pocketflow.Flow(start=load)


def trace_workflow(exporter: SpanExporter) -> list[dict[str, Any]]:
    """Run the flow with spans going to ``exporter``; return the events the encoder expects."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    kaygraph_otel.instrument_pocketflow(tracer_provider=provider)
    try:
        with kaygraph_otel.run_context(workflow_name="otlp_flow"):
            build_flow().run({})
    finally:
        kaygraph_otel.uninstrument_pocketflow()
        provider.shutdown()
    return encode_spans(memory.get_finished_spans(), include_started=True)


@pytest.fixture
def bus() -> EventBus:
    return EventBus(max_buffer=10_000)


@pytest.fixture
def server(bus: EventBus) -> Iterator[RunningServer]:
    with running(create_app(bus=bus, max_body_bytes=1024 * 1024)) as started:
        yield started


def by_id(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {event["event_id"]: event for event in events}


@pytest.mark.parametrize(
    "make_exporter",
    [
        pytest.param(lambda url: ProtoSpanExporter(endpoint=url), id="protobuf"),
        pytest.param(
            lambda url: ProtoSpanExporter(endpoint=url, compression=ProtoCompression.Gzip),
            id="protobuf-gzip",
        ),
        pytest.param(lambda url: JsonSpanExporter(endpoint=url), id="json"),
        pytest.param(
            lambda url: JsonSpanExporter(endpoint=url, compression=JsonCompression.GZIP),
            id="json-gzip",
        ),
    ],
)
def test_otlp_spans_become_events(bus: EventBus, server: RunningServer, make_exporter: Any) -> None:
    expected = trace_workflow(make_exporter(server.url + "/v1/traces"))
    received = bus.recent()
    names = {event["event_name"] for event in received}

    assert len(expected) > 10
    assert by_id(received) == by_id(expected)
    assert len(received) == len(expected)
    assert {"workflow_started", "retry_attempted", "transition", "execution_time"} <= names
    for event in received:
        validate_event(event)


def test_otlp_run_listed_with_graph(bus: EventBus, server: RunningServer) -> None:
    trace_workflow(ProtoSpanExporter(endpoint=server.url + "/v1/traces"))
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        assert wait_for(lambda: len(http.get("/api/runs").json()["runs"]) == 1, 10.0)
        run = http.get("/api/runs").json()["runs"][0]
        graph = http.get(f"/api/runs/{run['correlation_id']}/graph").json()
        health = http.get("/healthz").json()

    states = {node["id"]: node["state"] for node in graph["nodes"]}
    taken = {(edge["source"], edge["action"]): edge["count"] for edge in graph["edges"]}
    assert run["workflow_name"] == "otlp_flow"
    assert run["status"] == "completed"
    assert run["retries"] == 1
    assert set(states.values()) == {"completed"}
    assert taken[("Load", "loaded")] == 1
    assert health["otlp"]["spans"] > 0
    assert health["otlp"]["events"] == len(bus.recent())


def test_otlp_ignores_other_spans(bus: EventBus, server: RunningServer) -> None:
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(ProtoSpanExporter(endpoint=server.url + "/v1/traces"))
    )
    with provider.get_tracer("other").start_as_current_span("GET /users"):
        pass
    provider.shutdown()
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        health = http.get("/healthz").json()
    assert health["otlp"]["spans"] == 1
    assert health["otlp"]["events"] == 0
    assert bus.recent() == []


# ---- limits and errors --------------------------------------------------------------------


def post(server: RunningServer, body: Any, content_type: str, **headers: str) -> httpx.Response:
    with httpx.Client(timeout=READ_TIMEOUT_S) as http:
        return http.post(
            server.url + "/v1/traces",
            content=body,
            headers={"content-type": content_type, **headers},
        )


def test_otlp_rejects_large_body(server: RunningServer) -> None:
    response = post(server, b"\0" * (1024 * 1024 + 1), PROTOBUF)
    status = Status.FromString(response.content)
    assert response.status_code == 413
    assert response.headers["content-type"] == PROTOBUF
    assert "exceeds the limit" in status.message
    assert status.code == 8


def test_otlp_rejects_large_streamed_body(server: RunningServer) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"{" * 65536

    response = post(server, chunks(), JSON)
    assert response.status_code == 413
    assert "exceeds the limit" in response.json()["message"]


def test_otlp_rejects_gzip_bomb(server: RunningServer) -> None:
    bomb = gzip.compress(b" " * (8 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    response = post(server, bomb, JSON, **{"content-encoding": "gzip"})
    assert response.status_code == 413
    assert "decompressed" in response.json()["message"]


@pytest.mark.parametrize(
    ("body", "content_type", "extra", "status", "fragment"),
    [
        (b"hello", "text/plain", {}, 415, "Content-Type"),
        (b"{}", JSON, {"content-encoding": "br"}, 415, "Content-Encoding"),
        (b"\xff\xff\xff", PROTOBUF, {}, 400, "invalid protobuf"),
        (b"{not json", JSON, {}, 400, "invalid JSON"),
        (b"[1]", JSON, {}, 400, "expected an object"),
        (b"not gzip", JSON, {"content-encoding": "gzip"}, 400, "invalid gzip"),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
                {"traceId": "zz", "spanId": "0102030405060708", "name": "x"}]}]}]}).encode(),
            JSON, {}, 400, "not hex",
        ),
        (
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
                {"traceId": "0102", "spanId": "0102030405060708", "name": "x"}]}]}]}).encode(),
            JSON, {}, 400, "trace_id",
        ),
    ],
)  # fmt: skip
def test_otlp_rejects_invalid_request(
    server: RunningServer,
    body: bytes,
    content_type: str,
    extra: dict[str, str],
    status: int,
    fragment: str,
) -> None:
    response = post(server, body, content_type, **extra)
    assert response.status_code == status
    assert fragment in response.text


def test_otlp_empty_json_request_accepted(server: RunningServer) -> None:
    response = post(server, b"{}", JSON)
    assert response.status_code == 200
    assert response.json() == {}


def test_otlp_requires_token(bus: EventBus) -> None:
    with running(create_app(bus=bus, token=TOKEN)) as server:
        anonymous = post(server, b"{}", JSON)
        expected = trace_workflow(
            ProtoSpanExporter(
                endpoint=server.url + "/v1/traces", headers={"authorization": f"Bearer {TOKEN}"}
            )
        )
    assert anonymous.status_code == 401
    assert by_id(bus.recent()) == by_id(expected)


def json_request(*spans: dict[str, Any]) -> bytes:
    return json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": list(spans)}]}]}).encode()


def json_span(kind: str, **extra: Any) -> dict[str, Any]:
    """Return an OTLP/JSON span of kind ``kind`` with trace id 1 and span id 1."""
    attributes = [{"key": "kaygraph.node_kind", "value": {"stringValue": kind}}]
    attributes.extend(
        {"key": key, "value": {"stringValue": value}}
        for key, value in extra.pop("attributes", {}).items()
    )
    return {
        "traceId": "0" * 31 + "1",
        "spanId": "0" * 15 + "1",
        "name": "n",
        "startTimeUnixNano": "1",
        "attributes": attributes,
        **extra,
    }


def test_otlp_deeply_nested_json_rejected(server: RunningServer) -> None:
    response = post(server, b"[" * 100_000 + b"]" * 100_000, JSON)
    assert response.status_code == 400
    assert "nested deeper" in response.json()["message"]


def test_otlp_span_without_start_time_accepted(bus: EventBus, server: RunningServer) -> None:
    span = json_span("node", startTimeUnixNano="0", endTimeUnixNano="2")
    response = post(server, json_request(span), JSON)
    assert response.status_code == 200
    durations = [
        event["data"]["metrics"]["duration_ms"]
        for event in bus.recent()
        if event["event_name"] == "execution_time"
    ]
    assert durations == [0.0]


def test_otlp_deep_graph_structure_dropped(bus: EventBus, server: RunningServer) -> None:
    deep = "[" * 50_000 + "]" * 50_000
    span = json_span("workflow", attributes={"kaygraph.graph.structure": deep})
    response = post(server, json_request(span), JSON)
    started = [event for event in bus.recent() if event["event_name"] == "workflow_started"]
    assert response.status_code == 200
    assert len(started) == 1
    assert "graph" not in started[0]["data"]


def test_otlp_spans_share_request_resource() -> None:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    service = resource_spans.resource.attributes.add()
    service.key, service.value.string_value = "service.name", "billing"
    nested = resource_spans.resource.attributes.add()
    nested.key = "nested"
    nested.value.kvlist_value.values.add(key="a").value.int_value = 1
    scope_spans = resource_spans.scope_spans.add()
    for index in range(1, 3):
        span = scope_spans.spans.add()
        span.trace_id = (7).to_bytes(16, "big")
        span.span_id = index.to_bytes(8, "big")

    first, second = readable_spans(request)
    assert first.resource is second.resource
    assert first.resource.attributes == {"service.name": "billing"}


class _ThreadRecordingBus(EventBus):
    """A bus that records whether each ``publish_many`` call ran on an event loop thread."""

    def __init__(self) -> None:
        super().__init__(max_buffer=100)
        self.on_event_loop: list[bool] = []

    def publish_many(self, events: Any) -> None:
        try:
            asyncio.get_running_loop()
            self.on_event_loop.append(True)
        except RuntimeError:
            self.on_event_loop.append(False)
        super().publish_many(events)


def test_otlp_publishes_off_event_loop() -> None:
    bus = _ThreadRecordingBus()
    with running(create_app(bus=bus)) as server:
        response = post(server, json_request(json_span("node", endTimeUnixNano="2")), JSON)
    assert response.status_code == 200
    assert bus.on_event_loop == [False]
