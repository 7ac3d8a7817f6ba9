"""Circuit breaking of the Redis and webhook exporters against real failing backends.

Redis fails here by requiring a password the exporter does not have: every
connection attempt then reaches the server and is counted in ``INFO stats``
``total_connections_received``, so the tests can check that an open circuit
makes no connection attempt at all.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from kaygraph_otel_exporters import BusEventExporter, RedisEventExporter
from kaygraph_otel_exporters._breaker import ExportBreaker
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans
from tests.exporter_support import ChannelReader
from tests.redis_server import RedisServer
from tests.test_webhook_exporter import (
    Reply,
    WebhookReceiver,
    ended_spans,
    fast_exporter,
    new_secret,
)

PASSWORD = "breaker-test-password"
COOL_DOWN_S = 0.4


class RedisAdmin:
    """One authenticated connection, kept open, so that reading the counters adds no connection."""

    def __init__(self, port: int) -> None:
        self.client = redis.Redis(port=port, password=PASSWORD, socket_timeout=5)

    def connections_received(self) -> int:
        return int(self.client.info("stats")["total_connections_received"])

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def locked_redis(redis_server: RedisServer, redis_url: str) -> Iterator[RedisAdmin]:
    """The session's Redis with a password set, so that the exporter's connections fail."""
    redis.Redis(port=redis_server.port, socket_timeout=5).config_set("requirepass", PASSWORD)
    admin = RedisAdmin(redis_server.port)
    admin.connections_received()
    try:
        yield admin
    finally:
        admin.client.config_set("requirepass", "")
        admin.close()


@pytest.fixture
def spans() -> list[ReadableSpan]:
    return ended_spans(["breaker-node"])


def event_count(spans: list[ReadableSpan]) -> int:
    return len(encode_spans(spans, include_started=True))


class TestRedisBreaker:
    def test_opens_after_consecutive_failures(
        self, redis_url: str, locked_redis: RedisAdmin, spans: list[ReadableSpan]
    ) -> None:
        exporter = RedisEventExporter(redis_url, breaker_failures=3, breaker_reset_seconds=60)
        before = locked_redis.connections_received()

        failing = [exporter.export(spans) for _ in range(3)]
        after_failures = locked_redis.connections_received()
        dropped = [exporter.export(spans) for _ in range(5)]
        after_open = locked_redis.connections_received()

        assert failing == [SpanExportResult.FAILURE] * 3
        assert after_failures - before == 3
        assert dropped == [SpanExportResult.FAILURE] * 5
        # No connection attempt while the circuit is open.
        assert after_open == after_failures
        stats = exporter.stats()
        assert stats["circuit_state"] == "open"
        assert stats["circuit_opened"] == 1
        assert stats["dropped_by_reason"] == {
            "authentication": 3 * event_count(spans),
            "circuit_open": 5 * event_count(spans),
        }
        exporter.shutdown()

    def test_failed_trial_reopens(
        self, redis_url: str, locked_redis: RedisAdmin, spans: list[ReadableSpan]
    ) -> None:
        exporter = RedisEventExporter(
            redis_url, breaker_failures=2, breaker_reset_seconds=COOL_DOWN_S
        )
        for _ in range(2):
            exporter.export(spans)
        opened = locked_redis.connections_received()
        time.sleep(COOL_DOWN_S + 0.05)

        trial = exporter.export(spans)
        after_trial = locked_redis.connections_received()
        later = [exporter.export(spans) for _ in range(3)]

        assert trial is SpanExportResult.FAILURE
        assert after_trial - opened == 1
        assert later == [SpanExportResult.FAILURE] * 3
        assert locked_redis.connections_received() == after_trial
        stats = exporter.stats()
        assert stats["circuit_state"] == "open"
        assert stats["circuit_opened"] == 2
        assert stats["dropped_by_reason"]["circuit_open"] == 3 * event_count(spans)
        exporter.shutdown()

    def test_successful_trial_closes(
        self, redis_url: str, locked_redis: RedisAdmin, spans: list[ReadableSpan]
    ) -> None:
        channel = f"kaygraph:test:{uuid.uuid4().hex}"
        exporter = RedisEventExporter(
            redis_url, channel, breaker_failures=2, breaker_reset_seconds=COOL_DOWN_S
        )
        for _ in range(2):
            exporter.export(spans)
        assert exporter.export(spans) is SpanExportResult.FAILURE
        locked_redis.client.config_set("requirepass", "")
        reader = ChannelReader(redis_url, channel)
        time.sleep(COOL_DOWN_S + 0.05)

        results = [exporter.export(spans) for _ in range(2)]
        received = reader.read(2 * event_count(spans))
        reader.close()

        assert results == [SpanExportResult.SUCCESS] * 2
        assert len(received) == 2 * event_count(spans)
        stats = exporter.stats()
        assert stats["circuit_state"] == "closed"
        assert stats["consecutive_failures"] == 0
        assert stats["exported_batches"] == 2
        exporter.shutdown()

    def test_state_changes_logged_at_info(
        self,
        redis_url: str,
        locked_redis: RedisAdmin,
        spans: list[ReadableSpan],
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="kaygraph_otel_exporters.redis")
        exporter = RedisEventExporter(redis_url, breaker_failures=2, breaker_reset_seconds=60)

        for _ in range(4):
            exporter.export(spans)

        opened = [r for r in caplog.records if "circuit" in r.getMessage()]
        assert len(opened) == 1
        assert opened[0].levelno == logging.INFO
        assert "opened after 2 consecutive failures" in opened[0].getMessage()
        assert PASSWORD not in caplog.text
        exporter.shutdown()


class TestWebhookBreaker:
    def test_open_circuit_drops_at_enqueue(self, spans: list[ReadableSpan]) -> None:
        secret = new_secret()
        with WebhookReceiver(default=Reply(500)) as server:
            exporter = fast_exporter(
                server.url,
                secret,
                max_attempts=1,
                breaker_failures=2,
                breaker_reset_seconds=60,
            )
            for _ in range(2):
                exporter.export(spans)
                assert exporter.force_flush(10_000)
            results = [exporter.export(spans) for _ in range(4)]
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
            exporter.shutdown()

        assert len(server.requests) == 2
        assert results == [SpanExportResult.FAILURE] * 4
        assert stats["circuit_state"] == "open"
        assert stats["pending_deliveries"] == 0
        assert stats["dropped_by_reason"] == {
            "backend_error": 2 * event_count(spans),
            "circuit_open": 4 * event_count(spans),
        }

    def test_trial_after_cool_down(self, spans: list[ReadableSpan]) -> None:
        secret = new_secret()
        with WebhookReceiver(default=Reply(500)) as server:
            exporter = fast_exporter(
                server.url,
                secret,
                max_attempts=1,
                breaker_failures=2,
                breaker_reset_seconds=COOL_DOWN_S,
            )
            for _ in range(2):
                exporter.export(spans)
                assert exporter.force_flush(10_000)
            time.sleep(COOL_DOWN_S + 0.05)
            exporter.export(spans)
            assert exporter.force_flush(10_000)
            after_failed_trial = (len(server.requests), exporter.stats()["circuit_state"])

            server.set_default(Reply(200))
            time.sleep(COOL_DOWN_S + 0.05)
            results = [exporter.export(spans) for _ in range(3)]
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
            exporter.shutdown()

        assert after_failed_trial == (3, "open")
        assert results == [SpanExportResult.SUCCESS] * 3
        assert len(server.requests) == 6
        assert stats["circuit_state"] == "closed"
        assert stats["circuit_opened"] == 2
        assert stats["exported_batches"] == 3

    @pytest.mark.parametrize("status", [400, 404, 429])
    def test_answers_that_reject_keep_circuit_closed(
        self, spans: list[ReadableSpan], status: int
    ) -> None:
        secret = new_secret()
        with WebhookReceiver(default=Reply(status)) as server:
            exporter = fast_exporter(
                server.url, secret, max_attempts=1, breaker_failures=2, breaker_reset_seconds=60
            )
            for _ in range(4):
                exporter.export(spans)
                assert exporter.force_flush(10_000)
            stats = exporter.stats()
            exporter.shutdown()

        assert len(server.requests) == 4
        assert stats["circuit_state"] == "closed"
        assert stats["circuit_opened"] == 0

    def test_breaker_opening_mid_retry_keeps_cause(self, spans: list[ReadableSpan]) -> None:
        secret = new_secret()
        with WebhookReceiver(default=Reply(502)) as server:
            exporter = fast_exporter(
                server.url, secret, max_attempts=5, breaker_failures=2, breaker_reset_seconds=60
            )
            exporter.export(spans)
            assert exporter.force_flush(10_000)
            stats = exporter.stats()
            exporter.shutdown()

        assert len(server.requests) == 2
        assert stats["dropped_by_reason"] == {"backend_error": event_count(spans)}


class TestBreakerSettings:
    @pytest.mark.parametrize("value", [0, -1, 1.5, True, None])
    def test_failures_must_be_whole_and_positive(self, value: object) -> None:
        with pytest.raises(
            ValueError, match="breaker_failures must be a whole number of at least 1"
        ):
            RedisEventExporter(breaker_failures=value)  # type: ignore[arg-type]

    @pytest.mark.parametrize("value", [0, -2.0, float("inf"), float("nan"), "10"])
    def test_reset_must_be_positive_and_finite(self, value: object) -> None:
        with pytest.raises(ValueError, match="breaker_reset_seconds must be a positive, finite"):
            RedisEventExporter(breaker_reset_seconds=value)  # type: ignore[arg-type]

    def test_every_schema_exporter_has_a_breaker(self) -> None:
        exporter = BusEventExporter(EventBus())

        stats = exporter.stats()

        assert stats["circuit_state"] == "closed"
        assert stats["exporter"] == "BusEventExporter"
        assert exporter.breaker.failure_threshold == 5

    def test_idle_breaker_allows_after_cool_down(self) -> None:
        breaker = ExportBreaker(
            "TestExporter",
            "nowhere",
            logging.getLogger("tests.breaker"),
            failure_threshold=1,
            reset_seconds=0.2,
        )

        def fail() -> None:
            raise ConnectionError("refused")

        with pytest.raises(ConnectionError):
            breaker.call(fail)
        blocked = breaker.allows_call()
        time.sleep(0.25)

        assert blocked is False
        assert breaker.allows_call() is True
        # The state moves to half-open only when the next call is made.
        assert breaker.state == "open"
        assert breaker.call(lambda: 42) == 42
        assert breaker.state == "closed"
