"""Run each backend fault against a real instrumented workflow and print what it cost.

Usage::

    python -m benchmarks.fault_report [--repeat N] [--markdown PATH]

For every fault the script runs the workflow uninstrumented, then instrumented
with the fault injected, in the same process, and reports, over ``--repeat``
repetitions of every scenario:

- produced: the schema events the run produced, from an in-memory exporter on
  the same tracer provider;
- lost: produced events that never reached the backend, measured at the
  backend (a Redis subscriber and the run's stream, or the webhook receiver
  after deduplication by ``webhook-id``);
- counted: the events the exporter's ``stats()`` reports as dropped;
- slowdown: the instrumented run's wall time with the fault divided by the
  wall time of the uninstrumented run just before it. The table shows the
  median and the range over the repetitions.

Backends are real: redis-server processes on loopback ports and HTTP receivers
on 127.0.0.1. The fault injectors and receivers are the ones the tests use
(``tests/``), so the script runs from the repository root. Nothing here is a
pass/fail check: the numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
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
from tests.redis_server import RedisServer
from tests.test_exporter_faults import (
    MEMORY_SCRIPT,
    PubSubCollector,
    chain_flow,
    pubsub_client_ports,
    run_flow,
    stalled_subscriber,
    stream_events,
)
from tests.test_webhook_exporter import (
    Reply,
    SilentReceiver,
    WebhookReceiver,
    deliveries_by_id,
    new_secret,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NODES = 200
NODE_SLEEP_S = 0.002
FAULT_AT_NODE = 50
STALL_NODES = 1500
STALL_PAYLOAD = 3000
WAIT_S = 30.0
COMMAND = "python -m benchmarks.fault_report"


@dataclass
class Row:
    """One fault's figures."""

    fault: str
    produced: int
    lost: int
    counted: int
    fault_seconds: float
    baseline_seconds: float
    note: str = ""

    @property
    def slowdown(self) -> float:
        return self.fault_seconds / self.baseline_seconds


@dataclass
class Measured:
    produced: list[dict[str, Any]]
    wall_seconds: float
    baseline_seconds: float


def measure(
    provider: TracerProvider,
    correlation_id: str,
    flow_factory: Callable[[Callable[[int], None] | None], Any],
    hook: Callable[[int], None] | None = None,
    **options: Any,
) -> Measured:
    """Run the workflow uninstrumented, then instrumented with ``provider``, and time both."""
    gc.collect()
    _, baseline = run_flow(flow_factory(None))
    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrument_pocketflow(tracer_provider=provider, **options)
    try:
        gc.collect()
        with run_context(correlation_id=correlation_id):
            _, wall = run_flow(flow_factory(hook))
    finally:
        uninstrument_pocketflow()
    produced = encode_spans(memory.get_finished_spans(), include_started=True)
    return Measured(produced, wall, baseline)


def sleepy_flow(hook: Callable[[int], None] | None) -> Any:
    return chain_flow(NODES, NODE_SLEEP_S, hook)


def live_exporter(provider: TracerProvider) -> Any:
    # The SDK offers no public way to list a provider's processors.
    processors = provider._active_span_processor._span_processors  # noqa: SLF001
    [exporter] = [p.exporter for p in processors if isinstance(p, LiveSpanProcessor)]
    return exporter


def at_node(index: int, action: Callable[[], None]) -> Callable[[int], None]:
    """Return a node hook that starts ``action`` on a thread when node ``index`` runs."""

    def hook(node: int) -> None:
        if node == index:
            threading.Thread(target=action, daemon=True).start()

    return hook


# Redis faults


def redis_row(
    server: RedisServer,
    fault: str,
    note: str,
    *,
    hook_action: Callable[[RedisEventExporter], Callable[[], None]] | None = None,
    **settings: Any,
) -> Row:
    channel = f"kaygraph:bench:{time.monotonic_ns()}"
    correlation_id = f"bench-{time.monotonic_ns()}"
    server.start()
    provider = configure(
        redis_url=server.url,
        channel=channel,
        set_global=False,
        schedule_delay_millis=10,
        **settings,
    )
    exporter = live_exporter(provider)
    collector = PubSubCollector(server.url, channel)
    hook = at_node(FAULT_AT_NODE, hook_action(exporter)) if hook_action else None

    measured = measure(provider, correlation_id, sleepy_flow, hook)
    provider.force_flush(int(WAIT_S * 1000))
    server.start()
    # Messages already published may still be on their way to the subscriber.
    time.sleep(0.2)
    collector.close()
    provider.shutdown()

    published = {event["event_id"] for event in collector.events}
    stream = stream_events(server.port, f"kaygraph:stream:{correlation_id}")
    # A killed server loses its stream, so the stream contains what arrived after the restart.
    received = published | {event["event_id"] for event in stream}
    produced = {event["event_id"] for event in measured.produced}
    stats = exporter.stats()
    return Row(
        fault,
        len(produced),
        len(produced - received),
        stats["dropped_events"],
        measured.wall_seconds,
        measured.baseline_seconds,
        f"{note}; the run's stream contains {len(stream)} events; dropped by reason: "
        f"{stats['dropped_by_reason'] or 'none'}",
    )


def kill_and_restart(server: RedisServer) -> Callable[[RedisEventExporter], Callable[[], None]]:
    def action_for(exporter: RedisEventExporter) -> Callable[[], None]:
        def action() -> None:
            server.stop()
            wait_for(lambda: exporter.breaker.state == "open", WAIT_S, 0.002)
            server.start()

        return action

    return action_for


def pause(server: RedisServer, millis: int) -> Callable[[RedisEventExporter], Callable[[], None]]:
    def action_for(exporter: RedisEventExporter) -> Callable[[], None]:
        def action() -> None:
            client = redis.Redis(port=server.port, socket_timeout=5)
            client.client_pause(millis, all=True)
            client.close()

        return action

    return action_for


def redis_down_row(server: RedisServer) -> Row:
    server.stop()
    provider = configure(redis_url=server.url, set_global=False, schedule_delay_millis=10)
    exporter = live_exporter(provider)
    measured = measure(provider, "bench-down", sleepy_flow)
    provider.force_flush(int(WAIT_S * 1000))
    provider.shutdown()
    server.start()
    return Row(
        "Redis down for the whole run",
        len(measured.produced),
        len(measured.produced),
        exporter.stats()["dropped_events"],
        measured.wall_seconds,
        measured.baseline_seconds,
        "connection refused; the circuit opens after 5 failed batches",
    )


def stalled_row(server: RedisServer, healthy: bool) -> Row:
    server.start()
    admin = redis.Redis(port=server.port, socket_timeout=5, decode_responses=True)
    original = admin.config_get("client-output-buffer-limit")["client-output-buffer-limit"]
    channel = f"kaygraph:bench:{time.monotonic_ns()}"
    correlation_id = f"bench-stalled-{time.monotonic_ns()}"
    sock = None
    if not healthy:
        admin.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
        sock = stalled_subscriber(server.port, channel)
    try:
        provider = configure(
            redis_url=server.url,
            channel=channel,
            redis_stream_maxlen=50_000,
            schedule_delay_millis=20,
            set_global=False,
        )
        exporter = live_exporter(provider)
        measured = measure(
            provider,
            correlation_id,
            lambda hook: chain_flow(STALL_NODES, NODE_SLEEP_S, hook, payload=STALL_PAYLOAD),
            capture_snapshots=True,
        )
        provider.force_flush(int(WAIT_S * 1000))
        disconnected = sock is not None and wait_for(
            lambda: sock.getsockname()[1] not in pubsub_client_ports(admin), WAIT_S
        )
        provider.shutdown()
        stored = {
            e["event_id"] for e in stream_events(server.port, f"kaygraph:stream:{correlation_id}")
        }
    finally:
        admin.config_set("client-output-buffer-limit", original)
        admin.close()
        if sock is not None:
            sock.close()
    produced = {event["event_id"] for event in measured.produced}
    if healthy:
        fault, note = "none (1,500 nodes, 3 KB snapshots)", "reference for the next row"
    else:
        fault = "Pub/Sub subscriber stalls (64 KB output limit)"
        note = f"Redis disconnected the subscriber: {disconnected}"
    return Row(
        fault,
        len(produced),
        len(produced - stored),
        exporter.stats()["dropped_events"],
        measured.wall_seconds,
        measured.baseline_seconds,
        note,
    )


# Webhook faults


def webhook_row(fault: str, note: str, url: str, secret: str, **settings: Any) -> tuple[Row, Any]:
    exporter = WebhookSpanExporter(url, secret, **settings)
    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(exporter, schedule_delay_millis=10))
    measured = measure(provider, f"bench-webhook-{time.monotonic_ns()}", sleepy_flow)
    exporter.force_flush(int(WAIT_S * 1000))
    provider.shutdown()
    row = Row(
        fault,
        len(measured.produced),
        0,
        exporter.stats()["dropped_events"],
        measured.wall_seconds,
        measured.baseline_seconds,
        note,
    )
    return row, measured


def receiver_lost(receiver: WebhookReceiver, secret: str, measured: Measured) -> int:
    received: set[str] = set()
    for events in deliveries_by_id(receiver.requests, secret).values():
        received.update(event["event_id"] for event in events)
    return len({event["event_id"] for event in measured.produced} - received)


def webhook_rows() -> list[Row]:
    rows: list[Row] = []
    fast = {"connect_timeout": 1.0, "read_timeout": 0.5, "backoff_initial_seconds": 0.1}

    secret = new_secret()
    with WebhookReceiver() as receiver:
        row, measured = webhook_row("none (webhook)", "reference", receiver.url, secret, **fast)
        row.lost = receiver_lost(receiver, secret, measured)
        rows.append(row)

    secret = new_secret()
    replies = [Reply(500), Reply(429, {"Retry-After": "1"})]
    with WebhookReceiver(replies) as receiver:
        row, measured = webhook_row(
            "webhook 500, then 429 Retry-After: 1, then 200",
            "retried with the same webhook-id",
            receiver.url,
            secret,
            **fast,
        )
        row.lost = receiver_lost(receiver, secret, measured)
        rows.append(row)

    silent_faults = (
        ("hang", "webhook accepts the connection and never responds"),
        ("reset", "webhook resets the connection (SO_LINGER 0)"),
    )
    for mode, fault in silent_faults:
        with SilentReceiver(mode) as silent:
            row, _ = webhook_row(fault, "", silent.url, new_secret(), **fast)
            accepted = silent.accepted
        row.note = (
            f"read timeout 0.5 s, 5 attempts per body; {accepted} connections in all, then "
            "the circuit opened; nothing was acknowledged"
        )
        row.lost = row.produced
        rows.append(row)

    secret = new_secret()
    with WebhookReceiver(default=Reply(200, delay=0.7)) as receiver:
        row, measured = webhook_row(
            "webhook responds after the read timeout",
            "",
            receiver.url,
            secret,
            **fast,
        )
        row.lost = receiver_lost(receiver, secret, measured)
        requests = receiver.requests
        bodies = len({request.headers["webhook-id"] for request in requests})
        row.note = (
            f"{len(requests)} requests carrying {bodies} distinct "
            f"{'body' if bodies == 1 else 'bodies'} reached the receiver, which responded to "
            "each after the 0.5 s read timeout; the exporter counts them as dropped, and the "
            "circuit then opened"
        )
        rows.append(row)

    secret = new_secret()
    with WebhookReceiver(default=Reply(410)) as receiver:
        row, measured = webhook_row("webhook responds 410 Gone", "", receiver.url, secret, **fast)
        row.lost = receiver_lost(receiver, secret, measured)
        row.note = (
            f"{len(receiver.requests)} request reached the receiver, which responded 410; the "
            "exporter counts that body as dropped and sends nothing more"
        )
        rows.append(row)
    return rows


# Memory


def memory_figures() -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    redis_url = f"redis://127.0.0.1:{free_port()}/0"
    webhook_url = f"http://127.0.0.1:{free_port()}/hook"
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, redis_url, webhook_url, new_secret()],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO_ROOT,
        check=True,
    )
    return dict(json.loads(result.stdout.strip().splitlines()[-1]))


# Output


def machine() -> str:
    memory_gib = psutil.virtual_memory().total / 2**30
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"nproc {cpus}, {memory_gib:.1f} GiB memory, Python "
        f"{platform.python_version()}, {platform.platform()}"
    )


def per_run(values: list[int]) -> str:
    """Return one value when all repetitions agree, else every repetition's value in order."""
    if len(set(values)) == 1:
        return str(values[0])
    return ", ".join(str(value) for value in values)


def markdown(runs: list[list[Row]], memory: dict[str, Any]) -> str:
    """Return the report: one table row per fault, with the figures of every repetition."""
    lines = [
        f"Command: `{COMMAND} --repeat {len(runs)}`",
        "",
        f"Machine: {machine()}",
        "",
        "| fault | events produced | lost (measured at the backend) | counted as dropped by "
        "`stats()` | slowdown (fault ÷ uninstrumented): median (range) | notes (first "
        "repetition) |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for repetitions in zip(*runs, strict=True):
        first = repetitions[0]
        ratios = sorted(row.slowdown for row in repetitions)
        median = statistics.median(ratios)
        spread = f" ({ratios[0]:.2f} to {ratios[-1]:.2f})" if len(ratios) > 1 else ""
        lines.append(
            f"| {first.fault} | {per_run([row.produced for row in repetitions])} | "
            f"{per_run([row.lost for row in repetitions])} | "
            f"{per_run([row.counted for row in repetitions])} | {median:.2f}{spread} | "
            f"{first.note} |"
        )
    growth_1k = (memory["after_1k"] - memory["start"]) / 2**20
    growth_10k = (memory["after_10k"] - memory["after_1k"]) / 2**20
    lines += [
        "",
        "Memory with Redis and the webhook both unreachable (RSS of a fresh process, "
        "after garbage collection):",
        "",
        "| nodes run | RSS growth |",
        "| ---: | ---: |",
        f"| 1,000 | {growth_1k:+.1f} MiB |",
        f"| 10,000 more | {growth_10k:+.1f} MiB |",
    ]
    return "\n".join(lines) + "\n"


def redis_rows(server: RedisServer) -> list[Row]:
    return [
        redis_row(server, "none (Redis)", "reference"),
        redis_row(
            server,
            f"Redis killed at node {FAULT_AT_NODE} of {NODES}, restarted once the circuit opened",
            "circuit: 2 failures, 0.1 s cool-down",
            hook_action=kill_and_restart(server),
            breaker_failures=2,
            breaker_reset_seconds=0.1,
        ),
        redis_row(
            server,
            f"Redis paused for 3 s (CLIENT PAUSE) at node {FAULT_AT_NODE}",
            "circuit: 2 failures, 0.3 s cool-down; socket timeout 2 s (the default)",
            hook_action=pause(server, 3000),
            breaker_failures=2,
            breaker_reset_seconds=0.3,
        ),
        redis_down_row(server),
        stalled_row(server, healthy=True),
        stalled_row(server, healthy=False),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of every scenario (default: 3)")
    parser.add_argument("--markdown", type=Path, help="also write the report to this file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")

    runs: list[list[Row]] = []
    with tempfile.TemporaryDirectory(prefix="kaygraph-fault-report-") as workdir:
        server = RedisServer(port=free_port(), workdir=Path(workdir))
        try:
            for repetition in range(args.repeat):
                print(f"repetition {repetition + 1} of {args.repeat}", file=sys.stderr, flush=True)
                runs.append(redis_rows(server) + webhook_rows())
        finally:
            server.stop()
    memory = memory_figures()

    text = markdown(runs, memory)
    print(text)
    if args.markdown is not None:
        args.markdown.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
