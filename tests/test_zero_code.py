"""Zero-code instrumentation: ``opentelemetry-instrument python app.py`` and environment only.

The apps below import neither OpenTelemetry nor kaygraph-otel. They run in a
subprocess under ``opentelemetry-instrument``, which finds the ``kaygraph`` and
``pocketflow`` entry points of the ``opentelemetry_instrumentor`` group, and
export over OTLP/HTTP to a receiver that the test runs on loopback. The SDK
flushes at interpreter exit, so once the subprocess has exited the receiver
contains everything it will get.
"""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from packaging.requirements import Requirement

from kaygraph_otel import KayGraphInstrumentor, PocketFlowInstrumentor
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan, running_receiver

OPENTELEMETRY_INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
FAKE_KAYGRAPH = Path(__file__).resolve().parent / "fake_kaygraph"
SERVICE_NAME = "zero-code-app"

# A three-node workflow: Load >> Total, and Total -"big"-> Report. The first line is
# replaced to run the same graph on KayGraph.
APP = """\
from pocketflow import Flow as Graph, Node


class Load(Node):
    def exec(self, prep_res):
        return [4, 5, 6]

    def post(self, shared, prep_res, exec_res):
        shared["numbers"] = exec_res
        return "default"


class Total(Node):
    def prep(self, shared):
        return shared["numbers"]

    def exec(self, numbers):
        return sum(numbers)

    def post(self, shared, prep_res, exec_res):
        shared["total"] = exec_res
        return "big" if exec_res > 10 else "small"


class Report(Node):
    def post(self, shared, prep_res, exec_res):
        shared["report"] = f"total={shared['total']}"


load, total, report = Load(), Total(), Report()
load >> total
total - "big" >> report
shared = {}
Graph(start=load).run(shared)
print(shared["report"])
"""
KAYGRAPH_IMPORT = "from kaygraph import Graph, Node"

# A span started through the OpenTelemetry API only, which shows that the exporter
# works in runs where the workflow itself must produce no span.
MANUAL_SPAN = """
from opentelemetry import trace

with trace.get_tracer("zero-code-test").start_as_current_span("manual"):
    pass
"""


def _run_instrumented(
    tmp_path: Path, receiver: OtlpReceiver, source: str, **settings: str
) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "app.py"
    app.write_text(source)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OTEL_", "KAYGRAPH_OTEL_"))
    }
    env.update(
        PYTHONPATH="",
        OTEL_SERVICE_NAME=SERVICE_NAME,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    env.update(settings)
    assert OPENTELEMETRY_INSTRUMENT.exists(), (
        f"{OPENTELEMETRY_INSTRUMENT} is missing; install the dev extra: pip install -e '.[dev]'"
    )
    return subprocess.run(
        [str(OPENTELEMETRY_INSTRUMENT), sys.executable, str(app)],
        env=env, capture_output=True, text=True, timeout=90, cwd=tmp_path,
    )  # fmt: skip


def _kaygraph_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [span for span in spans if "kaygraph.node_kind" in span.attributes]


def _check_workflow_trace(spans: list[ReceivedSpan], framework: str) -> None:
    workflows = [s for s in spans if s.attributes["kaygraph.node_kind"] == "workflow"]
    assert len(workflows) == 1, [span.name for span in spans]
    workflow = workflows[0]
    assert workflow.parent_span_id == ""
    assert workflow.name.startswith("invoke_workflow ")
    assert workflow.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert workflow.attributes["kaygraph.framework"] == framework
    assert workflow.scope.startswith("kaygraph_otel")
    assert workflow.resource["service.name"] == SERVICE_NAME
    assert "workflow_started" in workflow.event_names
    assert "workflow_completed" in workflow.event_names

    nodes = {s.attributes["kaygraph.node_type"]: s for s in spans if s is not workflow}
    assert set(nodes) == {"Load", "Total", "Report"}
    for node in nodes.values():
        assert node.trace_id == workflow.trace_id, node.name
        assert node.parent_span_id == workflow.span_id, node.name
        assert node.attributes["kaygraph.node_kind"] == "node", node.name
        assert node.attributes["kaygraph.framework"] == framework, node.name
        assert (
            node.attributes["kaygraph.workflow_id"] == workflow.attributes["kaygraph.workflow_id"]
        ), node.name
        assert node.attributes["kaygraph.state"] == "completed", node.name
        assert "node_completed" in node.event_names, node.name
    assert nodes["Load"].attributes["kaygraph.action"] == "default"
    assert nodes["Total"].attributes["kaygraph.action"] == "big"
    assert (
        nodes["Total"].attributes["kaygraph.next_node_id"]
        == nodes["Report"].attributes["kaygraph.node_id"]
    )


def test_pocketflow_app_traced_without_code(tmp_path: Path) -> None:
    with running_receiver() as receiver:
        result = _run_instrumented(tmp_path, receiver, APP)
        spans = receiver.snapshot()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "total=15"
    assert receiver.errors == []
    assert len(spans) == 4, [span.name for span in spans]
    _check_workflow_trace(_kaygraph_spans(spans), "pocketflow")


def test_kaygraph_app_traced_without_code(tmp_path: Path) -> None:
    # The fake kaygraph has no distribution metadata. opentelemetry-instrument still
    # loads the kaygraph entry point, because its dependency check reads the
    # "instruments" extra of kaygraph-otel's own metadata, which declares none. The
    # instrumentor then imports kaygraph, and the fake on PYTHONPATH satisfies that.
    source = APP.replace("from pocketflow import Flow as Graph, Node", KAYGRAPH_IMPORT)
    assert source != APP
    with running_receiver() as receiver:
        result = _run_instrumented(tmp_path, receiver, source, PYTHONPATH=str(FAKE_KAYGRAPH))
        spans = receiver.snapshot()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "total=15"
    assert len(spans) == 4, [span.name for span in spans]
    _check_workflow_trace(_kaygraph_spans(spans), "kaygraph")


def test_disabled_instrumentation_leaves_app_untraced(tmp_path: Path) -> None:
    with running_receiver() as receiver:
        result = _run_instrumented(
            tmp_path,
            receiver,
            APP + MANUAL_SPAN,
            OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="pocketflow",
        )
        spans = receiver.snapshot()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "total=15"
    assert [span.name for span in spans] == ["manual"]


def test_sampler_always_off_drops_workflow_spans(tmp_path: Path) -> None:
    with running_receiver() as receiver:
        result = _run_instrumented(
            tmp_path, receiver, APP + MANUAL_SPAN, OTEL_TRACES_SAMPLER="always_off"
        )
        spans = receiver.snapshot()
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "total=15"
    assert spans == []


def test_instrumentor_entry_points_registered() -> None:
    registered = {
        entry_point.name: entry_point.value
        for entry_point in entry_points(group="opentelemetry_instrumentor")
    }
    assert registered.get("kaygraph") == "kaygraph_otel:KayGraphInstrumentor"
    assert registered.get("pocketflow") == "kaygraph_otel:PocketFlowInstrumentor"


def test_instrumentors_name_their_framework() -> None:
    kaygraph = [Requirement(r).name for r in KayGraphInstrumentor().instrumentation_dependencies()]
    pocketflow = [
        Requirement(r).name for r in PocketFlowInstrumentor().instrumentation_dependencies()
    ]
    assert kaygraph == ["kaygraph"]
    assert pocketflow == ["pocketflow"]
