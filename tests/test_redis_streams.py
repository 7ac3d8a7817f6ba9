"""Per-run Redis Streams and the runs index of RedisEventExporter, on a real redis-server."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pocketflow
import pytest
import redis
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel import attributes as attrs
from kaygraph_otel import instrument_pocketflow, run_context, uninstrument_pocketflow
from kaygraph_otel_exporters import LiveSpanProcessor, RedisEventExporter, configure
from kaygraph_otel_exporters.encoder import encode_spans
from tests.exporter_support import ChannelReader, make_tracer, schema_errors
from tests.redis_server import RedisServer

STREAM_ENV_VARS = ("KAYGRAPH_OTEL_REDIS_URL", "KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN")


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url, socket_timeout=5, decode_responses=True)
    yield connection
    connection.close()


def run_spans(correlation_id: str, count: int) -> list[ReadableSpan]:
    """Return ``count`` ended node spans of the run ``correlation_id``."""
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    for index in range(count):
        span = tracer.start_span(
            "execute_node StreamNode",
            attributes={
                attrs.NODE_ID: f"node-{index}",
                attrs.NODE_TYPE: "StreamNode",
                attrs.NODE_KIND: "node",
                attrs.WORKFLOW_ID: "wf-streams",
                attrs.CORRELATION_ID: correlation_id,
            },
        )
        span.add_event("node_started", {attrs.EVENT_STATE: "running"})
        span.add_event("node_completed", {attrs.EVENT_STATE: "completed"})
        span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def stream_events(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    return [json.loads(fields["event"]) for _, fields in client.xrange(key)]


def command_calls(client: redis.Redis, command: str) -> int:
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


class SendCountingConnection(redis.Connection):
    """A real redis-py connection that counts its writes of packed commands."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


class TestRunStreams:
    def test_each_event_appended_to_run_stream(self, redis_url: str, client: redis.Redis) -> None:
        channel = f"kaygraph:test:{uuid.uuid4().hex}"
        reader = ChannelReader(redis_url, channel)
        spans = run_spans("run-a", 4)
        expected = encode_spans(spans, include_started=True)
        exporter = RedisEventExporter(redis_url, channel)

        assert exporter.export(spans) is SpanExportResult.SUCCESS
        published = reader.read(len(expected))
        reader.close()

        stored = stream_events(client, "kaygraph:stream:run-a")
        assert stored == published
        assert [event["event_id"] for event in stored] == [e["event_id"] for e in expected]
        for event in stored:
            assert schema_errors(event) == [], event
        assert exporter.stream_key("run-a") == "kaygraph:stream:run-a"
        exporter.shutdown()

    def test_stream_written_in_publish_pipeline(
        self, redis_server: RedisServer, redis_url: str, client: redis.Redis
    ) -> None:
        pool = redis.ConnectionPool(
            connection_class=SendCountingConnection, port=redis_server.port, socket_timeout=2
        )
        own_client = redis.Redis(connection_pool=pool)
        exporter = RedisEventExporter(client=own_client)
        exporter.export(run_spans("warm-up", 1))
        spans = run_spans("run-b", 10)
        count = len(encode_spans(spans, include_started=True))
        xadds, publishes = command_calls(client, "xadd"), command_calls(client, "publish")
        sends = SendCountingConnection.sends

        assert exporter.export(spans) is SpanExportResult.SUCCESS

        assert SendCountingConnection.sends - sends == 1
        assert command_calls(client, "xadd") - xadds == count
        assert command_calls(client, "publish") - publishes == count
        own_client.close()

    def test_events_of_two_runs_split_by_key(self, redis_url: str, client: redis.Redis) -> None:
        first, second = run_spans("run-1", 2), run_spans("run-2", 3)
        exporter = RedisEventExporter(redis_url)

        exporter.export(first + second)

        assert client.xlen("kaygraph:stream:run-1") == len(encode_spans(first))
        assert client.xlen("kaygraph:stream:run-2") == len(encode_spans(second))
        exporter.shutdown()

    def test_stream_trimmed_near_maxlen(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, stream_maxlen=50)
        node_size = int(client.config_get("stream-node-max-entries")["stream-node-max-entries"])
        written = 0
        for _ in range(10):
            spans = run_spans("long-run", 20)
            exporter.export(spans)
            written += len(encode_spans(spans))

        length = client.xlen("kaygraph:stream:long-run")

        assert written == 600
        # MAXLEN ~ removes whole internal nodes only, so up to one node more may stay.
        assert 50 <= length <= 50 + node_size
        last = stream_events(client, "kaygraph:stream:long-run")[-1]
        assert last["node_id"] == "node-19"
        exporter.shutdown()

    def test_stream_and_index_expire(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, stream_ttl_seconds=120)

        exporter.export(run_spans("ttl-run", 1))

        assert 0 < client.ttl("kaygraph:stream:ttl-run") <= 120
        assert 0 < client.ttl("kaygraph:runs") <= 120
        exporter.shutdown()

    def test_default_ttl_is_one_day(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url)

        exporter.export(run_spans("day-run", 1))

        assert 86_400 - 60 < client.ttl("kaygraph:stream:day-run") <= 86_400
        exporter.shutdown()

    def test_zero_ttl_keeps_keys(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, stream_ttl_seconds=0)

        exporter.export(run_spans("kept-run", 1))

        assert client.ttl("kaygraph:stream:kept-run") == -1
        assert client.ttl("kaygraph:runs") == -1
        exporter.shutdown()

    def test_streams_turned_off(self, redis_url: str, client: redis.Redis) -> None:
        channel = f"kaygraph:test:{uuid.uuid4().hex}"
        reader = ChannelReader(redis_url, channel)
        spans = run_spans("no-stream-run", 2)
        exporter = RedisEventExporter(redis_url, channel, stream_maxlen=0)

        assert exporter.export(spans) is SpanExportResult.SUCCESS
        published = reader.read(len(encode_spans(spans)))
        reader.close()

        assert len(published) == len(encode_spans(spans))
        assert client.keys("kaygraph:*") == []
        assert exporter.stats()["streams_enabled"] is False
        exporter.shutdown()

    def test_custom_prefix_and_index_key(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, stream_prefix="app1:run:", runs_key="app1:runs")

        exporter.export(run_spans("custom-run", 1))

        assert client.exists("app1:run:custom-run") == 1
        assert client.zrange("app1:runs", 0, -1) == ["custom-run"]
        assert client.keys("kaygraph:*") == []
        exporter.shutdown()

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"stream_maxlen": -1}, "stream_maxlen must be a whole number >= 0"),
            ({"stream_maxlen": 1.5}, "stream_maxlen must be a whole number >= 0"),
            ({"stream_ttl_seconds": -5}, "stream_ttl_seconds must be a whole number >= 0"),
            ({"max_indexed_runs": 0}, "max_indexed_runs must be a whole number >= 1"),
            ({"stream_prefix": ""}, "stream_prefix must be a non-empty string"),
            ({"runs_key": ""}, "runs_key must be a non-empty string"),
        ],
    )
    def test_invalid_settings_rejected(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            RedisEventExporter(**kwargs)


class TestRunsIndex:
    def test_index_orders_runs_by_latest_batch(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url)
        before = time.time()
        for run in ("old-run", "middle-run", "new-run"):
            exporter.export(run_spans(run, 1))
            time.sleep(0.01)
        exporter.export(run_spans("old-run", 1))

        ranked = client.zrevrange("kaygraph:runs", 0, -1, withscores=True)

        assert [run for run, _ in ranked] == ["old-run", "new-run", "middle-run"]
        for _, score in ranked:
            assert before <= score <= time.time()
        exporter.shutdown()

    def test_index_trimmed_to_newest_runs(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, max_indexed_runs=3)
        for index in range(6):
            exporter.export(run_spans(f"run-{index}", 1))
            time.sleep(0.01)

        assert client.zrevrange("kaygraph:runs", 0, -1) == ["run-5", "run-4", "run-3"]
        exporter.shutdown()

    def test_late_reader_replays_workflow(self, redis_url: str, client: redis.Redis) -> None:
        class Step(pocketflow.Node):  # type: ignore[misc]
            def exec(self, prep_res: Any) -> str:
                return "ok"

        nodes = [Step() for _ in range(5)]
        for current, following in zip(nodes, nodes[1:], strict=False):
            current >> following
        flow = pocketflow.Flow(start=nodes[0])
        memory = InMemorySpanExporter()
        provider = configure(redis_url=redis_url, schedule_delay_millis=20, set_global=False)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        instrument_pocketflow(tracer_provider=provider)
        try:
            with run_context(correlation_id="replayed-run"):
                flow.run({})
        finally:
            uninstrument_pocketflow()
        assert provider.force_flush(10_000)
        provider.shutdown()
        produced = encode_spans(memory.get_finished_spans(), include_started=True)

        # A dashboard that connects now finds the run in the index and reads it whole.
        [latest] = client.zrevrange("kaygraph:runs", 0, 0)
        replayed = stream_events(client, f"kaygraph:stream:{latest}")

        assert latest == "replayed-run"
        assert sorted(event["event_id"] for event in replayed) == sorted(
            event["event_id"] for event in produced
        )
        assert replayed[0]["event_name"] == "workflow_started"
        # The workflow span ends last, so its end events close the stream.
        assert [event["event_name"] for event in replayed[-2:]] == [
            "workflow_completed",
            "execution_time",
        ]


class TestConnection:
    def test_stream_continues_after_restart(
        self, redis_server: RedisServer, redis_url: str, client: redis.Redis
    ) -> None:
        exporter = RedisEventExporter(redis_url, socket_connect_timeout=1.0)
        spans = run_spans("restart-run", 1)
        assert exporter.export(spans) is SpanExportResult.SUCCESS

        redis_server.stop()
        redis_server.start()
        result = exporter.export(spans)

        assert result is SpanExportResult.SUCCESS
        assert client.xlen("kaygraph:stream:restart-run") == len(encode_spans(spans))
        assert exporter.drops.total == 0
        exporter.shutdown()

    def test_health_check_pings_idle_connection(self, redis_url: str, client: redis.Redis) -> None:
        exporter = RedisEventExporter(redis_url, health_check_interval=1)
        spans = run_spans("idle-run", 1)
        exporter.export(spans)
        pings = command_calls(client, "ping")

        exporter.export(spans)
        not_idle = command_calls(client, "ping")
        time.sleep(1.1)
        exporter.export(spans)

        assert not_idle == pings
        assert command_calls(client, "ping") == pings + 1
        exporter.shutdown()

    def test_client_settings_explicit(self) -> None:
        exporter = RedisEventExporter(
            "redis://127.0.0.1:6379/0",
            socket_timeout=1.5,
            socket_connect_timeout=0.5,
            health_check_interval=15,
        )
        kwargs = exporter._client.connection_pool.connection_kwargs

        assert kwargs["socket_timeout"] == 1.5
        assert kwargs["socket_connect_timeout"] == 0.5
        assert kwargs["health_check_interval"] == 15
        assert kwargs["retry"].get_retries() == 0
        assert kwargs["client_name"] == "kaygraph-otel-exporter"
        exporter.shutdown()


class TestConfigure:
    @pytest.fixture(autouse=True)
    def clean_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in STREAM_ENV_VARS:
            monkeypatch.delenv(name, raising=False)

    @staticmethod
    def redis_exporter(provider: Any) -> RedisEventExporter:
        # The SDK offers no public way to list a provider's processors.
        processors = provider._active_span_processor._span_processors  # noqa: SLF001
        [exporter] = [
            p.exporter
            for p in processors
            if isinstance(p, LiveSpanProcessor) and isinstance(p.exporter, RedisEventExporter)
        ]
        return exporter

    def test_environment_sets_stream_maxlen(
        self, redis_url: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN", "0")

        provider = configure(redis_url=redis_url, set_global=False)
        exporter = self.redis_exporter(provider)
        provider.shutdown()

        assert exporter.streams_enabled is False

    def test_argument_wins_over_environment(
        self, redis_url: str, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN", "0")

        provider = configure(redis_url=redis_url, redis_stream_maxlen=500, set_global=False)
        exporter = self.redis_exporter(provider)
        exporter.export(run_spans("configured-run", 1))
        provider.shutdown()

        assert exporter.streams_enabled is True
        assert client.xlen("kaygraph:stream:configured-run") > 0

    @pytest.mark.parametrize("value", ["-1", "lots", "2.5"])
    def test_invalid_environment_rejected(
        self, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN", value)

        with pytest.raises(
            ValueError, match=f"invalid KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN '{value}'"
        ):
            configure(set_global=False)
