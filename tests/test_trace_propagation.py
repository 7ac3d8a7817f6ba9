"""W3C trace context across a process boundary: a workflow continues a caller's trace.

Process A starts a span and sends an HTTP request whose ``traceparent`` header
``opentelemetry.propagate.inject`` wrote. Process B, a small HTTP server,
extracts the context with ``opentelemetry.propagate.extract``, attaches it and
runs an instrumented PocketFlow workflow. Both processes export over OTLP/HTTP to
one receiver that the test runs on loopback.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver

CLIENT_SERVICE = "workflow-client"
SERVER_SERVICE = "workflow-server"

# Process B. It prints its port once it listens, and exits cleanly on SIGTERM. The
# SimpleSpanProcessor exports each span when it ends, before the response is sent.
SERVER = """\
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry import context, propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from pocketflow import Flow, Node

from kaygraph_otel import instrument_pocketflow

provider = TracerProvider(
    resource=Resource.create({"service.name": "%(service)s", "process.pid": os.getpid()})
)
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
instrument_pocketflow(tracer_provider=provider)


class Double(Node):
    def prep(self, shared):
        return shared["value"]

    def exec(self, value):
        return value * 2

    def post(self, shared, prep_res, exec_res):
        shared["result"] = exec_res


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        carrier = {name.lower(): value for name, value in self.headers.items()}
        token = context.attach(propagate.extract(carrier))
        try:
            shared = {"value": int(body)}
            Flow(start=Double()).run(shared)
        finally:
            context.detach(token)
        reply = json.dumps({"result": shared["result"], "pid": os.getpid()}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format, *args):
        pass


signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
server = HTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
finally:
    server.server_close()
    provider.shutdown()
"""

# Process A: argv[1] is B's URL; argv[2] is "inject" or "no-inject".
CLIENT = """\
import json
import os
import sys
import urllib.request

from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

provider = TracerProvider(
    resource=Resource.create({"service.name": "%(service)s", "process.pid": os.getpid()})
)
provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
tracer = provider.get_tracer("propagation-client")

with tracer.start_as_current_span("request workflow", kind=SpanKind.CLIENT) as span:
    headers = {"content-type": "text/plain"}
    if sys.argv[2] == "inject":
        propagate.inject(headers)
    request = urllib.request.Request(sys.argv[1], data=b"21", headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.load(response)
    span_context = span.get_span_context()
provider.shutdown()
print(json.dumps({
    "trace_id": format_trace_id(span_context.trace_id),
    "span_id": format_span_id(span_context.span_id),
    "headers": headers,
    "reply": reply,
    "pid": os.getpid(),
}))
"""


def _environment(receiver: OtlpReceiver) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "KAYGRAPH_OTEL_"))
    }
    env["PYTHONPATH"] = ""
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
    return env


@contextmanager
def workflow_server(tmp_path: Path, receiver: OtlpReceiver) -> Iterator[str]:
    """Run process B; yield its URL."""
    script = tmp_path / "server.py"
    script.write_text(SERVER % {"service": SERVER_SERVICE})
    process = subprocess.Popen(
        [sys.executable, str(script)],
        env=_environment(receiver),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], 30)
        line = process.stdout.readline() if readable else ""
        if not line.strip().isdigit():
            process.kill()
            _, stderr = process.communicate(timeout=10)
            raise AssertionError(f"the workflow server did not start: {line!r}\n{stderr}")
        yield f"http://127.0.0.1:{int(line)}/run"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _call(tmp_path: Path, receiver: OtlpReceiver, url: str, mode: str) -> dict[str, Any]:
    """Run process A once and return what it printed."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT % {"service": CLIENT_SERVICE})
    result = subprocess.run(
        [sys.executable, str(script), url, mode],
        env=_environment(receiver), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def _by_service(spans: list[ReceivedSpan], service: str) -> list[ReceivedSpan]:
    return [span for span in spans if span.resource.get("service.name") == service]


def _workflow_span(spans: list[ReceivedSpan]) -> ReceivedSpan:
    workflows = [s for s in spans if s.attributes.get("kaygraph.node_kind") == "workflow"]
    assert len(workflows) == 1, [span.name for span in spans]
    return workflows[0]


def test_workflow_continues_trace_from_other_process(tmp_path: Path) -> None:
    with running_receiver() as receiver, workflow_server(tmp_path, receiver) as url:
        client = _call(tmp_path, receiver, url, "inject")
        spans = receiver.wait_for_spans(
            lambda received: (
                len(_by_service(received, SERVER_SERVICE)) >= 2
                and len(_by_service(received, CLIENT_SERVICE)) >= 1
            )
        )

    assert client["reply"]["result"] == 42
    version, trace_id, parent_id, flags = client["headers"]["traceparent"].split("-")
    assert (version, trace_id, parent_id) == ("00", client["trace_id"], client["span_id"])
    assert int(flags, 16) & 0x01, "the sampled flag is not set"

    client_spans = _by_service(spans, CLIENT_SERVICE)
    server_spans = _by_service(spans, SERVER_SERVICE)
    assert [span.name for span in client_spans] == ["request workflow"]
    client_span = client_spans[0]
    assert client_span.span_id == client["span_id"]
    assert client_span.resource["process.pid"] == client["pid"]
    assert server_spans[0].resource["process.pid"] == client["reply"]["pid"]
    assert client["pid"] != client["reply"]["pid"]

    workflow = _workflow_span(server_spans)
    assert workflow.trace_id == client["trace_id"]
    assert workflow.parent_span_id == client["span_id"]
    # Without an explicit correlation id a run's correlation id is its trace id, so
    # both processes' telemetry shares one id.
    assert workflow.attributes["kaygraph.correlation_id"] == client["trace_id"]
    nodes = [span for span in server_spans if span is not workflow]
    assert [span.attributes["kaygraph.node_type"] for span in nodes] == ["Double"]
    assert nodes[0].trace_id == client["trace_id"]
    assert nodes[0].parent_span_id == workflow.span_id


def test_workflow_without_traceparent_starts_new_trace(tmp_path: Path) -> None:
    with running_receiver() as receiver, workflow_server(tmp_path, receiver) as url:
        client = _call(tmp_path, receiver, url, "no-inject")
        spans = receiver.wait_for_spans(
            lambda received: (
                len(_by_service(received, SERVER_SERVICE)) >= 2
                and len(_by_service(received, CLIENT_SERVICE)) >= 1
            )
        )

    assert "traceparent" not in client["headers"]
    assert client["reply"]["result"] == 42
    workflow = _workflow_span(_by_service(spans, SERVER_SERVICE))
    assert workflow.parent_span_id == ""
    assert workflow.trace_id != client["trace_id"]
