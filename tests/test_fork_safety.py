"""Exporters in a process forked with ``os.fork()``, with a real redis-server and webhook receiver.

The child is started with multiprocessing's "fork" method, so it inherits the
parent's tracer provider, exporters, connection pools and threads, as a
pre-forking server's workers do.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import pocketflow
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel import instrument_pocketflow, run_context, uninstrument_pocketflow
from kaygraph_otel_exporters import (
    LiveSpanProcessor,
    RedisEventExporter,
    WebhookSpanExporter,
    configure,
)
from kaygraph_otel_exporters.encoder import encode_spans
from tests.helpers import free_port, wait_for
from tests.test_webhook_exporter import (
    Reply,
    WebhookReceiver,
    deliveries_by_id,
    ended_spans,
    fast_exporter,
    new_secret,
)

WAIT_S = 20.0
NODES_PER_RUN = 8
FORK = multiprocessing.get_context("fork")


class Step(pocketflow.Node):  # type: ignore[misc]
    def exec(self, prep_res: Any) -> str:
        return "done"


def run_workflow(correlation_id: str) -> None:
    nodes = [Step() for _ in range(NODES_PER_RUN)]
    for current, following in zip(nodes, nodes[1:], strict=False):
        current >> following
    with run_context(correlation_id=correlation_id):
        pocketflow.Flow(start=nodes[0]).run({})


def redis_local_ports(exporter: RedisEventExporter) -> set[int]:
    """Return the local ports of the exporter's open Redis connections."""
    pool = exporter._client.connection_pool
    connections = list(pool._available_connections) + list(pool._in_use_connections)
    return {conn._sock.getsockname()[1] for conn in connections if conn._sock is not None}


def exporters_of(provider: TracerProvider) -> tuple[RedisEventExporter, WebhookSpanExporter]:
    # The SDK offers no public way to list a provider's processors.
    processors = provider._active_span_processor._span_processors  # noqa: SLF001
    exporters = [p.exporter for p in processors if isinstance(p, LiveSpanProcessor)]
    [redis_exporter] = [e for e in exporters if isinstance(e, RedisEventExporter)]
    [webhook_exporter] = [e for e in exporters if isinstance(e, WebhookSpanExporter)]
    return redis_exporter, webhook_exporter


def child_workflow(results: Any, provider: TracerProvider) -> None:
    """Run one workflow in the forked child and report what its exporters did."""
    try:
        redis_exporter, webhook_exporter = exporters_of(provider)
        inherited = {
            "redis_ports": sorted(redis_local_ports(redis_exporter)),
            "webhook_pending": webhook_exporter.stats()["pending_deliveries"],
        }
        run_workflow("child-run")
        flushed = provider.force_flush(int(WAIT_S * 1000))
        results.put(
            {
                "inherited": inherited,
                "flushed": flushed,
                "redis_ports": sorted(redis_local_ports(redis_exporter)),
                "redis": redis_exporter.stats(),
                "webhook": webhook_exporter.stats(),
            }
        )
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
        results.put({"error": repr(exc)})
        raise


@pytest.fixture
def instrumented() -> Iterator[None]:
    yield
    uninstrument_pocketflow()


class TestForkedChild:
    def test_child_publishes_on_own_connections(
        self, redis_server: Any, redis_url: str, instrumented: None
    ) -> None:
        secret = new_secret()
        with WebhookReceiver() as receiver:
            provider = configure(
                redis_url=redis_url,
                webhook_url=receiver.url,
                webhook_secret=secret,
                schedule_delay_millis=10,
                set_global=False,
            )
            memory = InMemorySpanExporter()
            provider.add_span_processor(SimpleSpanProcessor(memory))
            redis_exporter, webhook_exporter = exporters_of(provider)
            instrument_pocketflow(tracer_provider=provider)
            run_workflow("parent-before")
            assert provider.force_flush(int(WAIT_S * 1000))
            parent_ports = redis_local_ports(redis_exporter)
            events_per_run = len(encode_spans(memory.get_finished_spans()))

            results = FORK.Queue()
            child = FORK.Process(target=child_workflow, args=(results, provider))
            child.start()
            # The parent publishes while the child does, on the same servers.
            run_workflow("parent-during")
            assert provider.force_flush(int(WAIT_S * 1000))
            report = results.get(timeout=WAIT_S)
            child.join(WAIT_S)
            run_workflow("parent-after")
            assert provider.force_flush(int(WAIT_S * 1000))
            parent_ports_after = redis_local_ports(redis_exporter)
            requests = receiver.requests
            provider.shutdown()

        assert "error" not in report, report
        assert child.exitcode == 0
        assert report["flushed"] is True
        # The child inherited no open connection and opened its own.
        assert report["inherited"]["redis_ports"] == []
        assert report["redis_ports"]
        assert parent_ports
        assert set(report["redis_ports"]).isdisjoint(parent_ports | parent_ports_after)
        assert report["redis"]["dropped_events"] == 0
        assert report["webhook"]["dropped_events"] == 0
        assert redis_exporter.stats()["dropped_events"] == 0
        assert webhook_exporter.stats()["dropped_events"] == 0

        client = redis.Redis(port=redis_server.port, socket_timeout=5)
        for run in ("parent-before", "parent-during", "child-run", "parent-after"):
            assert client.xlen(f"kaygraph:stream:{run}") == events_per_run, run
        client.close()

        deliveries = deliveries_by_id(requests, secret)
        by_run: dict[str, int] = {}
        ports_by_run: dict[str, set[int]] = {}
        for request in requests:
            webhook_id = request.headers["webhook-id"]
            for event in deliveries.get(webhook_id, []):
                by_run[event["correlation_id"]] = by_run.get(event["correlation_id"], 0) + 1
                ports_by_run.setdefault(event["correlation_id"], set()).add(request.client_port)
        assert by_run == dict.fromkeys(
            ("parent-before", "parent-during", "child-run", "parent-after"), events_per_run
        )
        parent_webhook_ports = (
            ports_by_run["parent-before"]
            | ports_by_run["parent-during"]
            | ports_by_run["parent-after"]
        )
        assert ports_by_run["child-run"].isdisjoint(parent_webhook_ports)

    def test_child_does_not_deliver_parent_queue(self) -> None:
        secret = new_secret()
        release = threading.Event()
        spans = ended_spans(["queued-in-parent"])
        with WebhookReceiver([Reply(hold=release)]) as receiver:
            exporter = fast_exporter(receiver.url, secret, read_timeout=WAIT_S)
            for _ in range(3):
                exporter.export(spans)
            assert receiver.wait_for_requests(1)
            results = FORK.Queue()

            def child() -> None:
                stats = exporter.stats()
                flushed = exporter.force_flush(1000)
                results.put({"pending": stats["pending_deliveries"], "flushed": flushed})

            process = FORK.Process(target=child)
            process.start()
            report = results.get(timeout=WAIT_S)
            process.join(WAIT_S)
            release.set()
            assert exporter.force_flush(int(WAIT_S * 1000))
            exporter.shutdown()
            requests = receiver.requests

        assert process.exitcode == 0
        assert report == {"pending": 0, "flushed": True}
        # Each of the parent's three bodies arrived once, from the parent.
        assert len(requests) == 3
        assert len({request.headers["webhook-id"] for request in requests}) == 3

    def test_child_starts_with_closed_circuit(self) -> None:
        # Nothing listens on this port: it was free when checked and nothing binds it.
        exporter = RedisEventExporter(
            f"redis://127.0.0.1:{free_port()}/0", breaker_failures=1, breaker_reset_seconds=60
        )
        exporter.export(ended_spans(["fails"]))
        assert exporter.stats()["circuit_state"] == "open"
        results = FORK.Queue()

        def child() -> None:
            stats = exporter.stats()
            results.put({"state": stats["circuit_state"], "dropped": stats["dropped_events"]})

        process = FORK.Process(target=child)
        process.start()
        report = results.get(timeout=WAIT_S)
        process.join(WAIT_S)

        assert process.exitcode == 0
        assert report["state"] == "closed"
        # The drop counts so far are the parent's, and the child keeps a copy of them.
        assert report["dropped"] == exporter.stats()["dropped_events"]
        assert wait_for(lambda: not process.is_alive(), 1.0)
