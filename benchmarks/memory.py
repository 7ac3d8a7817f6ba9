"""Memory: resident set size while 100,000 no-op nodes run, with the backend up and down.

Each case runs in a fresh child process (``python -m benchmarks.memory
--child ...``) so that one case's heap does not carry into the next. The
cases alternate from repetition to repetition:

- uninstrumented;
- backend up: the live Redis exporter into a running redis-server;
- backend down: the same exporter pointed at a port where a redis-server was
  stopped, so every export fails with connection refused.

The exporter is wired as ``configure(redis_url=...)`` wires it (a
``LiveSpanProcessor`` around a ``RedisEventExporter`` with the default 200 ms
delay and 8192-span queue), but built here so that its drop counter can be read.
The child samples its RSS ten times during the run; a bounded case levels off
instead of growing with the node count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

from opentelemetry.sdk.trace import TracerProvider

from benchmarks._common import (
    Finding,
    Options,
    RedisServer,
    Result,
    Table,
    instrumented,
    median,
    noop_flow,
    rss_bytes,
)

NAME = "memory"
NODES_PER_RUN = 100
SAMPLES = 10
CHILD_TIMEOUT_SECONDS = 600
CASES = ("uninstrumented", "backend up", "backend down")
MIB = 1024 * 1024
# Beyond this many MiB of growth between the middle sample and the last one,
# memory counts as still growing rather than bounded. The 8192-span queue fills
# within the first few thousand nodes, well before the middle sample.
GROWTH_LIMIT_MIB = 5.0


# Child process


def _live_provider(url: str) -> tuple[TracerProvider, Any]:
    from kaygraph_otel_exporters import LiveSpanProcessor, RedisEventExporter

    exporter = RedisEventExporter(url)
    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(exporter, schedule_delay_millis=200))
    return provider, exporter


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("--child", choices=CASES, required=True, help="the case to run")
    parser.add_argument("--nodes", type=int, required=True, help="nodes to run in total")
    parser.add_argument("--redis-url", default=None, help="Redis URL for the instrumented cases")
    args = parser.parse_args(argv)

    flow = noop_flow(NODES_PER_RUN)
    runs = args.nodes // NODES_PER_RUN
    every = max(1, runs // SAMPLES)
    provider = exporter = None
    if args.child != "uninstrumented":
        provider, exporter = _live_provider(args.redis_url)
    samples: list[tuple[int, int]] = [(0, rss_bytes())]
    started = time.perf_counter()
    with instrumented(provider) if provider is not None else contextlib.nullcontext():
        for index in range(1, runs + 1):
            flow.run({})
            if index % every == 0:
                samples.append((index * NODES_PER_RUN, rss_bytes()))
    elapsed = time.perf_counter() - started
    flushed = provider.force_flush(30_000) if provider is not None else True
    report = {
        "samples": samples,
        "after_flush": rss_bytes(),
        "seconds": elapsed,
        "flushed": flushed,
        "exporter_drops": exporter.drops.total if exporter is not None else 0,
        "drop_reasons": exporter.drops.by_reason() if exporter is not None else {},
    }
    if provider is not None:
        provider.shutdown()
    print(json.dumps(report), flush=True)


# Parent process


def run_child(case: str, nodes: int, redis_url: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.memory", "--child", case,
        "--nodes", str(nodes), "--redis-url", redis_url,
    ]  # fmt: skip
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory child {case!r} exited with {completed.returncode}: {completed.stderr[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(options: Options) -> Result:
    nodes = 10_000 if options.quick else 100_000
    reps = 1 if options.quick else 2
    outcomes: dict[str, list[dict[str, Any]]] = {case: [] for case in CASES}
    with RedisServer() as up, RedisServer() as down:
        down.stop()
        urls = {"uninstrumented": up.url, "backend up": up.url, "backend down": down.url}
        for index in range(reps):
            shift = index % len(CASES)
            for case in CASES[shift:] + CASES[:shift]:
                published_before = up.publish_calls()
                outcome = run_child(case, nodes, urls[case])
                outcome["published"] = up.publish_calls() - published_before
                outcomes[case].append(outcome)
    return _report(outcomes, nodes, reps)


def _memory_table(
    outcomes: dict[str, list[dict[str, Any]]], nodes: int, reps: int
) -> tuple[Table, dict[str, float]]:
    """Return the table of RSS figures and each case's median growth in the second half."""
    half = nodes // 2
    table = Table(
        f"Resident memory of a child process running {nodes:,} no-op nodes "
        f"({NODES_PER_RUN} per Flow run), {reps} repetition(s), medians",
        ["case", "RSS at start MiB", f"RSS at {half:,} nodes MiB", f"RSS at {nodes:,} nodes MiB",
         "growth in second half MiB", "after flush MiB", "seconds", "events published",
         "exporter drops"],
    )  # fmt: skip
    growth: dict[str, float] = {}
    for case, runs in outcomes.items():
        middle = SAMPLES // 2
        growth[case] = median(
            [(run["samples"][-1][1] - run["samples"][middle][1]) / MIB for run in runs]
        )
        published = int(median([run["published"] for run in runs]))
        table.add_row(
            case,
            f"{median([run['samples'][0][1] for run in runs]) / MIB:.1f}",
            f"{median([run['samples'][middle][1] for run in runs]) / MIB:.1f}",
            f"{median([run['samples'][-1][1] for run in runs]) / MIB:.1f}",
            f"{growth[case]:+.1f}",
            f"{median([run['after_flush'] for run in runs]) / MIB:.1f}",
            f"{median([run['seconds'] for run in runs]):.2f}",
            f"{published:,}",
            f"{int(median([run['exporter_drops'] for run in runs])):,}",
        )
    return table, growth


def _report(outcomes: dict[str, list[dict[str, Any]]], nodes: int, reps: int) -> Result:
    table, growth = _memory_table(outcomes, nodes, reps)
    for case in ("backend up", "backend down"):
        first = outcomes[case][0]
        curve = ", ".join(f"{rss / MIB:.0f}" for _, rss in first["samples"])
        table.notes.append(
            f"{case}, first repetition: RSS MiB every {nodes // SAMPLES:,} nodes: {curve}; "
            f"drops by reason: {first['drop_reasons'] or 'none'}."
        )

    peak = {
        case: max(rss for run in outcomes[case] for _, rss in run["samples"]) / MIB
        for case in ("backend up", "backend down")
    }
    table.notes.append(
        f"Largest RSS sample: backend up {peak['backend up']:.1f} MiB (its span queue stays "
        f"full), backend down {peak['backend down']:.1f} MiB."
    )
    table.notes.append(
        "Drops are events counted by the exporter's drop reporter: queue_full (the 8192-span "
        "queue was full, so the new span was dropped), connection (the export failed), "
        "circuit_open (the circuit breaker skipped the export). Published plus dropped is "
        "every event that the nodes produced, about six per node."
    )

    bounded = growth["backend down"] <= GROWTH_LIMIT_MIB
    table.notes.append(
        f"Bounded when down: growth in the second half {growth['backend down']:+.1f} MiB "
        f"(limit {GROWTH_LIMIT_MIB:g} MiB): {'yes' if bounded else 'no'}."
    )
    half = nodes // 2
    findings = [
        Finding(
            NAME,
            f"RSS growth from {half:,} to {nodes:,} nodes, backend up",
            f"{growth['backend up']:+.1f} MiB",
        ),
        Finding(
            NAME,
            f"RSS growth from {half:,} to {nodes:,} nodes, backend down",
            f"{growth['backend down']:+.1f} MiB",
            f"<= {GROWTH_LIMIT_MIB:g} MiB (bounded)",
            bounded,
        ),
    ]
    return Result([table], findings)


if __name__ == "__main__":
    child_main(sys.argv[1:])
