"""Dashboard fan-out: events per second relayed to SSE clients, and end-to-end latency.

The dashboard runs in this process (``create_app`` and ``start_in_thread``).
Its SSE clients are httpx streams on one asyncio loop in a child process
(``python -m benchmarks.fanout --client ...``), so that the clients do not
compete with the server for its GIL.

Throughput: prebuilt schema events are published to the dashboard's
``EventBus`` in batches of 512, as an exporter would, and every client counts
them. The rate is events per client per second, from the first publish to the
last client's last event. The client queue is raised to hold every event, so
none is dropped. Client counts 1, 10 and 50 alternate from repetition to
repetition.

Latency: an instrumented workflow whose nodes sleep runs with the default
200 ms flush interval while 50 clients listen. Each client computes, for every
``node_completed`` event, its receipt time minus the event's ``timestamp``,
which is the time the node ended. The embedded mode (``configure(bus=...)``)
and the Redis mode (``configure(redis_url=...)`` and the dashboard's Redis
relay) alternate run by run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import queue
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import IO, Any

import httpx
import pocketflow
import psutil

from benchmarks._common import (
    Finding,
    Options,
    RedisServer,
    Result,
    Table,
    chain,
    instrumented,
    median,
    percentile,
    round_ratios,
    wait_until,
)
from benchmarks.throughput import prebuilt_spans
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.server import RunningServer, start_in_thread
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans
from kaygraph_otel_exporters.setup import configure

NAME = "fanout"
CLIENT_COUNTS = (1, 10, 50)
LATENCY_CLIENTS = 50
PUBLISH_BATCH = 512
CLIENT_READY_TIMEOUT_SECONDS = 30.0
COMPLETED_MARKER = b'"event_name":"node_completed"'
DATA_MARKER = b"\ndata:"
RESET_MARKER = b"\nevent: reset"


# Client side, run in the child process.


async def _count_events(
    http: httpx.AsyncClient, url: str, expected: int, connected: asyncio.Queue[None]
) -> dict[str, Any]:
    """Count SSE data lines until ``expected`` arrive; return the count, resets and times."""
    count = resets = 0
    first = last = 0.0
    tail = b""
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        connected.put_nowait(None)
        async for chunk in response.aiter_bytes():
            text = tail + chunk
            # A marker that lies wholly in the tail was counted with the previous chunk.
            found = text.count(DATA_MARKER) - tail.count(DATA_MARKER)
            if found:
                last = time.time()
                first = first or last
                count += found
            resets += text.count(RESET_MARKER) - tail.count(RESET_MARKER)
            # The tail carries a marker that a chunk boundary splits into the next chunk.
            tail = text[-len(RESET_MARKER) :]
            if count >= expected:
                break
    return {"count": count, "resets": resets, "first": first, "last": last}


async def _completed_latencies(
    http: httpx.AsyncClient, url: str, expected: int, connected: asyncio.Queue[None]
) -> dict[str, Any]:
    """Record receipt time minus ``timestamp`` of ``node_completed`` events, in milliseconds."""
    latencies: list[float] = []
    resets = 0
    async with http.stream("GET", url) as response:
        response.raise_for_status()
        connected.put_nowait(None)
        async for line in response.aiter_lines():
            if line.startswith("event: reset"):
                resets += 1
                continue
            if not line.startswith("data:") or COMPLETED_MARKER.decode() not in line:
                continue
            received = time.time()
            event = json.loads(line[5:])
            ended = datetime.datetime.fromisoformat(event["timestamp"]).timestamp()
            latencies.append((received - ended) * 1000)
            if len(latencies) >= expected:
                break
    return {"latencies_ms": latencies, "resets": resets}


async def _client_main(url: str, clients: int, mode: str, expected: int, timeout: float) -> None:
    limits = httpx.Limits(max_connections=clients + 5, max_keepalive_connections=0)
    connected: asyncio.Queue[None] = asyncio.Queue()
    reader = _count_events if mode == "count" else _completed_latencies
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=10), limits=limits) as http:
        tasks = [
            asyncio.create_task(reader(http, url, expected, connected)) for _ in range(clients)
        ]
        for _ in range(clients):
            await asyncio.wait_for(connected.get(), CLIENT_READY_TIMEOUT_SECONDS)
        print("READY", flush=True)
        cpu_started = time.process_time()
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        cpu_seconds = time.process_time() - cpu_started
        for task in pending:
            task.cancel()
        results = [task.result() for task in done if task.exception() is None]
        errors = [repr(task.exception()) for task in done if task.exception() is not None]
    summary = {
        "results": results,
        "errors": errors,
        "timed_out": len(pending),
        "cpu_seconds": cpu_seconds,
    }
    print(json.dumps(summary), flush=True)


def client_process_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fanout")
    parser.add_argument("--client", required=True, help="URL of the dashboard's /api/events")
    parser.add_argument("--clients", type=int, required=True, help="number of SSE clients")
    parser.add_argument("--mode", choices=("count", "latency"), required=True)
    parser.add_argument("--expected", type=int, required=True, help="events each client waits for")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before giving up")
    args = parser.parse_args(argv)
    asyncio.run(_client_main(args.client, args.clients, args.mode, args.expected, args.timeout))


# Server side, run in the benchmark process.


class ClientProcess:
    """A child process running SSE clients; ``start`` returns once every client is connected."""

    def __init__(self, url: str, clients: int, mode: str, expected: int, timeout: float) -> None:
        command = [
            sys.executable, "-m", "benchmarks.fanout", "--client", url,
            "--clients", str(clients), "--mode", mode, "--expected", str(expected),
            "--timeout", str(timeout),
        ]  # fmt: skip
        self.timeout = timeout
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, args=(self._process.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self._lines.put(line)

    def wait_ready(self) -> None:
        try:
            line = self._lines.get(timeout=CLIENT_READY_TIMEOUT_SECONDS + 10)
        except queue.Empty:
            self.kill()
            raise RuntimeError("SSE client process did not connect in time") from None
        if line.strip() != "READY":
            self.kill()
            raise RuntimeError(f"SSE client process wrote {line!r} instead of READY")

    def result(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=self.timeout + 30)
        except queue.Empty:
            self.kill()
            raise RuntimeError(
                f"SSE client process sent no result within {self.timeout + 30} s"
            ) from None
        self._process.wait(30)
        return json.loads(line)  # type: ignore[no-any-return]

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait(10)


def _events(count: int) -> list[dict[str, Any]]:
    """Return ``count`` realistic schema events, each with its own event id."""
    templates = encode_spans(prebuilt_spans(1))
    events = []
    for index in range(count):
        event = dict(templates[index % len(templates)])
        event["event_id"] = str(uuid.uuid4())
        events.append(event)
    return events


def _chunks(events: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(events), size):
        yield events[start : start + size]


def measure_fanout(
    server_url: str, bus: EventBus, clients: int, events: list[dict[str, Any]]
) -> dict[str, float]:
    """Publish ``events`` to ``bus`` while ``clients`` SSE clients listen; return the rates.

    Raises:
        RuntimeError: a client failed, timed out or received fewer events than published.
    """
    expected = len(events)
    process = ClientProcess(f"{server_url}/api/events", clients, "count", expected, timeout=120)
    process.wait_ready()

    if not wait_until(lambda: bus.subscriber_count >= clients, 10):
        process.kill()
        raise RuntimeError(
            f"the dashboard has {bus.subscriber_count} subscribers, expected {clients}"
        )

    server_cpu = psutil.Process().cpu_times()
    started = time.time()
    for batch in _chunks(events, PUBLISH_BATCH):
        bus.publish_many(batch)
    outcome = process.result()
    server_cpu_after = psutil.Process().cpu_times()

    results = outcome["results"]
    if outcome["errors"] or outcome["timed_out"] or len(results) != clients:
        raise RuntimeError(
            f"SSE clients failed: {outcome['errors']}, {outcome['timed_out']} timed out"
        )
    counts = [result["count"] for result in results]
    if min(counts) < expected:
        raise RuntimeError(f"an SSE client received {min(counts)} of {expected} events")
    elapsed = max(result["last"] for result in results) - started
    firsts = sorted(result["first"] - started for result in results)
    # The server's CPU time runs until the client process has exited, a little past
    # the last event, so its share is an upper bound.
    server_seconds = (server_cpu_after.user + server_cpu_after.system) - (
        server_cpu.user + server_cpu.system
    )
    return {
        "per_client": expected / elapsed,
        "deliveries": expected * clients / elapsed,
        "resets": sum(result["resets"] for result in results),
        "server_cpu": server_seconds / elapsed,
        "client_cpu": outcome["cpu_seconds"] / elapsed,
        "first_median": percentile(firsts, 0.5),
        "first_max": firsts[-1],
    }


class SleepNode(pocketflow.Node):  # type: ignore[misc]
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def exec(self, prep_res: object) -> None:
        time.sleep(self.seconds)


def run(options: Options) -> Result:
    reps = 1 if options.quick else 3
    deliveries = 5_000 if options.quick else 100_000
    bus = EventBus()
    largest = max(deliveries // clients for clients in CLIENT_COUNTS)
    app = create_app(bus=bus, max_client_queue=largest + 100)
    server = start_in_thread(app, "127.0.0.1", 0)
    rates: dict[int, list[dict[str, float]]] = {clients: [] for clients in CLIENT_COUNTS}
    try:
        pool = _events(largest)
        for index in range(reps):
            shift = index % len(CLIENT_COUNTS)
            for clients in CLIENT_COUNTS[shift:] + CLIENT_COUNTS[:shift]:
                events = pool[: deliveries // clients]
                rates[clients].append(measure_fanout(server.url, bus, clients, events))
    finally:
        server.stop()

    configurations = [(10, 0.025, 1)] if options.quick else [(40, 0.025, 5), (20, 0.1, 5)]
    latency = {
        sleep_seconds: measure_latency(nodes, sleep_seconds, runs)
        for nodes, sleep_seconds, runs in configurations
    }
    return _report(rates, reps, deliveries, latency)


def measure_latency(nodes: int, sleep_seconds: float, runs: int) -> dict[str, dict[str, Any]]:
    """Run a workflow of sleeping nodes in embedded and Redis mode, alternating run by run.

    Each mode's dashboard has ``LATENCY_CLIENTS`` clients. Returns a latency summary per mode.
    """
    flow = chain([SleepNode(sleep_seconds) for _ in range(nodes)])
    expected = nodes * runs
    with RedisServer() as redis_server:
        embedded_bus = EventBus()
        servers: dict[str, RunningServer] = {
            "embedded (EventBus)": start_in_thread(create_app(bus=embedded_bus), "127.0.0.1", 0),
            "Redis relay": start_in_thread(create_app(redis_url=redis_server.url), "127.0.0.1", 0),
        }
        providers = {
            "embedded (EventBus)": configure(bus=embedded_bus, set_global=False),
            "Redis relay": configure(redis_url=redis_server.url, set_global=False),
        }
        processes: dict[str, ClientProcess] = {}
        try:
            _wait_for_relay(redis_server)
            for mode, server in servers.items():
                timeout = nodes * sleep_seconds * runs * 2 + 60
                processes[mode] = ClientProcess(
                    f"{server.url}/api/events", LATENCY_CLIENTS, "latency", expected, timeout
                )
            for process in processes.values():
                process.wait_ready()
            modes = list(servers)
            busy = dict.fromkeys(modes, 0.0)
            for index in range(runs):
                for mode in modes[index % 2 :] + modes[: index % 2]:
                    started = time.perf_counter()
                    with instrumented(providers[mode]):
                        flow.run({})
                    busy[mode] += time.perf_counter() - started
                    # The spans leave on the processor's own schedule; forcing a flush
                    # would shorten the latency being measured.
                    time.sleep(0.5)
            outcomes = {mode: process.result() for mode, process in processes.items()}
        finally:
            for process in processes.values():
                process.kill()
            for provider in providers.values():
                provider.shutdown()
            for server in servers.values():
                server.stop()
    summaries = {mode: _latency_summary(outcome, expected) for mode, outcome in outcomes.items()}
    # Both modes run the same workflow, so the embedded bus's count serves for both.
    event_rate = embedded_bus.published / busy["embedded (EventBus)"]
    for summary in summaries.values():
        summary["event_rate"] = event_rate
    return summaries


def _wait_for_relay(redis_server: RedisServer) -> None:
    import redis

    with redis.Redis(port=redis_server.port, socket_timeout=2) as client:

        def subscribed() -> bool:
            counts = dict(client.pubsub_numsub("kaygraph:events"))
            return int(counts.get(b"kaygraph:events", 0)) >= 1

        if not wait_until(subscribed, 15):
            raise RuntimeError("the dashboard's Redis relay did not subscribe within 15 s")


def _latency_summary(outcome: dict[str, Any], expected: int) -> dict[str, Any]:
    latencies = [value for result in outcome["results"] for value in result["latencies_ms"]]
    received = [len(result["latencies_ms"]) for result in outcome["results"]]
    return {
        "p50": percentile(latencies, 0.5) if latencies else float("nan"),
        "p99": percentile(latencies, 0.99) if latencies else float("nan"),
        "max": max(latencies) if latencies else float("nan"),
        "samples": len(latencies),
        "clients": len(outcome["results"]),
        "min_received": min(received) if received else 0,
        "expected": expected,
        "resets": sum(result["resets"] for result in outcome["results"]),
        "errors": outcome["errors"],
    }


def _report(
    rates: dict[int, list[dict[str, float]]],
    reps: int,
    deliveries: int,
    latency: dict[float, dict[str, dict[str, Any]]],
) -> Result:
    fanout = Table(
        f"SSE fan-out from the dashboard's EventBus, {deliveries:,} deliveries per measurement, "
        f"{reps} repetitions",
        ["clients", "events/s per client (median)", "deliveries/s (median)",
         "per-client rate vs 1 client", "first event ms (median client)",
         "first event ms (last client)", "server CPU", "client CPU", "resets"],
    )  # fmt: skip
    single = [sample["per_client"] for sample in rates[1]]
    for clients, samples in rates.items():
        per_client = [sample["per_client"] for sample in samples]
        fanout.add_row(
            clients,
            f"{median(per_client):,.0f}",
            f"{median([sample['deliveries'] for sample in samples]):,.0f}",
            f"{median(round_ratios(per_client, single)):.3f}",
            f"{median([sample['first_median'] for sample in samples]) * 1000:.0f}",
            f"{median([sample['first_max'] for sample in samples]) * 1000:.0f}",
            f"{median([sample['server_cpu'] for sample in samples]) * 100:.0f}%",
            f"{median([sample['client_cpu'] for sample in samples]) * 100:.0f}%",
            int(sum(sample["resets"] for sample in samples)),
        )
    fanout.notes.append(
        "Clients and server share this machine's CPUs; the clients run in one child process. "
        "CPU columns are process CPU time over the measured interval (100% = one core). "
        "First event = time from the first publish to a client's first event; the per-client "
        "rate uses the time until the last client received its last event."
    )

    latency_table = Table(
        f"Node end to SSE client receipt, {LATENCY_CLIENTS} clients, 200 ms flush interval",
        ["node sleep", "events/s", "mode", "p50 ms", "p99 ms", "max ms", "samples",
         "completed events per client (min/expected)", "resets"],
    )  # fmt: skip
    for sleep_seconds, modes in latency.items():
        for mode, summary in modes.items():
            _add_latency_row(latency_table, sleep_seconds, mode, summary)
    latency_table.notes.append(
        "Latency = client receipt time minus the node_completed event's timestamp (the node's "
        "end), both from this machine's clock. events/s = schema events the workflow emits "
        "per second, each sent to every client."
    )

    findings = [
        Finding(
            NAME,
            f"SSE events/s per client at {clients} client(s)",
            f"{median([sample['per_client'] for sample in samples]):,.0f}",
        )
        for clients, samples in rates.items()
    ]
    for sleep_seconds, modes in latency.items():
        for mode, summary in modes.items():
            findings.append(
                Finding(
                    NAME,
                    f"node end to client, {LATENCY_CLIENTS} clients, "
                    f"{sleep_seconds * 1000:g} ms nodes, {mode}",
                    f"p50 {summary['p50']:.0f} ms, p99 {summary['p99']:.0f} ms",
                )
            )
    return Result([fanout, latency_table], findings)


def _add_latency_row(
    table: Table, sleep_seconds: float, mode: str, summary: dict[str, Any]
) -> None:
    table.add_row(
        f"{sleep_seconds * 1000:g} ms",
        f"{summary['event_rate']:.0f}",
        mode,
        f"{summary['p50']:.1f}",
        f"{summary['p99']:.1f}",
        f"{summary['max']:.1f}",
        summary["samples"],
        f"{summary['min_received']}/{summary['expected']}",
        summary["resets"],
    )
    if summary["errors"]:
        table.notes.append(
            f"{mode}, {sleep_seconds * 1000:g} ms nodes: client errors {summary['errors']}"
        )


if __name__ == "__main__":
    client_process_main(sys.argv[1:])
