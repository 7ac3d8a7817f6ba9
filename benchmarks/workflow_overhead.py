"""Workflow overhead: the demo pipeline and linear graphs whose nodes do real work.

Every case runs uninstrumented and instrumented with the live Redis exporter
(``configure(redis_url=...)``), interleaved. Only the workflow runs are timed:
the exporter works in its background thread, as it would in production, and
``force_flush`` runs after each timed repetition so that no backlog spills
into the next one. A repetition runs the graph back to back for at least a
few hundred milliseconds, longer than the exporter's 200 ms schedule delay,
so exports happen inside the timed window.

Synthetic nodes either sleep (``time.sleep``: the GIL is released, as in a node
waiting on I/O or a remote model) or busy-wait (a loop on
``time.perf_counter``: the GIL is held, as in a CPU-bound node, so the
exporter thread competes with the node for it).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pocketflow
from opentelemetry.sdk.trace import TracerProvider

from benchmarks._common import (
    Finding,
    Options,
    RedisServer,
    Result,
    Table,
    chain,
    instrumented,
    interleaved,
    median,
    redis_provider,
    timed,
)
from kaygraph_otel_dashboard.demo import run_once
from kaygraph_otel_dashboard.demo_pipeline import Pipeline, build_pipeline

NAME = "workflow_overhead"
DEMO_FILES = 200
GRAPH_SIZES = (4, 50)
OVERHEAD_LIMIT_PERCENT = 1.0


def busy_wait(seconds: float) -> None:
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        pass


class WorkNode(pocketflow.Node):  # type: ignore[misc]
    """A node whose ``exec`` sleeps or busy-waits for a fixed time."""

    def __init__(self, seconds: float, busy: bool) -> None:
        super().__init__()
        self.seconds = seconds
        self.busy = busy

    def exec(self, prep_res: object) -> None:
        if self.busy:
            busy_wait(self.seconds)
        else:
            time.sleep(self.seconds)


def work_flow(size: int, seconds: float, busy: bool) -> pocketflow.Flow:
    return chain([WorkNode(seconds, busy) for _ in range(size)])


def _pair(run: Callable[[], None], provider: TracerProvider) -> dict[str, Callable[[], float]]:
    """Return the uninstrumented and the instrumented case of ``run``."""

    def instrumented_case() -> float:
        with instrumented(provider):
            elapsed = timed(run)
        provider.force_flush(30_000)
        return elapsed

    return {"uninstrumented": lambda: timed(run), "Redis live": instrumented_case}


def _overhead(samples: dict[str, list[float]]) -> tuple[float, float, float]:
    """Return the median seconds of both cases and the overhead in percent."""
    base = median(samples["uninstrumented"])
    live = median(samples["Redis live"])
    return base, live, (live - base) / base * 100


def measure_demo(provider: TracerProvider, reps: int, files: int) -> tuple[float, float, float]:
    pipeline: Pipeline = build_pipeline("pocketflow", pocketflow)
    with tempfile.TemporaryDirectory(prefix="kaygraph-bench-reports-") as report_dir:

        def run() -> None:
            run_once(pipeline, 0, files, Path(report_dir))

        return _overhead(interleaved(_pair(run, provider), reps))


def _plan(size: int, seconds: float, quick: bool) -> tuple[int, int, int]:
    """Return (graph runs per repetition, repetitions, warm-up rounds) for one cell.

    Cells whose single run takes seconds get fewer repetitions and no warm-up,
    which keeps the full benchmark near three minutes.
    """
    min_rep_seconds = 0.05 if quick else 0.3
    one_run = size * seconds
    runs = max(1, math.ceil(min_rep_seconds / one_run))
    if quick:
        return runs, 2, 1
    if one_run >= 2:
        return runs, 3, 0
    if one_run >= 0.3:
        return runs, 5, 1
    return runs, 7, 1


def run(options: Options) -> Result:
    durations_ms = (0.1, 1.0, 10.0) if options.quick else (0.1, 1.0, 10.0, 100.0)
    demo_files = 40 if options.quick else DEMO_FILES
    demo_reps = 2 if options.quick else 7

    with RedisServer() as server:
        provider = redis_provider(server.url)
        demo = measure_demo(provider, demo_reps, demo_files)
        cells: dict[tuple[str, int, float], tuple[int, int, float, float, float]] = {}
        for mode in ("sleep", "busy-wait"):
            for size in GRAPH_SIZES:
                for duration_ms in durations_ms:
                    runs, reps, warmup = _plan(size, duration_ms / 1000, options.quick)
                    flow = work_flow(size, duration_ms / 1000, busy=mode == "busy-wait")

                    def run_graph(flow: pocketflow.Flow = flow, runs: int = runs) -> None:
                        for _ in range(runs):
                            flow.run({})

                    samples = interleaved(_pair(run_graph, provider), reps, warmup=warmup)
                    base, live, percent = _overhead(samples)
                    cells[(mode, size, duration_ms)] = (runs, reps, base, live, percent)
        provider.shutdown()
    return _report(demo, demo_files, demo_reps, cells, durations_ms)


def _report(
    demo: tuple[float, float, float],
    demo_files: int,
    demo_reps: int,
    cells: dict[tuple[str, int, float], tuple[int, int, float, float, float]],
    durations_ms: tuple[float, ...],
) -> Result:
    demo_table = Table(
        f"Demo pipeline (standard-library census, {demo_files} files), {demo_reps} repetitions",
        ["case", "seconds per run (median)", "overhead"],
    )
    demo_table.add_row("uninstrumented", f"{demo[0]:.3f}", "-")
    demo_table.add_row("Redis live", f"{demo[1]:.3f}", f"{demo[2]:+.2f}%")

    table = Table(
        "Linear graphs with the live Redis exporter",
        ["node work", "nodes", "work per node", "runs x reps", "uninstrumented s/rep",
         "Redis live s/rep", "added us/node", "overhead"],
    )  # fmt: skip
    for (mode, size, duration_ms), (runs, reps, base, live, percent) in cells.items():
        added_us = (live - base) / (runs * size) * 1e6
        table.add_row(
            mode, size, f"{duration_ms:g} ms", f"{runs} x {reps}", f"{base:.4f}", f"{live:.4f}",
            f"{added_us:.1f}", f"{percent:+.2f}%",
        )  # fmt: skip
    table.notes.append(
        "sleep = time.sleep in exec (GIL released, like I/O); busy-wait = a perf_counter loop "
        "in exec (GIL held, like CPU-bound work)."
    )

    findings = [Finding(NAME, f"demo pipeline overhead ({demo_files} files)", f"{demo[2]:+.2f}%")]
    for mode in ("sleep", "busy-wait"):
        for size in GRAPH_SIZES:
            smallest = _smallest_duration_below_limit(cells, mode, size, durations_ms)
            value = (
                f"{smallest:g} ms"
                if smallest is not None
                else f"none up to {durations_ms[-1]:g} ms"
            )
            findings.append(
                Finding(NAME, f"smallest node work with overhead < 1%, {mode}, {size} nodes", value)
            )
    table.notes.append(
        "Smallest node work with overhead < 1% (at that duration and every longer one): "
        + "; ".join(f"{f.figure.split(', ', 1)[1]}: {f.value}" for f in findings[1:])
    )
    return Result([demo_table, table], findings)


def _smallest_duration_below_limit(
    cells: dict[tuple[str, int, float], tuple[int, int, float, float, float]],
    mode: str,
    size: int,
    durations_ms: tuple[float, ...],
) -> float | None:
    smallest = None
    for duration_ms in reversed(durations_ms):
        if cells[(mode, size, duration_ms)][4] >= OVERHEAD_LIMIT_PERCENT:
            break
        smallest = duration_ms
    return smallest
