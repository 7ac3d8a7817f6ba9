"""LiveSpanProcessor: started events go out while the span is open, with real Redis and bus."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

from kaygraph_otel import attributes as attrs
from kaygraph_otel_exporters import BusEventExporter, LiveSpanProcessor, RedisEventExporter, encoder
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans
from kaygraph_otel_exporters.live import PENDING, estimate_events
from tests.exporter_support import (
    ChannelReader,
    complete_node_span,
    make_tracer,
    names_and_nodes,
    run_node,
    schema_errors,
    start_node_span,
)
from tests.helpers import free_port, wait_for

FAST_DELAY_MS = 50


class RecordingBusExporter(BusEventExporter):
    """A real BusEventExporter that also records every span passed to ``export``."""

    def __init__(self, bus: EventBus) -> None:
        super().__init__(bus)
        self.batches: list[list[ReadableSpan]] = []
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.batches.append(list(spans))
        return super().export(spans)

    def spans(self) -> list[ReadableSpan]:
        with self._lock:
            return [span for batch in self.batches for span in batch]


class RecordOnlySampler(Sampler):
    """Record every span without sampling it."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_ONLY)

    def get_description(self) -> str:
        return "RecordOnlySampler"


@pytest.fixture
def channel() -> str:
    return f"kaygraph:test:{uuid.uuid4().hex}"


@pytest.fixture
def reader(redis_url: str, channel: str) -> Iterator[ChannelReader]:
    subscriber = ChannelReader(redis_url, channel)
    yield subscriber
    subscriber.close()


class TestRedisLivePath:
    def test_started_event_arrives_while_span_open(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        # include_started=True checks that the processor turns it off: otherwise the
        # ended span would repeat the started event.
        exporter = RedisEventExporter(redis_url, channel, include_started=True)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(
            LiveSpanProcessor(exporter, schedule_delay_millis=FAST_DELAY_MS),
            SimpleSpanProcessor(memory),
        )
        span = start_node_span(tracer, "slow-node")

        started = reader.read(1)

        assert span.is_recording()
        assert [event["event_name"] for event in started] == ["node_started"]
        assert started[0]["node_id"] == "slow-node"
        assert started[0]["data"]["state"] == "running"
        assert schema_errors(started[0]) == []

        complete_node_span(span)
        provider.force_flush()
        after_end = encode_spans(memory.get_finished_spans(), include_started=False)
        ended = reader.read(len(after_end))
        extra = reader.read_all(quiet_period=0.5)
        provider.shutdown()

        assert names_and_nodes(ended) == names_and_nodes(after_end)
        assert "node_completed" in [event["event_name"] for event in ended]
        assert extra == []
        everything = started + ended
        assert len({event["event_id"] for event in everything}) == len(everything)
        assert [event["event_name"] for event in everything].count("node_started") == 1
        for event in ended:
            assert schema_errors(event) == [], event

    def test_nested_spans_keep_start_order(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        # include_started=True checks that the processor turns it off: otherwise the
        # ended span would repeat the started event.
        exporter = RedisEventExporter(redis_url, channel, include_started=True)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(
            LiveSpanProcessor(exporter, schedule_delay_millis=FAST_DELAY_MS),
            SimpleSpanProcessor(memory),
        )
        outer = start_node_span(tracer, "outer")
        inner = start_node_span(tracer, "inner", node_type="Inner", parent=outer)
        complete_node_span(inner)
        complete_node_span(outer)
        provider.shutdown()

        spans = memory.get_finished_spans()
        expected = encode_spans(spans, include_started=True)
        received = reader.read(len(expected))
        pairs = names_and_nodes(received)

        assert sorted(pairs) == sorted(names_and_nodes(expected))
        assert pairs.index(("node_started", "outer")) < pairs.index(("node_started", "inner"))
        assert pairs.index(("node_started", "inner")) < pairs.index(("node_completed", "inner"))
        assert pairs.index(("node_completed", "inner")) < pairs.index(("node_completed", "outer"))
        assert reader.read_all(quiet_period=0.3) == []

    def test_many_spans_no_duplicates(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        # include_started=True checks that the processor turns it off: otherwise the
        # ended span would repeat the started event.
        exporter = RedisEventExporter(redis_url, channel, include_started=True)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(
            LiveSpanProcessor(exporter, schedule_delay_millis=FAST_DELAY_MS),
            SimpleSpanProcessor(memory),
        )
        for index in range(50):
            run_node(tracer, f"node-{index}")
        provider.shutdown()

        expected = encode_spans(memory.get_finished_spans(), include_started=True)
        received = reader.read(len(expected))

        assert sorted(names_and_nodes(received)) == sorted(names_and_nodes(expected))
        assert len({event["event_id"] for event in received}) == len(received)
        for index in range(50):
            pairs = names_and_nodes(received)
            node_id = f"node-{index}"
            assert pairs.index(("node_started", node_id)) < pairs.index(("node_completed", node_id))
        assert reader.read_all(quiet_period=0.3) == []

    def test_redis_down_never_reaches_workflow(self, caplog: pytest.LogCaptureFixture) -> None:
        # Nothing listens on this port because it was free when checked and the test
        # binds nothing to it.
        exporter = RedisEventExporter(f"redis://127.0.0.1:{free_port()}/0")
        provider, tracer = make_tracer(
            LiveSpanProcessor(exporter, schedule_delay_millis=FAST_DELAY_MS)
        )
        caplog.set_level(logging.WARNING, logger="kaygraph_otel_exporters.redis")

        for index in range(20):
            run_node(tracer, f"offline-{index}")
        provider.shutdown()

        assert exporter.drops.total >= 20
        assert set(exporter.drops.by_reason()) == {"connection"}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1


class TestBusLivePath:
    def test_started_event_reaches_bus_subscriber(self) -> None:
        bus = EventBus()

        async def scenario() -> tuple[dict[str, Any], bool, dict[str, Any]]:
            subscription = bus.subscribe()
            provider, tracer = make_tracer(
                LiveSpanProcessor(BusEventExporter(bus), schedule_delay_millis=FAST_DELAY_MS)
            )
            span = start_node_span(tracer, "bus-node")
            started = await asyncio.wait_for(subscription.get(), timeout=10)
            still_open = span.is_recording()
            complete_node_span(span)
            completed = await asyncio.wait_for(subscription.get(), timeout=10)
            while completed is not None and completed["event_name"] != "node_completed":
                completed = await asyncio.wait_for(subscription.get(), timeout=10)
            await asyncio.to_thread(provider.shutdown)
            subscription.close()
            assert started is not None
            assert completed is not None
            return started, still_open, completed

        started, still_open, completed = asyncio.run(scenario())

        assert started["event_name"] == "node_started"
        assert still_open
        assert completed["node_id"] == "bus-node"
        assert schema_errors(started) == []
        assert schema_errors(completed) == []


class TestSpanSelection:
    def make(self) -> tuple[RecordingBusExporter, LiveSpanProcessor]:
        exporter = RecordingBusExporter(EventBus())
        return exporter, LiveSpanProcessor(exporter, schedule_delay_millis=FAST_DELAY_MS)

    def test_pending_copy_is_frozen_start(self) -> None:
        exporter, processor = self.make()
        provider, tracer = make_tracer(processor)
        span = start_node_span(tracer, "copy-me")
        processor.force_flush()

        pending = exporter.spans()
        complete_node_span(span)
        provider.shutdown()

        assert len(pending) == 1
        copy = pending[0]
        assert copy is not span
        assert copy.end_time is None
        assert copy.events == ()
        assert copy.attributes is not None
        assert copy.attributes[PENDING] is True
        assert copy.attributes[attrs.NODE_ID] == "copy-me"
        assert copy.name == span.name
        assert copy.context == span.context
        assert copy.parent == span.parent
        assert copy.kind == span.kind
        assert copy.start_time == span.start_time
        assert copy.resource is span.resource
        assert copy.instrumentation_scope == span.instrumentation_scope
        assert span.attributes is not None
        assert PENDING not in span.attributes

    def test_ended_span_follows_pending_copy(self) -> None:
        exporter, processor = self.make()
        provider, tracer = make_tracer(processor)
        span = run_node(tracer, "both")
        provider.shutdown()

        spans = exporter.spans()

        assert [s.end_time is None for s in spans] == [True, False]
        assert spans[0].context == span.context
        assert spans[1].context == span.context

    def test_foreign_spans_ignored(self) -> None:
        exporter, processor = self.make()
        provider, tracer = make_tracer(processor)
        with tracer.start_as_current_span("http request", attributes={"http.method": "GET"}):
            run_node(tracer, "inside")
        provider.shutdown()

        names = [span.name for span in exporter.spans()]

        assert "http request" not in names
        assert len(names) == 2

    def test_unsampled_spans_ignored(self) -> None:
        exporter, processor = self.make()
        # RECORD_ONLY spans are recording, so the SDK calls on_start and on_end for
        # them, but they are not sampled and must not be exported.
        provider, tracer = make_tracer(processor, sampler=RecordOnlySampler())
        run_node(tracer, "unsampled")
        provider.shutdown()

        assert exporter.spans() == []

    def test_broken_span_never_raises(self, caplog: pytest.LogCaptureFixture) -> None:
        _, processor = self.make()
        caplog.set_level(logging.DEBUG, logger="kaygraph_otel_exporters.live")

        processor.on_start(object())  # type: ignore[arg-type]
        processor.on_end(object())  # type: ignore[arg-type]
        processor.shutdown()

        assert "Queueing the pending copy of span" in caplog.text
        assert "Queueing ended span" in caplog.text


class TestConstruction:
    def test_plain_exporter_rejected(self) -> None:
        with pytest.raises(TypeError, match="InMemorySpanExporter cannot export pending spans"):
            LiveSpanProcessor(InMemorySpanExporter())

    def test_turns_off_started_events_on_exporter(self) -> None:
        exporter = BusEventExporter(EventBus(), include_started=True)

        processor = LiveSpanProcessor(exporter)

        assert exporter.include_started is False
        processor.shutdown()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"schedule_delay_millis": 0}, "schedule_delay_millis must be a whole number"),
            ({"schedule_delay_millis": 10**11}, "from 1 to 60000, got 100000000000"),
            ({"schedule_delay_millis": 10**20}, "from 1 to 60000"),
            ({"schedule_delay_millis": True}, "schedule_delay_millis must be a whole number"),
            ({"max_queue_size": 0}, "max_queue_size must be positive"),
            ({"max_queue_size": 10, "max_export_batch_size": 11}, "max_export_batch_size"),
        ],
    )
    def test_invalid_sizes_rejected(self, kwargs: dict[str, int], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            LiveSpanProcessor(BusEventExporter(EventBus()), **kwargs)

    def test_shutdown_exports_queued_spans(self) -> None:
        exporter = RecordingBusExporter(EventBus())
        # A long delay keeps spans queued until shutdown flushes them.
        processor = LiveSpanProcessor(exporter, schedule_delay_millis=60_000)
        provider, tracer = make_tracer(processor)
        run_node(tracer, "queued")

        provider.shutdown()

        assert len(exporter.spans()) == 2
        assert processor.force_flush() is False


class GatedBusExporter(RecordingBusExporter):
    """A real BusEventExporter whose sends wait until ``gate`` is set, as a hanging backend."""

    def __init__(self, bus: EventBus, gate: threading.Event) -> None:
        super().__init__(bus)
        self._gate = gate

    def _send(self, events: list[dict[str, Any]]) -> None:
        self._gate.wait(GATE_TIMEOUT_S)
        super()._send(events)


GATE_TIMEOUT_S = 10.0


class TestDropsWithoutEncoding:
    def test_queue_full_not_encoded_on_workflow_thread(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        encoding_threads: list[str] = []
        event = encoder._SpanFields.event

        def recording_event(fields: Any, *args: Any) -> dict[str, Any]:
            encoding_threads.append(threading.current_thread().name)
            return event(fields, *args)

        monkeypatch.setattr(encoder._SpanFields, "event", recording_event)
        gate = threading.Event()
        exporter = GatedBusExporter(EventBus(), gate)
        processor = LiveSpanProcessor(exporter, max_queue_size=2, max_export_batch_size=2)
        provider, tracer = make_tracer(processor)
        try:
            for index in range(4):
                run_node(tracer, f"dropped-{index}")
            dropped = exporter.stats()["dropped_by_reason"]
        finally:
            gate.set()
            provider.shutdown()

        assert dropped["queue_full"] > 0
        assert threading.main_thread().name not in encoding_threads

    def test_estimate_matches_encoder(self) -> None:
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(SimpleSpanProcessor(memory))
        parent = start_node_span(tracer, "parent")
        child = start_node_span(tracer, "child", parent=parent)
        child.set_attribute(attrs.NEXT_NODE_ID, "next")
        complete_node_span(child)
        complete_node_span(parent)
        provider.shutdown()

        for span in memory.get_finished_spans():
            for include_started in (True, False):
                expected = len(encode_spans([span], include_started=include_started))
                assert estimate_events(span, include_started) == expected

    def test_shutdown_timeout_counts_queued_events(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger="kaygraph_otel_exporters.live")
        gate = threading.Event()
        exporter = GatedBusExporter(EventBus(), gate)
        processor = LiveSpanProcessor(
            exporter,
            schedule_delay_millis=60_000,
            max_export_batch_size=2,
            shutdown_timeout_millis=200,
        )
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(processor, SimpleSpanProcessor(memory))
        try:
            # The first node's two spans fill a batch, which the worker takes and blocks on.
            run_node(tracer, "exporting")
            queue = processor._queue
            assert queue is not None
            assert wait_for(lambda: not queue, 10.0)
            run_node(tracer, "queued-1")
            run_node(tracer, "queued-2")
            processor.shutdown()
            dropped = exporter.stats()["dropped_by_reason"]
        finally:
            gate.set()
        queued = [
            s for s in memory.get_finished_spans() if s.attributes[attrs.NODE_ID] != "exporting"
        ]

        # Each queued node has a pending copy (node_started) and its ended span
        # (node_completed and execution_time, the started event being already sent).
        expected = len(queued) * 3
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert dropped == {"shutdown": expected}
        assert len(warnings) == 1
        assert f"dropped about {expected} queued events" in warnings[0]
