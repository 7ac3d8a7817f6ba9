"""``kaygraph-otel demo``: run the standard-library census workflow, monitored live.

The workflow runs on KayGraph when ``kaygraph`` is installed and on PocketFlow
otherwise. Its events go to the dashboard through the in-process bus, or
through Redis when ``--redis-url`` is given, and its spans also go to an OTLP
endpoint when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

from kaygraph_otel import run_context
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.demo_pipeline import Pipeline, build_pipeline, standard_library_dir
from kaygraph_otel_dashboard.server import RunningServer, start_in_thread
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.setup import configure

logger = logging.getLogger(__name__)

DEFAULT_REPORT_DIR = Path("reports")
WORKFLOW_NAME = "stdlib_census"
DEFAULT_SERVICE_NAME = "kaygraph-otel-demo"


def choose_framework() -> tuple[str, ModuleType]:
    """Return ("kaygraph", module) when KayGraph is importable, else ("pocketflow", module)."""
    if importlib.util.find_spec("kaygraph") is not None:
        return "kaygraph", importlib.import_module("kaygraph")
    if importlib.util.find_spec("pocketflow") is not None:
        return "pocketflow", importlib.import_module("pocketflow")
    raise ImportError("neither kaygraph nor pocketflow is installed: run `pip install pocketflow`")


def _framework_version(framework: str, module: ModuleType) -> str:
    version = getattr(module, "__version__", None)
    if isinstance(version, str):
        return version
    try:
        return importlib.metadata.version(framework)
    except importlib.metadata.PackageNotFoundError:
        return "version unknown"


def _instrument(framework: str, provider: Any) -> None:
    import kaygraph_otel

    if framework == "kaygraph":
        kaygraph_otel.instrument_kaygraph(tracer_provider=provider)
    else:
        kaygraph_otel.instrument_pocketflow(tracer_provider=provider)


def _uninstrument(framework: str) -> None:
    import kaygraph_otel

    if framework == "kaygraph":
        kaygraph_otel.uninstrument_kaygraph()
    else:
        kaygraph_otel.uninstrument_pocketflow()


def run_once(
    pipeline: Pipeline, run_number: int, files_per_run: int, report_dir: Path
) -> dict[str, Any]:
    """Run the workflow once and return its shared store."""
    shared: dict[str, Any] = {
        "source_dir": str(standard_library_dir()),
        "run_number": run_number,
        "files_per_run": files_per_run,
        "report_dir": str(report_dir),
    }
    with run_context(workflow_name=WORKFLOW_NAME):
        pipeline.run(shared)
    return shared


def run_demo(args: argparse.Namespace, stop: threading.Event | None = None) -> int:
    """Run the demo with the CLI's arguments and return the exit status.

    Args:
        args: ``port``, ``runs`` (0 runs until interrupted), ``redis_url``,
            ``no_dashboard``, ``interval`` (seconds), ``files`` (files per run),
            and optionally ``host``, ``report_dir`` and ``exit`` (stop the dashboard
            when the runs are done instead of serving it until interrupted).
        stop: set it to end the demo after the current run.
    """
    stop = stop or threading.Event()
    # Parsing the standard library's own tests meets deliberate invalid escape
    # sequences, which the compiler reports as warnings; they are not errors of the demo.
    warnings.filterwarnings("ignore", category=SyntaxWarning)
    warnings.filterwarnings(
        "ignore", category=DeprecationWarning, message="invalid escape sequence"
    )
    framework, module = choose_framework()
    version = _framework_version(framework, module)
    print(f"Running the standard-library census on {framework} ({version})", flush=True)

    bus = None if args.redis_url else EventBus()
    server: RunningServer | None = None
    if not args.no_dashboard:
        app = create_app(bus=bus, redis_url=args.redis_url)
        server = start_in_thread(app, getattr(args, "host", "127.0.0.1"), args.port)
        print(f"Dashboard: {server.url}", flush=True)

    provider = configure(
        service_name=os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME,
        redis_url=args.redis_url,
        bus=bus,
        set_global=False,
    )
    _instrument(framework, provider)
    report_dir = Path(getattr(args, "report_dir", None) or DEFAULT_REPORT_DIR)
    try:
        pipeline = build_pipeline(framework, module)
        run_number = 0
        while not stop.is_set() and (args.runs == 0 or run_number < args.runs):
            started = time.perf_counter()
            shared = run_once(pipeline, run_number, args.files, report_dir)
            summary = shared["summary"]
            print(
                f"run {run_number + 1}: {summary['parsed']} files parsed, "
                f"{summary['failed']} failed, "
                f"{summary['functions']} functions, {summary['classes']} classes, "
                f"{summary['lines']} lines in {time.perf_counter() - started:.2f} s; "
                f"report: {shared['report_path']}",
                flush=True,
            )
            run_number += 1
            if args.runs == 0 or run_number < args.runs:
                stop.wait(args.interval)
        if server is not None and not stop.is_set() and not getattr(args, "exit", False):
            print(
                f"All {run_number} runs finished; the dashboard stays at {server.url} "
                "until you press Ctrl-C",
                flush=True,
            )
            stop.wait()
    finally:
        _uninstrument(framework)
        provider.shutdown()
        if server is not None:
            server.stop()
    return 0
