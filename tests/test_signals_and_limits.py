"""Metrics, log-record events, phase spans, sampling, batch limits and instrumentation failures,
on real PocketFlow workflows."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pocketflow
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from kaygraph_otel import attributes as attr
from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel._metrics import INSTRUMENTS
from kaygraph_otel_exporters.encoder import encode_spans
from tests.otel_fixtures import validate_event


class Double(pocketflow.Node):
    def prep(self, shared: dict[str, Any]) -> int:
        return shared["value"]

    def exec(self, value: int) -> int:
        return value * 2

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["value"] = exec_res
        return "default"


class Flaky(pocketflow.Node):
    """Fails its first two attempts, then succeeds."""

    def exec(self, prep_res: Any) -> str:
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls < 3:
            raise ConnectionError(f"attempt {self.calls} failed")
        return "ok"


class Broken(pocketflow.Node):
    def exec(self, prep_res: Any) -> Any:
        raise KeyError("missing")


class Squares(pocketflow.BatchNode):
    """Squares 0..n-1; items divisible by 1000 fail once and then fall back to -1."""

    def prep(self, shared: dict[str, Any]) -> range:
        return range(shared["items"])

    def exec(self, item: int) -> int:
        if item % 1000 == 999:
            raise ValueError(f"item {item} is unlucky")
        return item * item

    def exec_fallback(self, item: int, exc: Exception) -> int:
        return -1

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["squares"] = exec_res


@pytest.fixture
def provider() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider, exporter
    tracer_provider.shutdown()


@pytest.fixture
def uninstrument() -> Iterator[None]:
    yield
    uninstrument_pocketflow()


def metric_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    points: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
                assert metric.unit == INSTRUMENTS[metric.name][0]
    return points


def test_metrics_count_executions_errors_retries(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    instrument_pocketflow(tracer_provider=provider[0], meter_provider=meter_provider)
    first = Double()
    first >> Flaky(max_retries=3)
    pocketflow.Flow(start=first).run({"value": 2})
    with pytest.raises(KeyError):
        pocketflow.Flow(start=Broken()).run({})
    points = metric_points(reader)

    def total(name: str, **wanted: str) -> float:
        return sum(
            getattr(p, "value", getattr(p, "count", 0))
            for p in points.get(name, [])
            if all(p.attributes.get(key) == value for key, value in wanted.items())
        )

    node_type = attr.NODE_TYPE
    assert (
        total("kaygraph.node.executions", **{node_type: "Double", attr.OUTCOME: "completed"}) == 1
    )
    assert total("kaygraph.node.executions", **{node_type: "Broken", attr.OUTCOME: "failed"}) == 1
    assert total("kaygraph.node.errors", **{node_type: "Broken", attr.ERROR_TYPE: "KeyError"}) == 1
    assert total("kaygraph.node.retries", **{node_type: "Flaky"}) == 2
    assert total("kaygraph.node.duration", **{node_type: "Flow"}) == 2
    assert total("kaygraph.node.active") == 0
    transitions = [p for p in points["kaygraph.transitions"] if p.value]
    assert [
        (p.attributes[attr.TRANSITION_FROM], p.attributes[attr.TRANSITION_TO]) for p in transitions
    ] == [("Double", "Flaky")]


def test_log_signal_emits_event_records(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    instrument_pocketflow(
        tracer_provider=provider[0], logger_provider=logger_provider, event_signal="log"
    )
    pocketflow.Flow(start=Double()).run({"value": 1})

    records = [r.log_record for r in log_exporter.get_finished_logs()]
    names = [r.event_name for r in records]
    assert names[:3] == [
        "kaygraph.workflow_started",
        "kaygraph.node_preparing",
        "kaygraph.node_started",
    ]
    assert "kaygraph.node_completed" in names
    spans = {s.attributes[attr.NODE_ID]: s for s in provider[1].get_finished_spans()}
    node_record = next(r for r in records if r.event_name == "kaygraph.node_completed")
    assert node_record.span_id == spans["Double"].context.span_id
    assert node_record.attributes[attr.NODE_ID] == "Double"
    assert all(event.name == "exception" for s in spans.values() for event in s.events)


def test_both_signals_keep_span_events(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    instrument_pocketflow(
        tracer_provider=provider[0], logger_provider=logger_provider, event_signal="both"
    )
    pocketflow.Flow(start=Double()).run({"value": 1})
    span_events = sum(len(s.events) for s in provider[1].get_finished_spans())
    assert span_events == len(log_exporter.get_finished_logs())


def test_phase_spans_replace_phase_events(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    instrument_pocketflow(tracer_provider=provider[0], phase_spans=True, max_item_spans=3)
    first = Double()
    first >> Squares()
    shared: dict[str, Any] = {"value": 1, "items": 3}
    pocketflow.Flow(start=first).run(shared)

    assert shared["squares"] == [0, 1, 4]
    spans = list(provider[1].get_finished_spans())
    by_id = {s.context.span_id: s for s in spans}
    phases = [s for s in spans if s.attributes[attr.NODE_KIND] == "phase"]
    double_phases = sorted(s.name for s in phases if s.attributes[attr.NODE_ID] == "Double")
    assert double_phases == ["exec Double", "post Double", "prep Double"]
    for phase in phases:
        parent = by_id[phase.parent.span_id]
        assert parent.attributes[attr.NODE_KIND] in ("node", "workflow")
    items = [s for s in spans if s.attributes[attr.NODE_KIND] == "batch_item"]
    assert len(items) == 3
    assert {by_id[i.parent.span_id].name for i in items} == {"exec Squares"}
    node = next(s for s in spans if s.name == "node Double")
    assert "node_preparing" not in [e.name for e in node.events]
    events = encode_spans(spans)
    for event in events:
        validate_event(event)
    double_events = [e["event_name"] for e in events if e["node_id"] == "Double"]
    assert double_events.count("node_preparing") == 1
    assert double_events.count("node_executing") == 1


def test_sampled_out_runs_unchanged_without_events(uninstrument: None) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ALWAYS_OFF)
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument_pocketflow(tracer_provider=tracer_provider)
    first = Double()
    first >> Flaky(max_retries=3)
    shared: dict[str, Any] = {"value": 3}
    pocketflow.Flow(start=first).run(shared)
    assert shared == {"value": 6}
    assert exporter.get_finished_spans() == ()


def test_large_batch_keeps_failures_and_counts(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    instrument_pocketflow(tracer_provider=provider[0], max_item_spans=20)
    shared: dict[str, Any] = {"items": 10_000}
    pocketflow.Flow(start=Squares()).run(shared)

    assert shared["squares"][:3] == [0, 1, 4]
    assert shared["squares"].count(-1) == 10
    spans = list(provider[1].get_finished_spans())
    items = [s for s in spans if s.attributes[attr.NODE_KIND] == "batch_item"]
    assert len(items) == 20
    node = next(s for s in spans if s.name == "node Squares")
    assert node.attributes[attr.BATCH_SIZE] == 10_000
    assert node.attributes[attr.BATCH_SUCCEEDED] == 10_000
    assert node.attributes[attr.BATCH_SPANS_DROPPED] == 9_980
    assert node.attributes[attr.FALLBACK_COUNT] == 10
    fallbacks = [e for e in node.events if e.name == "fallback_triggered"]
    assert sorted(e.attributes[attr.BATCH_ITEM_INDEX] for e in fallbacks) == list(
        range(999, 10_000, 1000)
    )
    assert all(e.attributes[attr.EVENT_ERROR_TYPE] == "ValueError" for e in fallbacks)
    assert len(node.events) < 128
    assert node.dropped_events == 0


class ExplodingTracer:
    """A tracer whose spans cannot be started: the instrumentation's own failure path.

    NOTE: a test double, because a real SDK tracer does not fail on demand.
    """

    def start_span(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("tracer is broken")


class ExplodingProvider:
    def get_tracer(self, *args: Any, **kwargs: Any) -> ExplodingTracer:
        return ExplodingTracer()


def test_instrumentation_failure_leaves_workflow_alone(
    uninstrument: None, caplog: pytest.LogCaptureFixture
) -> None:
    instrument_pocketflow(tracer_provider=ExplodingProvider())
    shared: dict[str, Any] = {"value": 5}
    with caplog.at_level(logging.DEBUG, logger="kaygraph_otel"):
        result = pocketflow.Flow(start=Double()).run(shared)
    assert shared == {"value": 10}
    assert result == "default"
    failures = [r for r in caplog.records if "instrumentation failed" in r.getMessage()]
    assert failures
    assert all(r.levelno == logging.DEBUG for r in failures)


def test_encoded_events_of_spans_validate(
    provider: tuple[TracerProvider, InMemorySpanExporter], uninstrument: None
) -> None:
    instrument_pocketflow(tracer_provider=provider[0], capture_snapshots=True)
    first = Double()
    first >> Squares()
    pocketflow.Flow(start=first).run({"value": 1, "items": 1001})
    spans: list[ReadableSpan] = list(provider[1].get_finished_spans())
    events = encode_spans(spans)
    assert len(events) > 20
    for event in events:
        validate_event(event)
