"""RedisEventExporter against a real redis-server, plus its drop accounting and URL redaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel_exporters import RedisEventExporter
from kaygraph_otel_exporters._drops import DropReporter
from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.encoder import encode_spans
from tests.exporter_support import (
    ChannelReader,
    make_tracer,
    names_and_nodes,
    run_node,
    schema_errors,
)
from tests.helpers import free_port
from tests.redis_server import RedisServer

EXPORTER_LOGGER = "kaygraph_otel_exporters.redis"


@pytest.fixture
def channel() -> str:
    return f"kaygraph:test:{uuid.uuid4().hex}"


@pytest.fixture
def reader(redis_url: str, channel: str) -> Iterator[ChannelReader]:
    subscriber = ChannelReader(redis_url, channel)
    yield subscriber
    subscriber.close()


def finished_node_spans(count: int) -> list[ReadableSpan]:
    """Return ``count`` ended node spans, recorded by the SDK into memory."""
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    for index in range(count):
        run_node(tracer, f"node-{index}")
    provider.shutdown()
    return list(memory.get_finished_spans())


def publish_calls(url: str) -> int:
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        stats: dict[str, Any] = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


class SendCountingConnection(redis.Connection):
    """A real redis-py connection that counts its writes of packed commands."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


class TestPublish:
    def test_events_reach_subscriber_in_order(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        exporter = RedisEventExporter(redis_url, channel, include_started=True)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(SimpleSpanProcessor(memory), SimpleSpanProcessor(exporter))
        for node_id in ("load", "summarize", "store"):
            run_node(tracer, node_id)
        provider.shutdown()

        expected = encode_spans(memory.get_finished_spans(), include_started=True)
        received = reader.read(len(expected))

        assert names_and_nodes(received) == names_and_nodes(expected)
        for event in received:
            assert schema_errors(event) == [], event
        assert [name for name, node in names_and_nodes(received) if node == "load"][:1] == [
            "node_started"
        ]
        assert ("node_completed", "store") in names_and_nodes(received)
        assert exporter.drops.total == 0

    def test_without_started_events(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        spans = finished_node_spans(2)
        exporter = RedisEventExporter(redis_url, channel, include_started=False)

        assert exporter.export(spans) is SpanExportResult.SUCCESS
        received = reader.read(len(encode_spans(spans, include_started=False)))

        names = [event["event_name"] for event in received]
        assert "node_started" not in names
        assert names.count("node_completed") == 2
        assert reader.read_all(quiet_period=0.3) == []

    def test_one_batch_is_one_round_trip(
        self, redis_server: RedisServer, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        pool = redis.ConnectionPool(
            connection_class=SendCountingConnection,
            host="127.0.0.1",
            port=redis_server.port,
            socket_timeout=2,
        )
        client = redis.Redis(connection_pool=pool)
        exporter = RedisEventExporter(channel=channel, client=client, include_started=True)
        # The first export opens the connection, which sends handshake commands of its own.
        warm_up = finished_node_spans(1)
        warm_up_count = len(encode_spans(warm_up, include_started=True))
        assert exporter.export(warm_up) is SpanExportResult.SUCCESS
        spans = finished_node_spans(20)
        event_count = len(encode_spans(spans, include_started=True))
        publishes_before = publish_calls(redis_url)
        sends_before = SendCountingConnection.sends

        assert exporter.export(spans) is SpanExportResult.SUCCESS

        assert event_count >= 40
        assert publish_calls(redis_url) - publishes_before == event_count
        assert SendCountingConnection.sends - sends_before == 1
        assert len(reader.read(warm_up_count + event_count)) == warm_up_count + event_count
        client.close()

    def test_foreign_spans_publish_nothing(
        self, redis_url: str, channel: str, reader: ChannelReader
    ) -> None:
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(SimpleSpanProcessor(memory))
        with tracer.start_as_current_span("http request", attributes={"http.method": "GET"}):
            pass
        provider.shutdown()
        exporter = RedisEventExporter(redis_url, channel)
        publishes_before = publish_calls(redis_url)

        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS

        assert publish_calls(redis_url) == publishes_before
        assert reader.read_all(quiet_period=0.3) == []


class TestFailures:
    def test_unreachable_redis_fails_quietly(self, caplog: pytest.LogCaptureFixture) -> None:
        # Nothing listens on this port because it was free when checked and the test
        # binds nothing to it.
        port = free_port()
        exporter = RedisEventExporter(
            f"redis://user:hunter2secret@127.0.0.1:{port}/0",
            socket_connect_timeout=1.0,
            include_started=False,
        )
        spans = finished_node_spans(2)
        events_per_batch = len(encode_spans(spans, include_started=False))
        caplog.set_level(logging.DEBUG, logger=EXPORTER_LOGGER)

        results = [exporter.export(spans) for _ in range(5)]

        assert results == [SpanExportResult.FAILURE] * 5
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1
        message = warnings[0].getMessage()
        assert "RedisEventExporter" in message
        assert f"127.0.0.1:{port}" in message
        assert "hunter2secret" not in caplog.text
        assert f"Dropped {events_per_batch} events" in message
        assert exporter.drops.total == 5 * events_per_batch
        assert exporter.drops.by_reason() == {"connection": 5 * events_per_batch}

    def test_recovers_after_redis_restart(
        self, redis_server: RedisServer, redis_url: str, channel: str
    ) -> None:
        exporter = RedisEventExporter(
            redis_url, channel, socket_connect_timeout=1.0, include_started=False
        )
        spans = finished_node_spans(1)
        expected = encode_spans(spans, include_started=False)
        assert exporter.export(spans) is SpanExportResult.SUCCESS

        redis_server.stop()
        try:
            assert exporter.export(spans) is SpanExportResult.FAILURE
            assert exporter.drops.total > 0
        finally:
            redis_server.start()

        reader = ChannelReader(redis_url, channel)
        try:
            assert exporter.export(spans) is SpanExportResult.SUCCESS
            received = reader.read(len(expected))
        finally:
            reader.close()
        assert names_and_nodes(received) == names_and_nodes(expected)
        assert "node_completed" in [event["event_name"] for event in received]

    def test_recovery_logs_unreported_drops(
        self,
        redis_server: RedisServer,
        redis_url: str,
        channel: str,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        exporter = RedisEventExporter(
            redis_url, channel, socket_connect_timeout=1.0, include_started=False
        )
        spans = finished_node_spans(1)
        events_per_batch = len(encode_spans(spans, include_started=False))
        caplog.set_level(logging.INFO, logger=EXPORTER_LOGGER)
        redis_server.stop()
        try:
            for _ in range(3):
                exporter.export(spans)
        finally:
            redis_server.start()

        assert exporter.export(spans) is SpanExportResult.SUCCESS

        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        unreported = f"Dropped {2 * events_per_batch} more events"
        assert any("exports to" in text and unreported in text for text in infos)

    def test_export_after_shutdown_fails(self, redis_url: str, channel: str) -> None:
        exporter = RedisEventExporter(redis_url, channel)
        exporter.shutdown()

        assert exporter.export(finished_node_spans(1)) is SpanExportResult.FAILURE
        assert exporter.force_flush() is True

    def test_shutdown_leaves_given_client_open(self, redis_url: str, channel: str) -> None:
        client = redis.Redis.from_url(redis_url, socket_timeout=2)
        exporter = RedisEventExporter(channel=channel, client=client)
        assert exporter.export(finished_node_spans(1)) is SpanExportResult.SUCCESS

        exporter.shutdown()

        assert client.ping() is True
        client.close()


class TestArguments:
    def test_empty_channel_rejected(self) -> None:
        with pytest.raises(ValueError, match="channel must be a non-empty string, got ''"):
            RedisEventExporter("redis://127.0.0.1:6379/0", "")

    def test_unsupported_scheme_rejected(self) -> None:
        with pytest.raises(ValueError, match="unsupported Redis URL scheme 'http'") as info:
            RedisEventExporter("http://user:topsecret@127.0.0.1:6379/0")
        assert "topsecret" not in str(info.value)
        assert "redis://" in str(info.value)

    def test_invalid_port_rejected(self) -> None:
        with pytest.raises(ValueError, match="invalid Redis URL") as info:
            RedisEventExporter("redis://:topsecret@127.0.0.1:notaport/0")
        assert "topsecret" not in str(info.value)

    @pytest.mark.parametrize("name", ["socket_timeout", "socket_connect_timeout"])
    @pytest.mark.parametrize("value", [0, -1.0, None])
    def test_timeouts_must_be_positive(self, name: str, value: Any) -> None:
        with pytest.raises(ValueError, match=f"{name} must be a positive number of seconds"):
            RedisEventExporter(**{name: value})

    def test_negative_health_check_rejected(self) -> None:
        with pytest.raises(ValueError, match="health_check_interval must be"):
            RedisEventExporter(health_check_interval=-1)

    def test_client_built_without_retries(self) -> None:
        exporter = RedisEventExporter("redis://127.0.0.1:6379/3", socket_timeout=1.5)
        kwargs = exporter._client.connection_pool.connection_kwargs

        assert kwargs["socket_timeout"] == 1.5
        assert kwargs["socket_connect_timeout"] == 2.0
        assert kwargs["health_check_interval"] == 30
        assert kwargs["retry"].get_retries() == 0
        assert kwargs["db"] == 3
        exporter.shutdown()


class TestRedactUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
            ("rediss://alice:pw@cache.local:6380/1", "rediss://alice:***@cache.local:6380/1"),
            ("redis://alice:pw@[::1]:6379", "redis://alice:***@[::1]:6379"),
            ("unix:///run/redis.sock?db=2&password=pw", "unix:///run/redis.sock?db=2&password=***"),
            ("redis://alice@127.0.0.1", "redis://alice@127.0.0.1"),
        ],
    )
    def test_password_replaced(self, url: str, expected: str) -> None:
        assert redact_url(url) == expected

    def test_unparsable_url_hidden(self) -> None:
        assert redact_url("redis://:pw@127.0.0.1:bad/0") == "<invalid URL>"


class FakeClock:
    """A settable monotonic clock, so interval logic is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestDropReporter:
    def make(self, clock: FakeClock, interval: float = 30.0) -> DropReporter:
        return DropReporter(
            "TestExporter",
            "redis://127.0.0.1:1/0",
            logging.getLogger("tests.drops"),
            log_interval=interval,
            clock=clock,
        )

    def test_one_warning_per_interval(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = FakeClock()
        reporter = self.make(clock)
        caplog.set_level(logging.INFO, logger="tests.drops")

        reporter.record(3, "connection", ConnectionError("refused"))
        clock.now += 10
        reporter.record(4, "connection", ConnectionError("refused"))
        clock.now += 10
        reporter.record(5, "timeout", TimeoutError("timed out"))
        clock.now += 10.5
        reporter.record(6, "connection", ConnectionError("refused"))

        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(messages) == 2
        assert "Dropped 3 events since the last warning, 3 in total" in messages[0]
        assert "Dropped 15 events since the last warning, 18 in total" in messages[1]
        assert "refused" in messages[1]
        assert reporter.total == 18
        assert reporter.by_reason() == {"connection": 13, "timeout": 5}

    def test_success_reports_unlogged_drops(self, caplog: pytest.LogCaptureFixture) -> None:
        clock = FakeClock()
        reporter = self.make(clock)
        caplog.set_level(logging.INFO, logger="tests.drops")
        reporter.record(2, "connection", "refused")
        reporter.record(7, "connection", "refused")

        reporter.record_success()
        reporter.record_success()

        infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(infos) == 1
        assert "Dropped 7 more events since the last warning, 9 in total" in infos[0]

    def test_zero_interval_logs_every_drop(self, caplog: pytest.LogCaptureFixture) -> None:
        reporter = self.make(FakeClock(), interval=0)
        caplog.set_level(logging.WARNING, logger="tests.drops")

        for _ in range(3):
            reporter.record(1, "connection", "refused")

        assert len(caplog.records) == 3

    def test_negative_interval_rejected(self) -> None:
        with pytest.raises(ValueError, match="log_interval must be zero or more seconds"):
            self.make(FakeClock(), interval=-1)
