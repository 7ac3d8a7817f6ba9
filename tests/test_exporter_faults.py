"""Exporters against failing backends: Redis killed mid-run, stalled subscribers, hanging webhooks.

Every backend here is real: redis-server processes from the ``redis_server``
fixture and HTTP receivers on 127.0.0.1 written with the standard library.
Workflows are real PocketFlow flows instrumented by kaygraph-otel. Timing
figures are printed for the record and never asserted; the tests assert counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pocketflow
import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel import instrument_pocketflow, run_context, uninstrument_pocketflow
from kaygraph_otel_exporters import (
    BusEventExporter,
    LiveSpanProcessor,
    RedisEventExporter,
    WebhookSpanExporter,
    configure,
)
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans
from tests.exporter_support import make_tracer, run_node
from tests.helpers import free_port, wait_for
from tests.redis_server import RedisServer
from tests.test_webhook_exporter import (
    Reply,
    SilentReceiver,
    WebhookReceiver,
    deliveries_by_id,
    ended_spans,
    fast_exporter,
    new_secret,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 10.0
NODE_COUNT = 200
NODE_SLEEP_S = 0.002
STOP_AT_NODE = 50
RESUME_AT_NODE = 150
STALL_NODES = 1500


# Workflows


class SleepyStep(pocketflow.Node):  # type: ignore[misc]
    """A node that sleeps, returns a value derived from its index and appends it to the store.

    ``payload`` pads the result with that many characters, so that captured
    snapshots make large events.
    """

    def __init__(
        self,
        index: int,
        sleep: float,
        hook: Callable[[int], None] | None = None,
        payload: int = 0,
    ) -> None:
        super().__init__()
        self.index = index
        self.sleep = sleep
        self.hook = hook
        self.payload = payload

    def prep(self, shared: dict[str, Any]) -> int:
        return len(shared.setdefault("results", []))

    def exec(self, prep_res: int) -> str:
        if self.hook is not None:
            self.hook(self.index)
        if self.sleep:
            time.sleep(self.sleep)
        return f"node-{self.index}:{prep_res * 7 % 11}" + "x" * self.payload

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: str) -> str:
        shared["results"].append(exec_res)
        return "default"


def chain_flow(
    count: int, sleep: float, hook: Callable[[int], None] | None = None, payload: int = 0
) -> pocketflow.Flow:
    nodes = [SleepyStep(index, sleep, hook, payload) for index in range(count)]
    for current, following in zip(nodes, nodes[1:], strict=False):
        current >> following
    return pocketflow.Flow(start=nodes[0])


def run_flow(flow: pocketflow.Flow) -> tuple[dict[str, Any], float]:
    shared: dict[str, Any] = {}
    started = time.perf_counter()
    flow.run(shared)
    return shared, time.perf_counter() - started


@dataclass
class InstrumentedRun:
    shared: dict[str, Any]
    wall_seconds: float
    produced: list[dict[str, Any]]


def run_instrumented(
    provider: TracerProvider, flow: pocketflow.Flow, correlation_id: str, **options: Any
) -> InstrumentedRun:
    """Run ``flow`` instrumented with ``provider`` and return the events it produced.

    A memory exporter on the same provider receives every span, so the produced
    events are known whatever the exporter under test loses.
    """
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrument_pocketflow(tracer_provider=provider, **options)
    try:
        with run_context(correlation_id=correlation_id):
            shared, wall = run_flow(flow)
    finally:
        uninstrument_pocketflow()
    produced = encode_spans(memory.get_finished_spans(), include_started=True)
    return InstrumentedRun(shared, wall, produced)


def live_exporters(provider: TracerProvider) -> list[Any]:
    # The SDK offers no public way to list a provider's processors.
    processors = provider._active_span_processor._span_processors  # noqa: SLF001
    return [p.exporter for p in processors if isinstance(p, LiveSpanProcessor)]


# Redis helpers


class PubSubCollector:
    """A Pub/Sub subscriber on its own thread that keeps every event until its connection ends."""

    def __init__(self, url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=WAIT_S)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(channel)
        confirmation = self._pubsub.get_message(timeout=WAIT_S)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise RuntimeError(f"no subscribe confirmation for {channel!r}: {confirmation!r}")
        self.events: list[dict[str, Any]] = []
        self.ended_by: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                message = self._pubsub.get_message(timeout=0.05)
            except (redis.ConnectionError, OSError) as exc:
                self.ended_by = type(exc).__name__
                return
            if message is not None and message["type"] == "message":
                self.events.append(json.loads(message["data"]))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._pubsub.close()
            self._client.close()
        except (redis.RedisError, OSError):
            pass


def stream_events(port: int, key: str) -> list[dict[str, Any]]:
    client = redis.Redis(port=port, socket_timeout=5)
    try:
        return [json.loads(fields[b"event"]) for _, fields in client.xrange(key)]
    finally:
        client.close()


@dataclass
class ConnectionWindow:
    """Connections the server received while the exporter's circuit stayed open."""

    before: int = -1
    after: int = -1
    valid: bool = False
    dropped_during: int = 0


@dataclass
class RedisOutage:
    """Stops Redis when node ``STOP_AT_NODE`` starts, restarts it once the circuit opens.

    Node ``RESUME_AT_NODE`` waits, at most ``WAIT_S`` seconds, until the restart
    and the connection count are done and the circuit's cool-down has passed, so
    the rest of the run is exported after the restart on any machine.
    """

    server: RedisServer
    exporter: RedisEventExporter
    window: ConnectionWindow = field(default_factory=ConnectionWindow)
    stop_requested: threading.Event = field(default_factory=threading.Event)
    restarted: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def hook(self, index: int) -> None:
        if index == STOP_AT_NODE:
            self.stop_requested.set()
        elif index == RESUME_AT_NODE:
            self.restarted.wait(WAIT_S)
            wait_for(self.exporter.breaker.allows_call, timeout=WAIT_S, interval=0.005)

    def run(self) -> None:
        try:
            if not self.stop_requested.wait(WAIT_S):
                raise RuntimeError(f"node {STOP_AT_NODE} never ran")
            self.server.stop()
            if not wait_for(lambda: self.exporter.breaker.state == "open", WAIT_S, 0.002):
                raise RuntimeError("the circuit did not open while Redis was down")
            self.server.start()
            self._count_connections_while_open()
        except Exception as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.errors.append(repr(exc))
        finally:
            self.restarted.set()

    def _count_connections_while_open(self) -> None:
        admin = redis.Redis(port=self.server.port, socket_timeout=5)
        breaker = self.exporter.breaker
        try:
            opened = breaker.opened_count
            dropped = self.exporter.drops.by_reason().get("circuit_open", 0)
            self.window.before = int(admin.info("stats")["total_connections_received"])
            time.sleep(0.05)
            self.window.after = int(admin.info("stats")["total_connections_received"])
            # A trial call in between would have closed the circuit or opened it again.
            self.window.valid = breaker.state == "open" and breaker.opened_count == opened
            self.window.dropped_during = (
                self.exporter.drops.by_reason().get("circuit_open", 0) - dropped
            )
        finally:
            admin.close()


class NodeClock:
    """A node hook that records when each node's ``exec`` starts and the circuit state then."""

    def __init__(self, state: Callable[[], str]) -> None:
        self._state = state
        self.marks: list[tuple[int, float, str]] = []

    def __call__(self, index: int) -> None:
        self.marks.append((index, time.perf_counter(), self._state()))

    def intervals(self, state: str, skip: frozenset[int] = frozenset()) -> list[float]:
        """Return the times from each node's start to the next one's, where both saw ``state``.

        Nodes in ``skip`` are left out, such as a node that waits for a fault injector.
        """
        return [
            later[1] - earlier[1]
            for earlier, later in zip(self.marks, self.marks[1:], strict=False)
            if earlier[2] == state
            and later[2] == state
            and later[0] == earlier[0] + 1
            and earlier[0] not in skip
        ]

    def mean_interval(self, state: str, skip: frozenset[int] = frozenset()) -> float:
        intervals = self.intervals(state, skip)
        return sum(intervals) / len(intervals) if intervals else float("nan")


class ConnectAttempts(redis.Connection):
    """A real redis-py connection that records the circuit state at each connection attempt."""

    states: list[str] = []
    breaker_state: Callable[[], str] = staticmethod(lambda: "unknown")

    def connect(self) -> None:
        if self._sock is None:
            type(self).states.append(type(self).breaker_state())
        super().connect()


class TestRedisKilledMidRun:
    def test_workflow_survives_and_losses_are_counted(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        baseline_clock = NodeClock(lambda: "uninstrumented")
        baseline, baseline_wall = run_flow(chain_flow(NODE_COUNT, NODE_SLEEP_S, baseline_clock))
        channel = f"kaygraph:test:killed:{time.monotonic_ns()}"
        provider = configure(
            redis_url=redis_url,
            channel=channel,
            breaker_failures=2,
            breaker_reset_seconds=0.5,
            schedule_delay_millis=10,
            set_global=False,
        )
        [exporter] = live_exporters(provider)
        ConnectAttempts.states = []
        ConnectAttempts.breaker_state = staticmethod(lambda: exporter.breaker.state)
        exporter._client.connection_pool.connection_class = ConnectAttempts
        batch_sizes: list[int] = []
        send = exporter._send

        def recording_send(events: list[dict[str, Any]]) -> None:
            batch_sizes.append(len(events))
            send(events)

        exporter._send = recording_send
        outage = RedisOutage(redis_server, exporter)
        clock = NodeClock(lambda: exporter.breaker.state)

        def hook(index: int) -> None:
            clock(index)
            outage.hook(index)

        controller = threading.Thread(target=outage.run, daemon=True)
        collector = PubSubCollector(redis_url, channel)
        controller.start()

        try:
            run = run_instrumented(
                provider, chain_flow(NODE_COUNT, NODE_SLEEP_S, hook), "killed-run"
            )
            flushed = provider.force_flush(WAIT_S * 1000)
        finally:
            controller.join(WAIT_S)
            redis_server.start()
            collector.close()
        provider.shutdown()

        stats = exporter.stats()
        before_kill = {event["event_id"]: event for event in collector.events}
        after_restart = {
            event["event_id"]: event
            for event in stream_events(redis_server.port, "kaygraph:stream:killed-run")
        }
        produced_ids = {event["event_id"] for event in run.produced}
        received_ids = set(before_kill) | set(after_restart)
        lost = len(produced_ids - received_ids)
        waiting_node = frozenset({RESUME_AT_NODE})
        open_node_seconds = clock.mean_interval("open", waiting_node)
        print(
            f"\nPer-node time while the circuit was open: {open_node_seconds * 1000:.3f} ms "
            f"over {len(clock.intervals('open', waiting_node))} nodes, uninstrumented "
            f"{baseline_clock.mean_interval('uninstrumented') * 1000:.3f} ms (ratio "
            f"{open_node_seconds / baseline_clock.mean_interval('uninstrumented'):.2f})"
        )
        print(
            f"Redis killed at node {STOP_AT_NODE} of {NODE_COUNT}: produced "
            f"{len(produced_ids)}, received {len(received_ids)}, lost {lost}, counted "
            f"{stats['dropped_events']} {stats['dropped_by_reason']}; wall "
            f"{run.wall_seconds:.3f} s vs {baseline_wall:.3f} s uninstrumented "
            f"(ratio {run.wall_seconds / baseline_wall:.2f}, including node {RESUME_AT_NODE}'s "
            f"wait for the restart); window {outage.window}"
        )

        assert outage.errors == []
        assert flushed is True
        assert run.shared == baseline
        assert collector.ended_by is not None
        assert before_kill
        # The last node's events and the workflow's end were exported after the restart.
        assert f"SleepyStep#{NODE_COUNT}" in {e["node_id"] for e in after_restart.values()}
        assert "workflow_completed" in {e["event_name"] for e in after_restart.values()}
        assert received_ids <= produced_ids
        # Every lost event is counted. A batch in flight when Redis stopped may have been
        # partly written and still counted whole, so the count may exceed the loss by
        # at most the largest batch.
        assert lost <= stats["dropped_events"] <= lost + max(batch_sizes)
        assert stats["dropped_by_reason"]["circuit_open"] > 0
        assert stats["exported_events"] + stats["dropped_events"] == len(run.produced)
        # No connection attempt while the circuit was open: not at the client, and not
        # at the restarted server while exports were being dropped.
        assert ConnectAttempts.states
        assert "open" not in ConnectAttempts.states
        assert outage.window.valid, outage.window
        assert outage.window.dropped_during > 0
        assert outage.window.after == outage.window.before
        assert len(clock.intervals("open", waiting_node)) > 10


class TestStalledSubscriber:
    @pytest.fixture
    def small_pubsub_buffers(self, redis_server: RedisServer, redis_url: str) -> Iterator[None]:
        admin = redis.Redis(port=redis_server.port, socket_timeout=5, decode_responses=True)
        original = admin.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
        admin.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
        try:
            yield
        finally:
            admin.config_set("client-output-buffer-limit", original)
            admin.close()

    def test_stalled_subscriber_disconnected(
        self, redis_server: RedisServer, redis_url: str, small_pubsub_buffers: None
    ) -> None:
        channel = f"kaygraph:test:stalled:{time.monotonic_ns()}"
        stalled = stalled_subscriber(redis_server.port, channel)
        stalled_port = stalled.getsockname()[1]
        admin = redis.Redis(port=redis_server.port, socket_timeout=5, decode_responses=True)
        subscribed_before = pubsub_client_ports(admin)
        baseline, baseline_wall = run_flow(chain_flow(STALL_NODES, 0, payload=3000))
        provider = configure(
            redis_url=redis_url,
            channel=channel,
            redis_stream_maxlen=20_000,
            schedule_delay_millis=20,
            set_global=False,
        )
        [exporter] = live_exporters(provider)

        run = run_instrumented(
            provider,
            chain_flow(STALL_NODES, 0, payload=3000),
            "stalled-run",
            capture_snapshots=True,
        )
        flushed = provider.force_flush(WAIT_S * 1000)
        disconnected = wait_for(lambda: stalled_port not in pubsub_client_ports(admin), WAIT_S)
        provider.shutdown()
        stored = stream_events(redis_server.port, "kaygraph:stream:stalled-run")
        stats = exporter.stats()
        payload = sum(len(json.dumps(event)) for event in run.produced)
        admin.close()
        stalled.close()
        print(
            f"\nStalled subscriber: {len(run.produced)} events ({payload} bytes) published, "
            f"subscriber disconnected: {disconnected}; wall {run.wall_seconds:.3f} s vs "
            f"{baseline_wall:.3f} s uninstrumented"
        )

        assert stalled_port in subscribed_before
        # The kernel buffers a few MB for the stalled socket before Redis's own buffer fills.
        assert payload > 6 * 2**20
        assert disconnected
        assert flushed is True
        assert run.shared == baseline
        assert stats["dropped_events"] == 0
        assert stats["exported_events"] == len(run.produced)
        assert len(stored) == len(run.produced)


def stalled_subscriber(port: int, channel: str) -> Any:
    """Subscribe over a raw socket with a small receive buffer, then never read again."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    name = channel.encode()
    sock.sendall(b"*2\r\n$9\r\nSUBSCRIBE\r\n$%d\r\n%s\r\n" % (len(name), name))
    confirmation = b""
    while confirmation.count(b"\r\n") < 6:
        confirmation += sock.recv(1024)
    return sock


def pubsub_client_ports(admin: redis.Redis) -> set[int]:
    return {int(client["addr"].rsplit(":", 1)[1]) for client in admin.client_list(_type="pubsub")}


class TestRedisHang:
    def test_force_flush_bounded_while_redis_paused(
        self, redis_server: RedisServer, redis_url: str
    ) -> None:
        exporter = RedisEventExporter(
            redis_url, socket_timeout=2.0, breaker_failures=5, include_started=False
        )
        provider, tracer = make_tracer(LiveSpanProcessor(exporter, schedule_delay_millis=60_000))
        admin = redis.Redis(port=redis_server.port, socket_timeout=5)
        run_node(tracer, "before-pause")
        assert provider.force_flush(WAIT_S * 1000) is True

        admin.client_pause(4000, all=True)
        try:
            run_node(tracer, "during-pause")
            started = time.perf_counter()
            paused_flush = provider.force_flush(300)
            elapsed = time.perf_counter() - started
            # The export goes on in the background until the socket timeout fails it.
            timed_out = wait_for(lambda: exporter.stats()["consecutive_failures"] == 1, WAIT_S)
        finally:
            admin.client_unpause()
        run_node(tracer, "after-pause")
        resumed_flush = provider.force_flush(WAIT_S * 1000)
        stats = exporter.stats()
        provider.shutdown()
        admin.close()
        print(f"\nforce_flush(300) with Redis paused returned after {elapsed:.3f} s")

        assert paused_flush is False
        assert timed_out
        assert resumed_flush is True
        assert list(stats["dropped_by_reason"]) == ["timeout"]
        assert stats["exported_batches"] == 2


class TestWebhookFaults:
    def test_hanging_receiver_costs_one_timeout_per_attempt(self) -> None:
        spans = ended_spans(["a", "b"])
        count = len(encode_spans(spans, include_started=True))
        with SilentReceiver("hang") as server:
            exporter = fast_exporter(
                server.url, new_secret(), read_timeout=0.3, max_attempts=3, breaker_failures=10
            )
            started = time.perf_counter()
            exporter.export(spans)
            flushed = exporter.force_flush(int(WAIT_S * 1000))
            elapsed = time.perf_counter() - started
            exporter.shutdown()
        print(f"\nHanging receiver: 3 attempts with read timeout 0.3 s took {elapsed:.2f} s")

        assert flushed is True
        assert server.accepted == 3
        assert exporter.drops.by_reason() == {"timeout": count}
        assert exporter.stats()["retries"] == 2

    def test_late_answer_counted_as_timeout(self) -> None:
        secret = new_secret()
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with WebhookReceiver(default=Reply(200, delay=0.6)) as server:
            exporter = fast_exporter(server.url, secret, read_timeout=0.3, max_attempts=2)
            exporter.export(spans)
            flushed = exporter.force_flush(int(WAIT_S * 1000))
            exporter.shutdown()

        assert flushed is True
        assert len(server.requests) == 2
        assert len({request.headers["webhook-id"] for request in server.requests}) == 1
        assert exporter.drops.by_reason() == {"timeout": count}

    def test_late_answer_then_success_deduplicates(self) -> None:
        secret = new_secret()
        spans = ended_spans(["a"])
        with WebhookReceiver([Reply(200, delay=0.6)]) as server:
            exporter = fast_exporter(server.url, secret, read_timeout=0.3, max_attempts=3)
            exporter.export(spans)
            flushed = exporter.force_flush(int(WAIT_S * 1000))
            exporter.shutdown()

        # The receiver got the body twice, and the shared webhook-id marks the second as a repeat.
        assert flushed is True
        assert len(server.requests) == 2
        deliveries = deliveries_by_id(server.requests, secret)
        assert len(deliveries) == 1
        assert exporter.drops.total == 0
        assert exporter.stats()["exported_batches"] == 1

    def test_connection_reset_counted(self) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with SilentReceiver("reset") as server:
            exporter = fast_exporter(server.url, new_secret(), max_attempts=3, breaker_failures=10)
            exporter.export(spans)
            flushed = exporter.force_flush(int(WAIT_S * 1000))
            exporter.shutdown()

        assert flushed is True
        assert server.accepted == 3
        assert exporter.drops.by_reason() == {"connection": count}

    def test_refused_connection_counted(self) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        # Nothing listens on this port: it was free when checked and nothing binds it.
        url = f"http://127.0.0.1:{free_port()}/hook"
        exporter = fast_exporter(url, new_secret(), max_attempts=2, breaker_failures=10)

        exporter.export(spans)
        flushed = exporter.force_flush(int(WAIT_S * 1000))
        exporter.shutdown()

        assert flushed is True
        assert exporter.drops.by_reason() == {"connection": count}

    def test_force_flush_and_shutdown_bounded_while_receiver_hangs(self) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with SilentReceiver("hang") as server:
            exporter = WebhookSpanExporter(
                server.url, new_secret(), read_timeout=WAIT_S, shutdown_timeout_millis=200
            )
            exporter.export(spans)
            exporter.export(spans)
            assert wait_for(lambda: server.accepted == 1, WAIT_S)
            flushed = exporter.force_flush(200)
            exporter.shutdown(timeout_millis=30_000)
            stats = exporter.stats()

        assert flushed is False
        # The queued body is dropped at shutdown; the one in progress is still pending.
        assert stats["dropped_by_reason"] == {"shutdown": count}
        assert stats["pending_deliveries"] == 1


SHUTDOWN_SCRIPT = """
import sys, time
import pocketflow
from kaygraph_otel import instrument_pocketflow
from kaygraph_otel_exporters import configure

class Step(pocketflow.Node):
    def exec(self, prep_res):
        return "done"

nodes = [Step() for _ in range(20)]
for current, following in zip(nodes, nodes[1:]):
    current >> following
provider = configure(webhook_url=sys.argv[1], webhook_secret=sys.argv[2], schedule_delay_millis=10)
instrument_pocketflow(tracer_provider=provider)
pocketflow.Flow(start=nodes[0]).run({})
started = time.perf_counter()
print("force_flush", provider.force_flush(500), flush=True)
print("force_flush_seconds", round(time.perf_counter() - started, 3), flush=True)
print("exiting", time.time(), flush=True)
"""


class TestProcessExit:
    def test_process_exits_while_receiver_hangs(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        for name in ("KAYGRAPH_OTEL_REDIS_URL", "KAYGRAPH_OTEL_WEBHOOK_URL"):
            env.pop(name, None)
        with SilentReceiver("hang") as server:
            result = subprocess.run(
                [sys.executable, "-c", SHUTDOWN_SCRIPT, server.url, new_secret()],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                cwd=REPO_ROOT,
                check=False,
            )
            ended = time.time()
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
        exit_seconds = ended - float(lines.get("exiting", ended))
        print(f"\nProcess with a hanging webhook receiver exited {exit_seconds:.2f} s after main")

        assert result.returncode == 0, result.stderr
        assert lines["force_flush"] == "False"
        assert server.accepted >= 1
        # The exporter's shutdown gave up on the hanging receiver and logged a warning.
        assert "shut down before delivering" in result.stderr


MEMORY_SCRIPT = """
import gc, json, sys
import psutil, pocketflow
from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel_exporters import configure

class Step(pocketflow.Node):
    def exec(self, prep_res):
        return 1

def flow(count):
    nodes = [Step() for _ in range(count)]
    for current, following in zip(nodes, nodes[1:]):
        current >> following
    return pocketflow.Flow(start=nodes[0])

def rss():
    gc.collect()
    return psutil.Process().memory_info().rss

provider = configure(
    redis_url=sys.argv[1], webhook_url=sys.argv[2], webhook_secret=sys.argv[3],
    breaker_failures=3, breaker_reset_seconds=60, schedule_delay_millis=50, set_global=False,
)
instrument_pocketflow(tracer_provider=provider)
flow(200).run({})
provider.force_flush(30000)
start = rss()
flow(1000).run({})
provider.force_flush(30000)
after_1k = rss()
flow(10000).run({})
provider.force_flush(30000)
after_10k = rss()
uninstrument_pocketflow()
processors = provider._active_span_processor._span_processors
stats = [p.exporter.stats() for p in processors if hasattr(p, "exporter")]
print(json.dumps({"start": start, "after_1k": after_1k, "after_10k": after_10k, "stats": stats}))
"""


class TestMemory:
    def test_memory_bounded_with_backends_down(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # Nothing listens on these ports: they were free when checked and nothing binds them.
        redis_url = f"redis://127.0.0.1:{free_port()}/0"
        webhook_url = f"http://127.0.0.1:{free_port()}/hook"
        result = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, redis_url, webhook_url, new_secret()],
            capture_output=True,
            text=True,
            timeout=100,
            env=env,
            cwd=REPO_ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        growth_1k = report["after_1k"] - report["start"]
        growth_10k = report["after_10k"] - report["after_1k"]
        print(
            f"\nRSS with Redis and webhook down: +{growth_1k / 2**20:.1f} MiB for 1,000 nodes, "
            f"+{growth_10k / 2**20:.1f} MiB for 10,000 more nodes; "
            f"drops {[s['dropped_by_reason'] for s in report['stats']]}"
        )

        assert growth_10k < 3 * max(growth_1k, 0) + 20 * 2**20
        for stats in report["stats"]:
            assert stats["exported_events"] == 0
            assert stats["dropped_events"] > 10_000
            assert stats["circuit_state"] == "open"


METRIC_SCRIPT = """
import json, sys
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
from kaygraph_otel_exporters import RedisEventExporter
from kaygraph_otel_exporters.encoder import encode_spans
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tests.exporter_support import make_tracer, run_node

memory = InMemorySpanExporter()
tracer_provider, tracer = make_tracer(SimpleSpanProcessor(memory))
run_node(tracer, "metric-node")
spans = memory.get_finished_spans()
exporter = RedisEventExporter(sys.argv[1], breaker_failures=2, breaker_reset_seconds=60)
for _ in range(5):
    exporter.export(spans)
points = []
for resource_metrics in reader.get_metrics_data().resource_metrics:
    for scope_metrics in resource_metrics.scope_metrics:
        for metric in scope_metrics.metrics:
            if metric.name == "kaygraph_otel.exporter.dropped_events":
                for point in metric.data.data_points:
                    points.append({"attributes": dict(point.attributes), "value": point.value})
print(json.dumps({"events": len(encode_spans(spans)), "points": points}))
"""


class GatedBusExporter(BusEventExporter):
    """A real BusEventExporter whose sends wait until ``gate`` is set, as a slow backend would."""

    def __init__(self, bus: EventBus, gate: threading.Event) -> None:
        super().__init__(bus)
        self._gate = gate

    def _send(self, events: list[dict[str, Any]]) -> None:
        self._gate.wait(WAIT_S)
        super()._send(events)


class TestDropAccounting:
    def test_drop_metric_has_exporter_and_reason(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        # Nothing listens on this port: it was free when checked and nothing binds it.
        url = f"redis://127.0.0.1:{free_port()}/0"
        result = subprocess.run(
            [sys.executable, "-c", METRIC_SCRIPT, url],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO_ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout.strip().splitlines()[-1])
        values = {
            (point["attributes"]["exporter"], point["attributes"]["reason"]): point["value"]
            for point in report["points"]
        }

        assert values == {
            ("RedisEventExporter", "connection"): 2 * report["events"],
            ("RedisEventExporter", "circuit_open"): 3 * report["events"],
        }

    def test_full_span_queue_counted(self) -> None:
        gate = threading.Event()
        exporter = GatedBusExporter(EventBus(), gate)
        processor = LiveSpanProcessor(exporter, max_queue_size=4, max_export_batch_size=4)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(processor, SimpleSpanProcessor(memory))
        # Ten spans meet at most four in the blocked export and four in the queue.
        for index in range(5):
            run_node(tracer, f"queued-{index}")
        dropped = exporter.stats()["dropped_by_reason"]
        gate.set()
        assert provider.force_flush(WAIT_S * 1000)
        stats = exporter.stats()
        provider.shutdown()

        produced = encode_spans(memory.get_finished_spans(), include_started=True)
        assert dropped["queue_full"] > 0
        assert stats["exported_events"] + stats["dropped_events"] == len(produced)

    def test_drops_logged_once_per_interval(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level("WARNING", logger="kaygraph_otel_exporters.redis")
        url = f"redis://127.0.0.1:{free_port()}/0"
        exporter = RedisEventExporter(url, breaker_failures=3, breaker_reset_seconds=60)
        spans = ended_spans(["logged"])

        for _ in range(10):
            exporter.export(spans)

        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1
        assert "RedisEventExporter failed to export" in warnings[0]
        assert exporter.drops.total == 10 * len(encode_spans(spans))
