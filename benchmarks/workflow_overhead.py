"""Workflow overhead: the demo pipeline and linear graphs whose nodes do real work.

Every case runs uninstrumented and instrumented with the live Redis exporter
(``configure(redis_url=...)``), interleaved. The linear graphs also run a
floor: the same nodes with hand-made spans of the same shape (see
``benchmarks.per_node``) through the same exporter, which shows how much of
the overhead any OpenTelemetry SDK span pays under the same conditions.

Only the workflow runs are timed. The exporter works in its background
thread, as it would in production, and ``force_flush`` runs after each timed
repetition so that no backlog spills into the next one. A repetition runs the
graph back to back (``_plan`` sets for how long), so that most exports happen
inside the timed window.

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
from benchmarks.per_node import HandTracedNode, hand_traced_flow, set_tracer
from kaygraph_otel_dashboard.demo import run_once
from kaygraph_otel_dashboard.demo_pipeline import Pipeline, build_pipeline

NAME = "workflow_overhead"
DEMO_FILES = 200
GRAPH_SIZES = (4, 50)
BASE = "uninstrumented"
LIVE = "instrumented, Redis live"
FLOOR = "floor: hand-made spans, Redis live"
OVERHEAD_LIMIT_PERCENT = 1.0
# Graphs whose single run takes this long or longer skip the floor case, to bound the runtime.
FLOOR_MAX_RUN_SECONDS = 2.0


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


class HandTracedWorkNode(HandTracedNode, WorkNode):
    """A ``WorkNode`` whose ``_run`` makes its span by hand, for the floor case."""


def work_flow(size: int, seconds: float, busy: bool) -> pocketflow.Flow:
    return chain([WorkNode(seconds, busy) for _ in range(size)])


def floor_work_flow(
    size: int, seconds: float, busy: bool, provider: TracerProvider
) -> pocketflow.Flow:
    """Build the floor version of ``work_flow``, making its spans with ``provider``."""
    nodes = [HandTracedWorkNode(seconds, busy) for _ in range(size)]
    flow = hand_traced_flow(nodes, work_flow(size, seconds, busy))
    set_tracer(flow, provider.get_tracer("benchmarks.floor"))
    return flow


def _repeat(flow: pocketflow.Flow, runs: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(runs):
            flow.run({})

    return run


def _cases(
    run: Callable[[], None], provider: TracerProvider, floor_run: Callable[[], None] | None
) -> dict[str, Callable[[], float]]:
    """Return the uninstrumented, instrumented and (when given) floor cases."""

    def instrumented_case() -> float:
        with instrumented(provider):
            elapsed = timed(run)
        provider.force_flush(30_000)
        return elapsed

    cases = {BASE: lambda: timed(run), LIVE: instrumented_case}
    if floor_run is not None:

        def floor_case() -> float:
            elapsed = timed(floor_run)
            provider.force_flush(30_000)
            return elapsed

        cases[FLOOR] = floor_case
    return cases


def _overhead(samples: dict[str, list[float]], case: str) -> float:
    """Return the overhead of ``case`` over the uninstrumented case in percent, from medians."""
    return (median(samples[case]) / median(samples[BASE]) - 1) * 100


def measure_demo(provider: TracerProvider, reps: int, files: int) -> dict[str, list[float]]:
    pipeline: Pipeline = build_pipeline("pocketflow", pocketflow)
    with tempfile.TemporaryDirectory(prefix="kaygraph-bench-reports-") as report_dir:

        def run() -> None:
            run_once(pipeline, 0, files, Path(report_dir))

        return interleaved(_cases(run, provider, None), reps)


def _plan(size: int, seconds: float, quick: bool) -> tuple[int, int, int]:
    """Return (graph runs per repetition, repetitions, warm-up rounds) for one cell.

    A repetition lasts at least 0.3 s of node work, longer than the exporter's
    200 ms schedule delay, so timer-driven exports fall inside it. Nodes shorter
    than 1 ms fill the 512-span export batch within 0.1 s, and their instrumented
    runs take several times the node work, so 0.1 s of work is enough for them.
    Cells whose single run takes seconds get fewer repetitions and no warm-up,
    which keeps the full benchmark near three minutes on an idle 2-core machine.
    """
    if quick:
        min_rep_seconds = 0.05
    elif seconds < 0.001:
        min_rep_seconds = 0.1
    else:
        min_rep_seconds = 0.3
    one_run = size * seconds
    runs = max(1, math.ceil(min_rep_seconds / one_run))
    if quick:
        return runs, 2, 1
    if one_run >= 2:
        return runs, 3, 0
    return runs, 5, 1


Cell = tuple[str, int, float]


def run(options: Options) -> Result:
    durations_ms = (0.1, 1.0, 10.0) if options.quick else (0.1, 1.0, 10.0, 100.0)
    demo_files = 40 if options.quick else DEMO_FILES
    demo_reps = 2 if options.quick else 7

    cells: dict[Cell, tuple[int, int, dict[str, list[float]]]] = {}
    with RedisServer() as server:
        provider = redis_provider(server.url)
        demo = measure_demo(provider, demo_reps, demo_files)
        for mode in ("sleep", "busy-wait"):
            busy = mode == "busy-wait"
            for size in GRAPH_SIZES:
                for duration_ms in durations_ms:
                    seconds = duration_ms / 1000
                    runs, reps, warmup = _plan(size, seconds, options.quick)
                    plain = _repeat(work_flow(size, seconds, busy), runs)
                    floor = None
                    if size * seconds < FLOOR_MAX_RUN_SECONDS:
                        floor = _repeat(floor_work_flow(size, seconds, busy, provider), runs)
                    samples = interleaved(_cases(plain, provider, floor), reps, warmup=warmup)
                    cells[(mode, size, duration_ms)] = (runs, reps, samples)
        provider.shutdown()
    return _report(demo, demo_files, demo_reps, cells, durations_ms)


def _report(
    demo: dict[str, list[float]],
    demo_files: int,
    demo_reps: int,
    cells: dict[Cell, tuple[int, int, dict[str, list[float]]]],
    durations_ms: tuple[float, ...],
) -> Result:
    demo_overhead = _overhead(demo, LIVE)
    demo_table = Table(
        f"Demo pipeline (standard-library census, {demo_files} files), {demo_reps} repetitions",
        ["case", "seconds per run (median)", "overhead"],
    )
    demo_table.add_row(BASE, f"{median(demo[BASE]):.3f}", "-")
    demo_table.add_row(LIVE, f"{median(demo[LIVE]):.3f}", f"{demo_overhead:+.2f}%")
    demo_table.notes.append("The overhead compares the medians.")

    table = Table(
        "Linear graphs with the live Redis exporter",
        ["node work", "nodes", "work per node", "runs x reps", "uninstrumented s/rep",
         "instrumented s/rep", "instrumented added us/node", "instrumented overhead",
         "floor added us/node", "floor overhead"],
    )  # fmt: skip
    overheads: dict[Cell, float] = {}
    for (mode, size, duration_ms), (runs, reps, samples) in cells.items():
        base = median(samples[BASE])
        overheads[(mode, size, duration_ms)] = _overhead(samples, LIVE)
        nodes_per_rep = runs * size
        floor_added = floor_overhead = "-"
        if FLOOR in samples:
            floor_added = f"{(median(samples[FLOOR]) - base) / nodes_per_rep * 1e6:.1f}"
            floor_overhead = f"{_overhead(samples, FLOOR):+.2f}%"
        table.add_row(
            mode, size, f"{duration_ms:g} ms", f"{runs} x {reps}", f"{base:.4f}",
            f"{median(samples[LIVE]):.4f}",
            f"{(median(samples[LIVE]) - base) / nodes_per_rep * 1e6:.1f}",
            f"{overheads[(mode, size, duration_ms)]:+.2f}%",
            floor_added,
            floor_overhead,
        )  # fmt: skip
    table.notes.append(
        "sleep = time.sleep in exec (GIL released, like I/O); busy-wait = a perf_counter loop "
        "in exec (GIL held, like CPU-bound work). Floor = hand-made spans of the same shape "
        "through the same exporter (not run for graphs whose run takes 2 s or more). "
        "Overheads compare the medians."
    )

    findings = [
        Finding(NAME, f"demo pipeline overhead ({demo_files} files)", f"{demo_overhead:+.2f}%")
    ]
    for mode in ("sleep", "busy-wait"):
        for size in GRAPH_SIZES:
            smallest = _smallest_duration_below_limit(overheads, mode, size, durations_ms)
            if smallest is None:
                value = f"none up to {durations_ms[-1]:g} ms"
            else:
                value = f"{smallest:g} ms"
            figure = f"smallest node work with overhead < 1%, {mode}, {size} nodes"
            findings.append(Finding(NAME, figure, value))
    table.notes.append(
        "Smallest node work with instrumented overhead < 1% (at that duration and every "
        "longer one): "
        + "; ".join(f"{f.figure.split(', ', 1)[1]}: {f.value}" for f in findings[1:])
    )
    return Result([demo_table, table], findings)


def _smallest_duration_below_limit(
    overheads: dict[Cell, float], mode: str, size: int, durations_ms: tuple[float, ...]
) -> float | None:
    smallest = None
    for duration_ms in reversed(durations_ms):
        if overheads[(mode, size, duration_ms)] >= OVERHEAD_LIMIT_PERCENT:
            break
        smallest = duration_ms
    return smallest
