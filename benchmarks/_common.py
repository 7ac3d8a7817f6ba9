"""Shared parts of the benchmarks: result tables, interleaved timing, workflows and redis-server."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pocketflow
import psutil
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import Sampler

from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow

logger = logging.getLogger(__name__)

REDIS_START_TIMEOUT_SECONDS = 10.0
REDIS_STOP_TIMEOUT_SECONDS = 10.0
BENCH_SERVICE_NAME = "kaygraph-otel-bench"


# Results


@dataclass(frozen=True)
class Options:
    """Command-line options that every benchmark receives.

    Attributes:
        quick: run few repetitions on small inputs, to check that the benchmark works.
        profile: also profile the instrumented case with pyinstrument, when it is installed.
    """

    quick: bool = False
    profile: bool = False


@dataclass
class Table:
    """One printed table: a title, column names, rows of formatted cells and notes below it."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(
                f"row {cells!r} has {len(cells)} cells but table {self.title!r} has "
                f"{len(self.columns)} columns"
            )
        self.rows.append([str(cell) for cell in cells])

    def to_text(self) -> str:
        widths = [len(column) for column in self.columns]
        for row in self.rows:
            widths = [max(width, len(cell)) for width, cell in zip(widths, row, strict=True)]
        lines = [self.title, "=" * len(self.title)]
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True)).rstrip()
        )
        lines.append("  ".join("-" * w for w in widths))
        for row in self.rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        lines.extend(f"  * {note}" for note in self.notes)
        return "\n".join(lines)

    def to_markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.columns) + " |")
        lines.append("| " + " | ".join("---" for _ in self.columns) + " |")
        for row in self.rows:
            lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
        if self.notes:
            lines.append("")
            lines.extend(f"- {note}" for note in self.notes)
        return "\n".join(lines)


@dataclass(frozen=True)
class Finding:
    """One line of the final summary: a headline figure and, where one exists, its target.

    Attributes:
        benchmark: the benchmark's name, as given to ``--only``.
        figure: what was measured.
        value: the measured value, formatted.
        target: the target in words, or an empty string when there is none.
        holds: whether the target holds; None when there is no target.
    """

    benchmark: str
    figure: str
    value: str
    target: str = ""
    holds: bool | None = None


@dataclass
class Result:
    """The tables, summary findings and free-text reports (such as profiles) of one benchmark."""

    tables: list[Table] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0 to 1) of ``values`` by linear interpolation."""
    if not values:
        raise ValueError("percentile of an empty sequence is undefined; pass at least one value")
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def relative_spread(values: Sequence[float]) -> float:
    """Return the interquartile range of ``values`` divided by their median."""
    if len(values) < 2:
        return 0.0
    return (percentile(values, 0.75) - percentile(values, 0.25)) / median(values)


def verdict(holds: bool | None) -> str:
    if holds is None:
        return "-"
    return "holds" if holds else "does not hold"


# Interleaved measurement


def interleaved(
    cases: dict[str, Callable[[], float]], rounds: int, *, warmup: int = 1, seed: int = 0
) -> dict[str, list[float]]:
    """Call every case once per round and collect what each call returns (a measurement).

    Each round runs the cases in a new random order from a generator seeded with
    ``seed``, so no case keeps the same neighbour. A case that disturbs the next
    one, for example by removing patches, then does not always disturb the same
    case. The first ``warmup`` rounds are discarded.
    """
    names = list(cases)
    order = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        order.shuffle(names)
        for name in names:
            value = cases[name]()
            if index >= warmup:
                samples[name].append(value)
    return samples


def round_ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Return the ratio of each round's two measurements.

    Two cases measured in the same round ran seconds apart, so their ratio is less
    exposed to slow changes in machine load than the ratio of two overall medians.
    """
    return [top / bottom for top, bottom in zip(numerators, denominators, strict=True)]


def timed(function: Callable[[], Any], warmup: Callable[[], Any] | None = None) -> float:
    """Return the seconds that one call of ``function`` takes.

    ``warmup`` runs first, untimed, then garbage is collected. A warm-up matters
    right after patching or unpatching, because the first call is then slower (by
    about 10% for a 100-node Flow on CPython 3.11, measured on the benchmark machine).
    """
    if warmup is not None:
        warmup()
    gc.collect()
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# Workflows


class NoopNode(pocketflow.Node):  # type: ignore[misc]
    """A node whose prep, exec and post do nothing (PocketFlow's defaults)."""


def chain(nodes: Sequence[pocketflow.BaseNode]) -> pocketflow.Flow:
    """Link ``nodes`` in a row with the default action and return a Flow starting at the first."""
    for current, following in zip(nodes, nodes[1:], strict=False):
        current >> following
    return pocketflow.Flow(start=nodes[0])


def noop_flow(count: int) -> pocketflow.Flow:
    return chain([NoopNode() for _ in range(count)])


@contextlib.contextmanager
def instrumented(provider: TracerProvider | None, **options: Any) -> Iterator[None]:
    """Instrument PocketFlow with ``provider`` for the duration of the block."""
    instrument_pocketflow(tracer_provider=provider, **options)
    try:
        yield
    finally:
        uninstrument_pocketflow()


def sdk_provider(sampler: Sampler | None = None) -> TracerProvider:
    """Return an SDK TracerProvider without span processors: spans are recorded, then discarded."""
    return TracerProvider(sampler=sampler) if sampler is not None else TracerProvider()


def redis_provider(url: str) -> TracerProvider:
    """Return the provider that ``configure(redis_url=url)`` builds, without making it global."""
    from kaygraph_otel_exporters import configure

    return configure(service_name=BENCH_SERVICE_NAME, redis_url=url, set_global=False)


# Processes and servers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free when checked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int | None = None) -> int:
    """Return the resident set size of process ``pid`` (this process by default), in bytes."""
    return int(psutil.Process(pid).memory_info().rss)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; return its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            return predicate()
        time.sleep(interval)
    return True


class RedisServer:
    """A redis-server process on a free loopback port, without persistence.

    ``stop()`` leaves the port closed, so a client sees connection refused.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self._workdir = tempfile.TemporaryDirectory(prefix="kaygraph-bench-redis-")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start redis-server and wait until it replies to PING.

        Raises:
            RuntimeError: redis-server is not on PATH, exited, or did not reply in time.
        """
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server not found on PATH; install it with `make system-packages`"
            )
        command = [
            executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", self._workdir.name,
        ]  # fmt: skip
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not wait_until(self.ping, REDIS_START_TIMEOUT_SECONDS, interval=0.05):
            code = self._process.poll()
            self.stop()
            raise RuntimeError(
                f"redis-server on port {self.port} did not reply to PING within "
                f"{REDIS_START_TIMEOUT_SECONDS} s (exit code {code})"
            )

    def ping(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def publish_calls(self) -> int:
        """Return how many PUBLISH commands the server has executed since it started."""
        with redis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=2) as client:
            stats = client.info("commandstats")
        return int(stats.get("cmdstat_publish", {}).get("calls", 0))

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(REDIS_STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %s ignored SIGTERM; killing it", process.pid)
                process.kill()
                process.wait(REDIS_STOP_TIMEOUT_SECONDS)

    def close(self) -> None:
        self.stop()
        self._workdir.cleanup()

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# Profiling

WORKFLOW_CATEGORY = "the workflow's own code (PocketFlow, benchmark and demo nodes)"
THREADS_CATEGORY = "threads, thread pools and asyncio, idle waits included (standard library)"
# Each sample's time goes to the nearest frame on its stack whose file path contains
# one of these fragments, checked in order. Standard-library and built-in calls, and
# wrapt's wrappers, which are C code, therefore count toward the code that made them.
PROFILE_CATEGORIES = (
    ("/opentelemetry/", "OpenTelemetry SDK and API"),
    ("/kaygraph_otel/", "kaygraph_otel (instrumentation)"),
    ("/exporters/", "kaygraph_otel_exporters (encoder, exporters)"),
    ("/redis/", "redis-py"),
    ("/httpx/", "httpx"),
    ("/pocketflow/", WORKFLOW_CATEGORY),
    ("/benchmarks/", WORKFLOW_CATEGORY),
    ("/dashboard/demo", WORKFLOW_CATEGORY),
    ("/concurrent/futures/", THREADS_CATEGORY),
    ("/threading.py", THREADS_CATEGORY),
    ("/asyncio/", THREADS_CATEGORY),
)
PROFILE_INTERVAL_SECONDS = 0.0001
PROFILE_TREE_LINES = 45


@dataclass
class Profile:
    """The time of one profiled call, by category of code and by project function.

    Attributes:
        seconds_by_category: time per category of ``PROFILE_CATEGORIES``, plus "other".
        seconds_by_function: time per ``function (file:line)`` of the project's own
            packages, kaygraph_otel and kaygraph_otel_exporters.
        tree: the first ``PROFILE_TREE_LINES`` lines of pyinstrument's call tree.
    """

    seconds_by_category: dict[str, float]
    seconds_by_function: dict[str, float]
    tree: str


def _category(file_path: str | None) -> tuple[str, str] | None:
    if not file_path:
        return None
    for fragment, name in PROFILE_CATEGORIES:
        if fragment in file_path:
            return fragment, name
    return None


def profile_call(function: Callable[[], Any]) -> Profile | None:
    """Profile one call of ``function`` with pyinstrument; None when pyinstrument is missing."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=PROFILE_INTERVAL_SECONDS)
    profiler.start()
    function()
    session = profiler.stop()
    root = session.root_frame()
    by_category: dict[str, float] = {}
    by_function: dict[str, float] = {}
    if root is not None:
        _attribute(root, "other", None, by_category, by_function)
    tree = profiler.output_text(unicode=False, color=False, show_all=False)
    return Profile(by_category, by_function, "\n".join(tree.splitlines()[:PROFILE_TREE_LINES]))


def _attribute(
    frame: Any,
    owner: str,
    owner_function: str | None,
    by_category: dict[str, float],
    by_function: dict[str, float],
) -> None:
    found = _category(frame.file_path)
    if found is not None:
        fragment, owner = found
        owner_function = None
        if fragment in ("/kaygraph_otel/", "/exporters/"):
            short = frame.file_path.rsplit(fragment, 1)[-1]
            owner_function = f"{frame.function} ({fragment.strip('/')}/{short}:{frame.line_no})"
    children = [child for child in frame.children if not child.is_synthetic]
    exclusive = frame.time - sum(child.time for child in children)
    by_category[owner] = by_category.get(owner, 0.0) + exclusive
    if owner_function is not None:
        by_function[owner_function] = by_function.get(owner_function, 0.0) + exclusive
    for child in children:
        _attribute(child, owner, owner_function, by_category, by_function)


def profile_tables(
    title: str, profile: Profile, unit_cost: float, unit: str, top: int = 8
) -> list[Table]:
    """Return the category table and the top project functions of ``profile``.

    Shares of the profile are scaled to ``unit_cost``, the unprofiled median cost in
    ``unit`` (such as "us/node"), because the profiler itself slows the code down.
    """
    total = sum(profile.seconds_by_category.values()) or 1.0
    categories = Table(
        f"Profile: {title}",
        ["where the time goes", "share", f"{unit} (of {unit_cost:.1f})"],
    )
    for name, seconds in sorted(profile.seconds_by_category.items(), key=lambda kv: -kv[1]):
        share = seconds / total
        categories.add_row(name, f"{share * 100:.1f}%", f"{share * unit_cost:.1f}")
    categories.notes.append(
        "Standard-library, built-in and C-extension calls count toward the nearest caller "
        "in one of the listed packages; pyinstrument sampled every 0.1 ms."
    )
    functions = Table(
        f"Profile: {title}, project functions by own time (callees outside the listed "
        "packages included)",
        ["function", "share", unit],
    )
    ranked = sorted(profile.seconds_by_function.items(), key=lambda kv: -kv[1])[:top]
    for name, seconds in ranked:
        share = seconds / total
        functions.add_row(name, f"{share * 100:.1f}%", f"{share * unit_cost:.1f}")
    return [categories, functions] if ranked else [categories]
