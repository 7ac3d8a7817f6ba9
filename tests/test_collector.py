"""rotel as the OTLP collector: the demo workflow's spans pass through it intact.

Each test starts a real rotel process through ``collector-config/run-rotel.sh`` with
the shipped ``rotel.env``, overriding only the ports (free loopback ports) and the
exporter endpoints. The demo workflow exports with the standard OTLP/HTTP span
exporter to rotel. rotel forwards either to the receiver in ``tests/otlp_receiver.py``,
which keeps the spans exactly as they arrived, or to a real ``kaygraph-otel dashboard``
process, which turns them into schema events.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import format_span_id, format_trace_id

import kaygraph_otel
from kaygraph_otel_dashboard.demo import WORKFLOW_NAME, run_once
from kaygraph_otel_dashboard.demo_pipeline import build_pipeline
from tests.helpers import free_port, wait_for
from tests.otel_fixtures import validate_event
from tests.otlp_receiver import ReceivedSpan, running_receiver

REPO = Path(__file__).resolve().parent.parent
RUN_ROTEL = REPO / "collector-config" / "run-rotel.sh"
DEMO_FILES = 5
DEMO_NODE_IDS = ("source", "process", "validate", "output")
TOKEN = "collector-test-token-0123456789"
SERVICE_NAME = "kaygraph-otel-demo"

# rotel publishes wheels for Linux x86_64 and macOS only, and the dev extra installs it
# there; everywhere else these tests cannot run.
if importlib.util.find_spec("rotel") is None and not (
    platform.machine() == "x86_64" or sys.platform == "darwin"
):
    pytest.skip(f"rotel has no wheel for {platform.machine()}", allow_module_level=True)

INSTRUMENT = {
    "kaygraph": (kaygraph_otel.instrument_kaygraph, kaygraph_otel.uninstrument_kaygraph),
    "pocketflow": (kaygraph_otel.instrument_pocketflow, kaygraph_otel.uninstrument_pocketflow),
}


def _environment(**overrides: str) -> dict[str, str]:
    """Return this process's environment without telemetry settings, plus ``overrides``."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "KAYGRAPH_OTEL_", "ROTEL_"))
    }
    env["PYTHONPATH"] = ""
    env.update(overrides)
    return env


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Rotel:
    """A running rotel process and the loopback ports of its OTLP receivers."""

    process: subprocess.Popen[bytes]
    grpc_port: int
    http_port: int
    log_path: Path

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def running_rotel(tmp_path: Path, **settings: str) -> Iterator[Rotel]:
    """Run ``run-rotel.sh`` on free loopback ports with ``settings`` over ``rotel.env``."""
    grpc_port, http_port = free_port(), free_port()
    env = _environment(
        PYTHON=sys.executable,
        ROTEL_OTLP_GRPC_ENDPOINT=f"127.0.0.1:{grpc_port}",
        ROTEL_OTLP_HTTP_ENDPOINT=f"127.0.0.1:{http_port}",
        **settings,
    )
    log_path = tmp_path / "rotel.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            ["bash", str(RUN_ROTEL)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    rotel = Rotel(process, grpc_port, http_port, log_path)
    try:
        ready = wait_for(
            lambda: process.poll() is not None or (_port_open(http_port) and _port_open(grpc_port)),
            timeout=20,
        )
        assert ready, f"rotel did not open its ports within 20 s:\n{rotel.log()}"
        assert process.poll() is None, f"rotel exited:\n{rotel.log()}"
        yield rotel
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _parent_id(span: ReadableSpan) -> str:
    return format_span_id(span.parent.span_id) if span.parent is not None else ""


def _run_demo_in_process(
    framework: str, otlp_endpoint: str, report_dir: Path
) -> list[ReadableSpan]:
    """Run the demo workflow once; return its spans as the in-memory exporter saw them.

    The same provider also exports every span with the standard OTLP/HTTP exporter.
    """
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint}/v1/traces"))
    )
    instrument, uninstrument = INSTRUMENT[framework]
    instrument(tracer_provider=provider)
    try:
        pipeline = build_pipeline(framework, importlib.import_module(framework))
        shared = run_once(pipeline, 0, DEMO_FILES, report_dir)
    finally:
        uninstrument()
        provider.shutdown()
    assert shared["summary"]["files"] == DEMO_FILES
    return list(memory.get_finished_spans())


def _check_spans_intact(sent: Sequence[ReadableSpan], received: Sequence[ReceivedSpan]) -> None:
    by_id = {span.span_id: span for span in received}
    for span in sent:
        span_id = format_span_id(span.context.span_id)
        assert span_id in by_id, f"span {span.name!r} ({span_id}) did not arrive"
        arrived = by_id[span_id]
        assert arrived.name == span.name
        assert arrived.trace_id == format_trace_id(span.context.trace_id), span.name
        assert arrived.parent_span_id == _parent_id(span), span.name
        expected = {key: _plain(value) for key, value in (span.attributes or {}).items()}
        assert arrived.attributes == expected, span.name
        assert arrived.event_names == tuple(event.name for event in span.events), span.name
        assert arrived.resource["service.name"] == SERVICE_NAME


@pytest.mark.parametrize("framework", ["pocketflow", "kaygraph"])
def test_demo_spans_pass_through_rotel_intact(tmp_path: Path, framework: str) -> None:
    with running_receiver() as dashboard, running_receiver() as jaeger:
        with running_rotel(
            tmp_path,
            KAYGRAPH_OTEL_DASHBOARD_TOKEN=TOKEN,
            ROTEL_EXPORTER_DASHBOARD_ENDPOINT=dashboard.endpoint,
            ROTEL_EXPORTER_JAEGER_ENDPOINT=jaeger.endpoint,
        ) as rotel:
            sent = _run_demo_in_process(framework, rotel.http_endpoint, tmp_path / "reports")
            expected_ids = {format_span_id(span.context.span_id) for span in sent}
            received = dashboard.wait_for_spans(
                lambda spans: expected_ids <= {span.span_id for span in spans}
            )

    # One workflow span, the four demo nodes, and one span per parsed file.
    assert len(sent) == 1 + len(DEMO_NODE_IDS) + DEMO_FILES
    _check_spans_intact(sent, received)
    assert len(received) == len(sent), "rotel delivered extra or duplicate spans"
    assert jaeger.snapshot() == [], "rotel.env selects the dashboard exporter only"
    assert dashboard.errors == []
    assert dashboard.requests, "no export request reached the dashboard receiver"
    for request in dashboard.requests:
        assert request.headers.get("authorization") == f"Bearer {TOKEN}"


def _check_demo_trace(spans: Sequence[ReceivedSpan]) -> None:
    workflows = [s for s in spans if s.attributes.get("kaygraph.node_kind") == "workflow"]
    assert len(workflows) == 1, [s.name for s in spans]
    workflow = workflows[0]
    assert workflow.name == f"invoke_workflow {WORKFLOW_NAME}"
    assert workflow.parent_span_id == ""
    assert workflow.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert "kaygraph.graph.structure" in workflow.attributes
    assert all(span.trace_id == workflow.trace_id for span in spans)
    span_ids = {span.span_id for span in spans}
    for span in spans:
        if span is not workflow:
            assert span.parent_span_id in span_ids, f"{span.name!r} has no parent that arrived"
        assert (
            span.attributes["kaygraph.workflow_id"] == workflow.attributes["kaygraph.workflow_id"]
        )
        assert (
            span.attributes["kaygraph.correlation_id"]
            == workflow.attributes["kaygraph.correlation_id"]
        )

    nodes = {
        span.attributes["kaygraph.node_type"]: span
        for span in spans
        if span.attributes.get("kaygraph.node_kind") == "node"
    }
    assert set(nodes) == {"DataSourceNode", "ProcessingNode", "ValidationNode", "OutputNode"}
    for node in nodes.values():
        assert node.parent_span_id == workflow.span_id, node.name
        assert node.attributes["kaygraph.state"] == "completed", node.name
        assert "node_completed" in node.event_names, node.name
    items = [s for s in spans if s.attributes.get("kaygraph.node_kind") == "batch_item"]
    assert len(items) == DEMO_FILES
    assert {item.parent_span_id for item in items} == {nodes["ProcessingNode"].span_id}


def test_demo_command_exports_through_rotel(tmp_path: Path) -> None:
    with (
        running_receiver() as dashboard,
        running_rotel(tmp_path, ROTEL_EXPORTER_DASHBOARD_ENDPOINT=dashboard.endpoint) as rotel,
    ):
        demo = subprocess.run(
            [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "demo", "--no-dashboard",
             "--runs", "1", "--files", str(DEMO_FILES), "--interval", "0",
             "--report-dir", str(tmp_path / "reports")],
            env=_environment(OTEL_EXPORTER_OTLP_ENDPOINT=rotel.http_endpoint),
            capture_output=True, text=True, timeout=90, cwd=tmp_path,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stderr
        expected_count = 1 + len(DEMO_NODE_IDS) + DEMO_FILES
        received = dashboard.wait_for_spans(lambda spans: len(spans) >= expected_count)

    assert len(received) == expected_count, [span.name for span in received]
    _check_demo_trace(received)
    assert {span.resource["service.name"] for span in received} == {SERVICE_NAME}
    assert len(list((tmp_path / "reports").glob("stdlib-census-*.json"))) == 1


def test_rotel_sends_to_jaeger_when_selected(tmp_path: Path) -> None:
    with running_receiver() as dashboard, running_receiver() as jaeger:
        with running_rotel(
            tmp_path,
            ROTEL_EXPORTERS_TRACES="jaeger",
            ROTEL_EXPORTER_DASHBOARD_ENDPOINT=dashboard.endpoint,
            ROTEL_EXPORTER_JAEGER_ENDPOINT=jaeger.endpoint,
        ) as rotel:
            sent = _run_demo_in_process("pocketflow", rotel.http_endpoint, tmp_path / "reports")
            expected_ids = {format_span_id(span.context.span_id) for span in sent}
            received = jaeger.wait_for_spans(
                lambda spans: expected_ids <= {span.span_id for span in spans}
            )

    _check_spans_intact(sent, received)
    assert dashboard.snapshot() == []
    assert all("authorization" not in request.headers for request in jaeger.requests)


def test_run_rotel_rejects_invalid_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / "rotel.env"
    env_file.write_text("ROTEL_BATCH_TIMEOUT=200ms\nexport OTHER=1\n")
    result = subprocess.run(
        ["bash", str(RUN_ROTEL)],
        env=_environment(PYTHON=sys.executable, ROTEL_ENV_FILE=str(env_file)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "export OTHER=1" in result.stderr
    assert str(env_file) in result.stderr


def test_run_rotel_reports_missing_rotel(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(RUN_ROTEL)],
        env=_environment(PYTHON=str(tmp_path / "no-such-python")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "pip install rotel" in result.stderr


@contextmanager
def running_dashboard(tmp_path: Path) -> Iterator[str]:
    """Run ``kaygraph-otel dashboard`` in embedded mode with a token; yield its URL."""
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "dashboard",
             "--host", "127.0.0.1", "--port", str(port)],
            env=_environment(KAYGRAPH_OTEL_DASHBOARD_TOKEN=TOKEN),
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        ready = wait_for(lambda: process.poll() is not None or _port_open(port), timeout=20)
        assert ready, log_path.read_text(errors="replace")
        assert process.poll() is None, log_path.read_text(errors="replace")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _request(url: str, data: bytes | None = None, content_type: str = "") -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    if content_type:
        headers["Content-Type"] = content_type
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _dashboard_events(url: str) -> list[dict[str, Any]]:
    status, body = _request(f"{url}/api/state?limit=10000")
    assert status == 200, body
    return list(json.loads(body)["events"])


@pytest.mark.parametrize("framework", ["pocketflow", "kaygraph"])
def test_demo_spans_reach_dashboard_through_rotel(tmp_path: Path, framework: str) -> None:
    # The dashboard runs without Redis, so every event it shows came in over OTLP.
    with running_dashboard(tmp_path) as dashboard_url:
        with running_rotel(
            tmp_path,
            KAYGRAPH_OTEL_DASHBOARD_TOKEN=TOKEN,
            ROTEL_EXPORTER_DASHBOARD_ENDPOINT=dashboard_url,
        ) as rotel:
            sent = _run_demo_in_process(framework, rotel.http_endpoint, tmp_path / "reports")
            expected_ids = {format_span_id(span.context.span_id) for span in sent}
            wait_for(
                lambda: (
                    expected_ids
                    <= {event["data"].get("span_id") for event in _dashboard_events(dashboard_url)}
                ),
                timeout=30,
                interval=0.2,
            )
            events = _dashboard_events(dashboard_url)
            status, body = _request(f"{dashboard_url}/healthz")

    assert status == 200, body
    assert json.loads(body)["otlp"]["spans"] == len(sent)
    for event in events:
        validate_event(event)
    for span in sent:
        span_id = format_span_id(span.context.span_id)
        own = [event for event in events if event["data"].get("span_id") == span_id]
        assert own, f"no dashboard event for span {span.name!r} ({span_id})"
        for event in own:
            assert event["data"]["trace_id"] == format_trace_id(span.context.trace_id)
            assert (event["data"].get("parent_span_id") or "") == _parent_id(span)
            assert event["node_id"] == (span.attributes or {})["kaygraph.node_id"]
        names = {event["event_name"] for event in own}
        if (span.attributes or {}).get("kaygraph.node_kind") == "workflow":
            assert {"workflow_started", "workflow_completed"} <= names, names
            started = next(e for e in own if e["event_name"] == "workflow_started")
            assert started["data"]["graph"]["nodes"], "workflow_started carries no graph"
        elif (span.attributes or {}).get("kaygraph.node_kind") == "node":
            assert {"node_started", "node_completed"} <= names, names
