"""Span trees, span attributes and span events of instrumented KayGraph workflows.

The tests run against the real ``kaygraph`` when it is installed and otherwise
against the test fake that ``tests/conftest.py`` puts on ``sys.path``.
``SCENARIOS`` is shared with ``tests/test_encoder.py``, which encodes the
spans of every scenario.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import kaygraph
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kaygraph_otel import (
    KayGraphInstrumentor,
    instrument_kaygraph,
    run_context,
    uninstrument_kaygraph,
)
from kaygraph_otel import attributes as attr
from tests.span_tree import (
    children,
    event_names,
    events_named,
    node_spans,
    of_kind,
    one_node_span,
    parent_id,
    span_id,
)

USER_TRACER = trace.get_tracer("tests.user_code")


# Fixtures


@pytest.fixture
def instrument(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> Iterator[Callable[..., KayGraphInstrumentor]]:
    """Return a function that instruments KayGraph with options, and uninstrument at teardown."""
    assert not KayGraphInstrumentor().is_instrumented_by_opentelemetry, "a test leaked a patch"

    def start(**options: Any) -> KayGraphInstrumentor:
        return instrument_kaygraph(tracer_provider=tracer_provider, **options)

    try:
        yield start
    finally:
        uninstrument_kaygraph()


@pytest.fixture
def spans(
    instrument: Callable[..., KayGraphInstrumentor], span_exporter: InMemorySpanExporter
) -> Callable[[], list[ReadableSpan]]:
    """Instrument KayGraph with default options and return a reader of the finished spans."""
    instrument()
    return lambda: list(span_exporter.get_finished_spans())


# Nodes used by the tests and scenarios


class RecordNode(kaygraph.Node):
    """Node that appends its node id to ``shared["path"]`` and returns ``action``."""

    def __init__(self, node_id: str, action: str | None = None, **kwargs: Any) -> None:
        super().__init__(node_id=node_id, **kwargs)
        self.action = action

    def prep(self, shared: dict[str, Any]) -> list[str]:
        return shared.setdefault("path", [])

    def exec(self, prep_res: list[str]) -> str:
        return self.node_id

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> str | None:
        shared["path"].append(exec_res)
        return self.action


class RouterNode(kaygraph.Node):
    """Node that returns the action named by ``shared["route"]``."""

    def prep(self, shared: dict[str, Any]) -> str:
        return shared["route"]

    def exec(self, route: str) -> str:
        return route

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> str:
        shared.setdefault("path", []).append(self.node_id)
        return exec_res


class FlakyNode(kaygraph.Node):
    """Node that raises ValueError in the first ``failures`` attempts, counted in ``shared``."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared

    def exec(self, shared: dict[str, Any]) -> str:
        shared["attempts"] = shared.get("attempts", 0) + 1
        if shared["attempts"] <= self.failures:
            raise ValueError(f"attempt {shared['attempts']} failed")
        return "succeeded"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["result"] = exec_res


class FallbackNode(FlakyNode):
    """FlakyNode whose fallback returns a marker that names the error."""

    def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
        return f"fallback after {exc}"


class HandlingNode(kaygraph.Node):
    """Node that raises KeyError in exec and suppresses it in on_error."""

    def exec(self, prep_res: Any) -> None:
        raise KeyError("missing-key")

    def on_error(self, shared: dict[str, Any], error: Exception) -> bool:
        shared["handled"] = type(error).__name__
        return True


class SquareBatch(kaygraph.BatchNode):
    """Batch that squares ``shared["numbers"]`` and raises ValueError for a negative number."""

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    def exec(self, number: int) -> int:
        if number < 0:
            raise ValueError(f"negative {number}")
        return number * number

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["squares"] = exec_res


class SquareBatchWithFallback(SquareBatch):
    def exec_fallback(self, prep_res: Any, exc: Exception) -> int:
        return -1


class ThreadBatch(kaygraph.ParallelBatchNode):
    """Thread batch that doubles items, each inside a user span and after a barrier wait."""

    def __init__(self, barrier: threading.Barrier | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.barrier = barrier

    def prep(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    def exec(self, number: int) -> int:
        with USER_TRACER.start_as_current_span("user work") as span:
            span.set_attribute("test.thread", threading.get_ident())
            if self.barrier is not None:
                self.barrier.wait()
            return number * 2

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["doubled"] = exec_res


class CountingAsyncNode(kaygraph.AsyncNode):
    """Async node that increments ``shared["count"]``."""

    async def prep_async(self, shared: dict[str, Any]) -> int:
        return shared.get("count", 0)

    async def exec_async(self, count: int) -> int:
        await asyncio.sleep(0)
        return count + 1

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared["count"] = exec_res


class GatherBatch(kaygraph.AsyncParallelBatchNode):
    """Gathered batch that triples items and records the max number running at once."""

    async def prep_async(self, shared: dict[str, Any]) -> list[int]:
        self.active = 0
        shared["max_active"] = 0
        return shared["numbers"]

    async def exec_async(self, number: int) -> int:
        with USER_TRACER.start_as_current_span("user work"):
            self.active += 1
            self.shared_max = max(getattr(self, "shared_max", 0), self.active)
            await asyncio.sleep(0.01)
            self.active -= 1
            return number * 3

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["tripled"] = exec_res
        shared["max_active"] = self.shared_max


class ParamAsyncNode(kaygraph.AsyncNode):
    """Async node that stores ``params["key"]`` times ten in ``shared["by_key"]``."""

    async def exec_async(self, prep_res: Any) -> int:
        await asyncio.sleep(0.001)
        return self.params["key"] * 10

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared.setdefault("by_key", {})[self.params["key"]] = exec_res


class ParamGatherGraph(kaygraph.AsyncParallelBatchGraph):
    async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, int]]:
        return [{"key": key} for key in shared["keys"]]


class ParamBatchGraph(kaygraph.BatchGraph):
    def prep(self, shared: dict[str, Any]) -> list[dict[str, int]]:
        return [{"key": key} for key in shared["keys"]]


class ParamNode(kaygraph.Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared.setdefault("keys_seen", []).append(self.params["key"])


class CountingMetricsNode(kaygraph.MetricsNode):
    def exec(self, prep_res: Any) -> str:
        return "measured"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        stats = self.get_stats()
        shared["metrics"] = (exec_res, stats["total_executions"], stats["success_count"])


class RunOverrideNode(kaygraph.Node):
    """Node that overrides ``_run`` and calls the parent's, as user subclasses may."""

    def _run(self, shared: dict[str, Any]) -> Any:
        shared["overrides"] = shared.get("overrides", 0) + 1
        return super()._run(shared)

    def exec(self, prep_res: Any) -> str:
        return "ran"


class RunOverrideMetricsNode(CountingMetricsNode):
    def _run(self, shared: dict[str, Any]) -> Any:
        shared["overrides"] = shared.get("overrides", 0) + 1
        return super()._run(shared)


class CheckedNode(kaygraph.ValidatedNode):
    """Validated node that rejects a negative input and an output of 100 or more."""

    def prep(self, shared: dict[str, Any]) -> int:
        return shared["value"]

    def validate_input(self, prep_res: Any) -> Any:
        if prep_res < 0:
            raise ValueError(f"input {prep_res} is negative")
        return prep_res

    def exec(self, value: int) -> int:
        return value * 10

    def validate_output(self, exec_res: Any) -> Any:
        if exec_res >= 100:
            raise ValueError(f"output {exec_res} is too large")
        return exec_res

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared["checked"] = exec_res


# Scenarios: each builds a fresh graph, runs it and returns what a caller can observe.


@dataclass
class Outcome:
    shared: dict[str, Any]
    result: Any
    error: tuple[type[BaseException], str] | None


def run_sync(graph: kaygraph.BaseNode, shared: dict[str, Any]) -> Outcome:
    try:
        result = graph.run(shared)
    except Exception as exc:  # noqa: BLE001 - the scenario reports the error
        return Outcome(shared, None, (type(exc), str(exc)))
    return Outcome(shared, result, None)


def run_async(graph: kaygraph.AsyncNode, shared: dict[str, Any]) -> Outcome:
    try:
        result = asyncio.run(graph.run_async(shared))
    except Exception as exc:  # noqa: BLE001 - the scenario reports the error
        return Outcome(shared, None, (type(exc), str(exc)))
    return Outcome(shared, result, None)


def sequential() -> Outcome:
    load = RecordNode("load")
    load >> RecordNode("transform") >> RecordNode("save", action="finished")
    return run_sync(kaygraph.Graph(start=load), {})


def branching() -> Outcome:
    router = RouterNode(node_id="router")
    router - "approve" >> RecordNode("approved")
    router - "reject" >> RecordNode("rejected")
    return run_sync(kaygraph.Graph(start=router), {"route": "reject"})


def nested() -> Outcome:
    inner_start = RecordNode("inner_a")
    inner_start >> RecordNode("inner_b")
    inner = kaygraph.Graph(start=inner_start)
    inner.node_id = "inner"
    first = RecordNode("first")
    first >> inner >> RecordNode("last")
    return run_sync(kaygraph.Graph(start=first), {})


def batch() -> Outcome:
    return run_sync(kaygraph.Graph(start=SquareBatch(node_id="squares")), {"numbers": [1, 2, 3]})


def batch_with_fallback() -> Outcome:
    node = SquareBatchWithFallback(node_id="squares", max_retries=2)
    return run_sync(kaygraph.Graph(start=node), {"numbers": [1, -2, 3]})


def parallel_batch() -> Outcome:
    node = ThreadBatch(max_workers=4, node_id="threads")
    return run_sync(kaygraph.Graph(start=node), {"numbers": list(range(8))})


def async_graph() -> Outcome:
    counter = CountingAsyncNode(node_id="count")
    counter >> GatherBatch(node_id="gather")
    return run_async(kaygraph.AsyncGraph(start=counter), {"numbers": [1, 2, 3]})


def async_parallel_batch_graph() -> Outcome:
    graph = ParamGatherGraph(start=ParamAsyncNode(node_id="param"))
    return run_async(graph, {"keys": [1, 2, 3]})


def batch_graph() -> Outcome:
    return run_sync(ParamBatchGraph(start=ParamNode(node_id="param")), {"keys": [4, 5]})


def retries() -> Outcome:
    node = FlakyNode(failures=2, max_retries=3, node_id="flaky")
    return run_sync(kaygraph.Graph(start=node), {})


def fallback() -> Outcome:
    node = FallbackNode(failures=5, max_retries=2, node_id="fallback")
    return run_sync(kaygraph.Graph(start=node), {})


def failure() -> Outcome:
    start = RecordNode("before")
    start >> FlakyNode(failures=5, max_retries=2, node_id="broken") >> RecordNode("never")
    return run_sync(kaygraph.Graph(start=start), {})


def handled_error() -> Outcome:
    handler = HandlingNode(node_id="handler")
    handler >> RecordNode("after")
    return run_sync(kaygraph.Graph(start=handler), {})


def validation_failure() -> Outcome:
    return run_sync(kaygraph.Graph(start=CheckedNode(node_id="checked")), {"value": 50})


def metrics_node() -> Outcome:
    return run_sync(kaygraph.Graph(start=CountingMetricsNode(node_id="metrics")), {})


def run_override() -> Outcome:
    start = RunOverrideNode(node_id="override")
    start >> RunOverrideMetricsNode(node_id="override_metrics")
    return run_sync(kaygraph.Graph(start=start), {})


def subgraph_node() -> Outcome:
    inner_start = RecordNode("sub_a")
    inner_start >> RecordNode("sub_b")
    sub = kaygraph.SubGraphNode(kaygraph.Graph(start=inner_start), node_id="sub")
    first = RecordNode("first")
    first >> sub
    return run_sync(kaygraph.Graph(start=first), {})


def standalone_node() -> Outcome:
    return run_sync(FlakyNode(failures=1, max_retries=2, node_id="alone"), {})


SCENARIOS: dict[str, Callable[[], Outcome]] = {
    "sequential": sequential,
    "branching": branching,
    "nested": nested,
    "batch": batch,
    "batch_with_fallback": batch_with_fallback,
    "parallel_batch": parallel_batch,
    "async_graph": async_graph,
    "async_parallel_batch_graph": async_parallel_batch_graph,
    "batch_graph": batch_graph,
    "retries": retries,
    "fallback": fallback,
    "failure": failure,
    "handled_error": handled_error,
    "validation_failure": validation_failure,
    "metrics_node": metrics_node,
    "run_override": run_override,
    "subgraph_node": subgraph_node,
    "standalone_node": standalone_node,
}


# Results


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_results_unchanged_by_instrumentation(
    name: str, instrument: Callable[..., KayGraphInstrumentor]
) -> None:
    plain = SCENARIOS[name]()
    instrument(capture_snapshots=True)

    traced = SCENARIOS[name]()

    assert traced.shared == plain.shared
    assert traced.result == plain.result
    assert traced.error == plain.error


def test_failure_reraises_same_exception_object(spans: Callable[[], list[ReadableSpan]]) -> None:
    error = LookupError("the original")

    class Raising(kaygraph.Node):
        def exec(self, prep_res: Any) -> None:
            raise error

    with pytest.raises(LookupError) as excinfo:
        kaygraph.Graph(start=Raising(node_id="raising")).run({})

    assert excinfo.value is error
    assert str(excinfo.value) == "the original"


# Span tree shape


def test_sequential_graph_span_tree(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = sequential()
    finished = spans()

    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    workflow = workflows[0]
    assert workflow.name == "invoke_workflow Graph"
    assert workflow.parent is None
    assert workflow.attributes[attr.GEN_AI_OPERATION_NAME] == "invoke_workflow"
    assert workflow.attributes[attr.GEN_AI_WORKFLOW_NAME] == "Graph"
    assert workflow.attributes[attr.FRAMEWORK] == "kaygraph"
    assert outcome.shared["path"] == ["load", "transform", "save"]

    nodes = children(finished, workflow)
    assert [span.attributes[attr.NODE_ID] for span in nodes] == ["load", "transform", "save"]
    assert len(finished) == 4
    for span in nodes:
        assert span.name == f"node {RecordNode.__name__}"
        assert span.attributes[attr.NODE_KIND] == "node"
        assert span.attributes[attr.NODE_TYPE] == "RecordNode"
        assert span.attributes[attr.PARENT_NODE_ID] == "Graph"
        assert span.attributes[attr.WORKFLOW_ID] == workflow.attributes[attr.WORKFLOW_ID]
        assert span.context.trace_id == workflow.context.trace_id
        assert span.status.status_code is StatusCode.UNSET
    assert nodes[0].attributes[attr.NEXT_NODE_ID] == "transform"
    assert nodes[1].attributes[attr.NEXT_NODE_ID] == "save"
    assert attr.NEXT_NODE_ID not in nodes[2].attributes
    assert nodes[2].attributes[attr.ACTION] == "finished"


def test_node_span_lifecycle_events(spans: Callable[[], list[ReadableSpan]]) -> None:
    sequential()

    span = one_node_span(spans(), "load")

    assert event_names(span) == [
        "node_started",
        "node_preparing",
        "node_executing",
        "node_completed",
    ]
    assert span.attributes[attr.STATE] == "completed"


def test_branching_traces_only_taken_branch(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = branching()
    finished = spans()

    assert outcome.shared["path"] == ["router", "rejected"]
    router = one_node_span(finished, "router")
    assert router.attributes[attr.ACTION] == "reject"
    assert router.attributes[attr.NEXT_NODE_ID] == "rejected"
    assert len(node_spans(finished, "rejected")) == 1
    assert node_spans(finished, "approved") == []
    workflow = of_kind(finished, "workflow")[0]
    assert parent_id(one_node_span(finished, "rejected")) == span_id(workflow)


def test_nested_graph_spans_nest(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = nested()
    finished = spans()

    assert outcome.shared["path"] == ["first", "inner_a", "inner_b", "last"]
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    workflow = workflows[0]
    inner = one_node_span(finished, "inner")
    assert inner.attributes[attr.NODE_KIND] == "graph"
    assert inner.name == "graph Graph"
    assert parent_id(inner) == span_id(workflow)
    assert inner.attributes[attr.PARENT_NODE_ID] == "Graph"
    for node_id in ("inner_a", "inner_b"):
        span = one_node_span(finished, node_id)
        assert parent_id(span) == span_id(inner)
        assert span.attributes[attr.PARENT_NODE_ID] == "inner"
    for node_id in ("first", "last"):
        assert parent_id(one_node_span(finished, node_id)) == span_id(workflow)
    assert one_node_span(finished, "first").attributes[attr.NEXT_NODE_ID] == "inner"
    assert inner.attributes[attr.NEXT_NODE_ID] == "last"


def test_nested_graph_ids_are_unique(spans: Callable[[], list[ReadableSpan]]) -> None:
    """An unnamed inner graph of the same class as the workflow gets its own id."""
    inner = kaygraph.Graph(start=RecordNode("inner_a"))
    first = RecordNode("first")
    first >> inner
    kaygraph.Graph(start=first).run({})
    finished = spans()

    workflow = of_kind(finished, "workflow")[0]
    graphs = of_kind(finished, "graph")
    assert len(graphs) == 1
    inner_id = graphs[0].attributes[attr.NODE_ID]
    assert inner_id != workflow.attributes[attr.NODE_ID]
    assert one_node_span(finished, "inner_a").attributes[attr.PARENT_NODE_ID] == inner_id


def test_graph_run_inside_exec_nests(spans: Callable[[], list[ReadableSpan]]) -> None:
    """A graph that a node runs in exec is a child graph with an id of its own."""

    class RunsGraph(kaygraph.Node):
        def exec(self, prep_res: Any) -> None:
            kaygraph.Graph(start=RecordNode("adhoc_a")).run({})

    kaygraph.Graph(start=RunsGraph(node_id="runner")).run({})
    finished = spans()

    workflow = of_kind(finished, "workflow")[0]
    runner = one_node_span(finished, "runner")
    graphs = of_kind(finished, "graph")
    assert len(graphs) == 1
    assert parent_id(graphs[0]) == span_id(runner)
    graph_id = graphs[0].attributes[attr.NODE_ID]
    assert graph_id not in ("Graph", "runner")
    assert graph_id.startswith("Graph#")
    assert attr.GRAPH_STRUCTURE in graphs[0].attributes
    adhoc = one_node_span(finished, "adhoc_a")
    assert parent_id(adhoc) == span_id(graphs[0])
    assert adhoc.attributes[attr.PARENT_NODE_ID] == graph_id
    assert workflow.attributes[attr.NODE_ID] == "Graph"


def test_subgraph_node_runs_inner_graph_as_child(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = subgraph_node()
    finished = spans()

    assert outcome.shared["path"] == ["first", "sub_a", "sub_b"]
    assert len(of_kind(finished, "workflow")) == 1
    sub = one_node_span(finished, "sub")
    graphs = of_kind(finished, "graph")
    assert len(graphs) == 1
    assert parent_id(graphs[0]) == span_id(sub)
    for node_id in ("sub_a", "sub_b"):
        assert parent_id(one_node_span(finished, node_id)) == span_id(graphs[0])


def test_one_workflow_span_per_run(spans: Callable[[], list[ReadableSpan]]) -> None:
    start = RecordNode("only")
    graph = kaygraph.Graph(start=start)

    graph.run({})
    graph.run({})
    finished = spans()

    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 2
    assert workflows[0].context.trace_id != workflows[1].context.trace_id
    node_traces = sorted(span.context.trace_id for span in node_spans(finished, "only"))
    assert node_traces == sorted(span.context.trace_id for span in workflows)


def test_standalone_node_is_its_own_root(spans: Callable[[], list[ReadableSpan]]) -> None:
    standalone_node()
    finished = spans()

    assert len(finished) == 1
    assert finished[0].parent is None
    assert finished[0].attributes[attr.NODE_KIND] == "node"
    assert finished[0].attributes[attr.NODE_ID] == "alone"


def test_run_context_sets_name_and_correlation(spans: Callable[[], list[ReadableSpan]]) -> None:
    with run_context(correlation_id="request-17", workflow_name="etl"):
        sequential()
    finished = spans()

    workflow = of_kind(finished, "workflow")[0]
    assert workflow.name == "invoke_workflow etl"
    assert workflow.attributes[attr.GEN_AI_WORKFLOW_NAME] == "etl"
    for span in finished:
        assert span.attributes[attr.CORRELATION_ID] == "request-17"


def test_correlation_id_defaults_to_trace_id(spans: Callable[[], list[ReadableSpan]]) -> None:
    sequential()

    for span in spans():
        expected = trace.format_trace_id(span.context.trace_id)
        assert span.attributes[attr.CORRELATION_ID] == expected


def test_run_context_rejects_empty_values() -> None:
    with pytest.raises(ValueError, match="correlation_id"):
        with run_context(correlation_id=""):
            pass


# Batches


def test_batch_node_item_spans(spans: Callable[[], list[ReadableSpan]]) -> None:
    batch()
    finished = spans()

    node = one_node_span(finished, "squares")
    items = of_kind(finished, "batch_item")
    assert len(items) == 3
    assert sorted(span.attributes[attr.BATCH_ITEM_INDEX] for span in items) == [0, 1, 2]
    for item in items:
        assert parent_id(item) == span_id(node)
        assert item.name == "item SquareBatch"
        assert item.attributes[attr.NODE_ID] == "squares"
        assert item.status.status_code is StatusCode.UNSET
    assert node.attributes[attr.BATCH_SIZE] == 3
    assert node.attributes[attr.BATCH_SUCCEEDED] == 3
    assert node.attributes[attr.BATCH_FAILED] == 0
    assert attr.BATCH_SPANS_DROPPED not in node.attributes
    queue = events_named(node, "queue_depth")
    assert queue[0][attr.EVENT_METRIC_PREFIX + "queue_depth"] == 3


def test_batch_item_retries_and_fallback(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = batch_with_fallback()
    finished = spans()

    assert outcome.shared["squares"] == [1, -1, 9]
    node = one_node_span(finished, "squares")
    assert node.attributes[attr.BATCH_SUCCEEDED] == 3
    assert node.attributes[attr.FALLBACK_COUNT] == 1
    failing = [
        span for span in of_kind(finished, "batch_item") if events_named(span, "retry_attempted")
    ]
    assert len(failing) == 1
    retry = events_named(failing[0], "retry_attempted")
    assert [event[attr.EVENT_ATTEMPT] for event in retry] == [1]
    assert retry[0][attr.BATCH_ITEM_INDEX] == failing[0].attributes[attr.BATCH_ITEM_INDEX]
    assert len(events_named(failing[0], "fallback_triggered")) == 1
    assert events_named(node, "retry_attempted") == []


def test_batch_item_failure_fails_node(spans: Callable[[], list[ReadableSpan]]) -> None:
    node = SquareBatch(node_id="squares")

    with pytest.raises(ValueError, match="negative -2"):
        kaygraph.Graph(start=node).run({"numbers": [1, -2, 3]})
    finished = spans()

    node_span = one_node_span(finished, "squares")
    assert node_span.status.status_code is StatusCode.ERROR
    assert node_span.attributes[attr.BATCH_SUCCEEDED] == 1
    assert node_span.attributes[attr.BATCH_FAILED] == 1
    items = of_kind(finished, "batch_item")
    assert len(items) == 2
    failed = [span for span in items if span.status.status_code is StatusCode.ERROR]
    assert len(failed) == 1
    assert failed[0].attributes[attr.BATCH_ITEM_INDEX] == 1
    assert len(events_named(failed[0], "node_failed")) == 1


def test_parallel_batch_context_in_worker_threads(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    barrier = threading.Barrier(4, timeout=10)
    node = ThreadBatch(barrier=barrier, max_workers=4, node_id="threads")

    outcome = run_sync(kaygraph.Graph(start=node), {"numbers": [1, 2, 3, 4]})
    finished = spans()

    assert outcome.error is None
    assert outcome.shared["doubled"] == [2, 4, 6, 8]
    node_span = one_node_span(finished, "threads")
    items = of_kind(finished, "batch_item")
    assert len(items) == 4
    assert sorted(span.attributes[attr.BATCH_ITEM_INDEX] for span in items) == [0, 1, 2, 3]
    for item in items:
        assert parent_id(item) == span_id(node_span)
    user_spans = [span for span in finished if span.name == "user work"]
    assert len(user_spans) == 4
    threads = {span.attributes["test.thread"] for span in user_spans}
    assert len(threads) == 4
    assert threading.get_ident() not in threads
    item_ids = {span_id(item) for item in items}
    assert {parent_id(span) for span in user_spans} == item_ids


def test_thread_pool_outside_nodes_is_unchanged(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    """Only submissions made while a node runs carry the caller's context."""
    from concurrent.futures import ThreadPoolExecutor

    with USER_TRACER.start_as_current_span("outside"):
        with ThreadPoolExecutor(1) as pool:
            current = pool.submit(trace.get_current_span).result()

    assert current is trace.INVALID_SPAN


@pytest.mark.parametrize("node_class", [SquareBatch, ThreadBatch])
def test_item_span_cap(
    node_class: type[kaygraph.BatchNode],
    instrument: Callable[..., KayGraphInstrumentor],
    span_exporter: InMemorySpanExporter,
) -> None:
    instrument(max_item_spans=10)
    node = node_class(node_id="many")

    outcome = run_sync(kaygraph.Graph(start=node), {"numbers": list(range(1000))})
    finished = list(span_exporter.get_finished_spans())

    assert outcome.error is None
    items = of_kind(finished, "batch_item")
    assert len(items) == 10
    assert sorted(span.attributes[attr.BATCH_ITEM_INDEX] for span in items) == list(range(10))
    node_span = one_node_span(finished, "many")
    assert node_span.attributes[attr.BATCH_SIZE] == 1000
    assert node_span.attributes[attr.BATCH_SUCCEEDED] == 1000
    assert node_span.attributes[attr.BATCH_SPANS_DROPPED] == 990
    assert len(node_span.events) < 128
    assert node_span.dropped_events == 0


def test_item_spans_off(
    instrument: Callable[..., KayGraphInstrumentor], span_exporter: InMemorySpanExporter
) -> None:
    instrument(max_item_spans=0)

    batch()
    finished = list(span_exporter.get_finished_spans())

    assert of_kind(finished, "batch_item") == []
    assert one_node_span(finished, "squares").attributes[attr.BATCH_SPANS_DROPPED] == 3


# Async


def test_async_graph_span_tree(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = async_graph()
    finished = spans()

    assert outcome.error is None
    assert outcome.shared["tripled"] == [3, 6, 9]
    assert outcome.shared["max_active"] == 3
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    assert workflows[0].name == "invoke_workflow AsyncGraph"
    assert attr.MAX_RETRIES not in workflows[0].attributes
    count = one_node_span(finished, "count")
    gather = one_node_span(finished, "gather")
    assert parent_id(count) == span_id(workflows[0])
    assert parent_id(gather) == span_id(workflows[0])
    assert count.attributes[attr.NEXT_NODE_ID] == "gather"
    items = of_kind(finished, "batch_item")
    assert len(items) == 3
    assert sorted(span.attributes[attr.BATCH_ITEM_INDEX] for span in items) == [0, 1, 2]
    for item in items:
        assert parent_id(item) == span_id(gather)
    user_spans = [span for span in finished if span.name == "user work"]
    assert len(user_spans) == 3
    assert sorted(parent_id(span) for span in user_spans) == sorted(map(span_id, items))
    assert gather.attributes[attr.BATCH_SUCCEEDED] == 3


def test_async_parallel_batch_graph_spans(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = async_parallel_batch_graph()
    finished = spans()

    assert outcome.shared["by_key"] == {1: 10, 2: 20, 3: 30}
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    assert workflows[0].name == "invoke_workflow ParamGatherGraph"
    params = node_spans(finished, "param")
    assert len(params) == 3
    for span in params:
        assert parent_id(span) == span_id(workflows[0])


def test_async_retries_and_failure(spans: Callable[[], list[ReadableSpan]]) -> None:
    class AsyncFlaky(kaygraph.AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            raise TimeoutError("no answer")

    with pytest.raises(TimeoutError, match="no answer"):
        asyncio.run(
            kaygraph.AsyncGraph(start=AsyncFlaky(max_retries=3, node_id="slow")).run_async({})
        )
    finished = spans()

    node = one_node_span(finished, "slow")
    retries = events_named(node, "retry_attempted")
    assert [event[attr.EVENT_ATTEMPT] for event in retries] == [1, 2]
    assert {event[attr.EVENT_MAX_ATTEMPTS] for event in retries} == {3}
    assert node.status.status_code is StatusCode.ERROR
    assert len(events_named(node, "node_failed")) == 1
    workflow = of_kind(finished, "workflow")[0]
    assert workflow.status.status_code is StatusCode.ERROR
    assert len(events_named(workflow, "workflow_failed")) == 1


def test_batch_graph_one_workflow_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = batch_graph()
    finished = spans()

    assert outcome.shared["keys_seen"] == [4, 5]
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    params = node_spans(finished, "param")
    assert len(params) == 2
    assert all(parent_id(span) == span_id(workflows[0]) for span in params)


# One span per execution


def test_metrics_node_one_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = metrics_node()
    finished = spans()

    assert outcome.shared["metrics"] == ("measured", 0, 0)
    assert len(node_spans(finished, "metrics")) == 1
    assert len(finished) == 2


def test_run_override_one_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = run_override()
    finished = spans()

    assert outcome.shared["overrides"] == 2
    assert len(node_spans(finished, "override")) == 1
    assert len(node_spans(finished, "override_metrics")) == 1
    assert len(finished) == 3


def test_subclass_defined_after_instrumenting(spans: Callable[[], list[ReadableSpan]]) -> None:
    class LateOverride(RunOverrideNode):
        def _run(self, shared: dict[str, Any]) -> Any:
            shared["late"] = True
            return super()._run(shared)

        def exec(self, prep_res: Any) -> str:
            raise ValueError("late failure")

        def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
            return "late fallback"

    shared: dict[str, Any] = {}
    kaygraph.Graph(start=LateOverride(node_id="late")).run(shared)
    finished = spans()

    assert shared == {"late": True, "overrides": 1}
    node = one_node_span(finished, "late")
    assert len(finished) == 2
    assert len(events_named(node, "fallback_triggered")) == 1


def test_node_created_before_instrumenting(
    instrument: Callable[..., KayGraphInstrumentor], span_exporter: InMemorySpanExporter
) -> None:
    node = RunOverrideNode(node_id="early")
    graph = kaygraph.Graph(start=node)
    instrument()

    graph.run({})
    finished = list(span_exporter.get_finished_spans())

    assert len(node_spans(finished, "early")) == 1
    assert len(finished) == 2


# Retries, fallbacks and failures


def test_retry_events_count_attempts(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = retries()
    finished = spans()

    assert outcome.shared == {"attempts": 3, "result": "succeeded"}
    node = one_node_span(finished, "flaky")
    retry_events = events_named(node, "retry_attempted")
    assert [event[attr.EVENT_ATTEMPT] for event in retry_events] == [1, 2]
    assert [event[attr.EVENT_MAX_ATTEMPTS] for event in retry_events] == [3, 3]
    assert [event[attr.EVENT_ERROR_MESSAGE] for event in retry_events] == [
        "attempt 1 failed",
        "attempt 2 failed",
    ]
    assert {event[attr.EVENT_ERROR_TYPE] for event in retry_events} == {"ValueError"}
    assert node.attributes[attr.RETRY_COUNT] == 2
    assert node.attributes[attr.MAX_RETRIES] == 3
    assert node.status.status_code is StatusCode.UNSET
    assert events_named(node, "fallback_triggered") == []
    assert events_named(node, "node_failed") == []


def test_exhausted_retries_without_fallback_fail(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    outcome = failure()
    finished = spans()

    assert outcome.error == (ValueError, "attempt 2 failed")
    assert outcome.shared["path"] == ["before"]
    node = one_node_span(finished, "broken")
    assert events_named(node, "fallback_triggered") == []
    assert [event[attr.EVENT_ATTEMPT] for event in events_named(node, "retry_attempted")] == [1]
    failed = events_named(node, "node_failed")
    assert len(failed) == 1
    assert failed[0][attr.EVENT_STATE] == "failed"
    assert failed[0][attr.ERROR_PHASE] == "exec"
    assert failed[0][attr.EVENT_ERROR_TYPE] == "ValueError"
    assert failed[0][attr.EVENT_ERROR_MESSAGE] == "attempt 2 failed"
    assert failed[0][attr.EVENT_ATTEMPT] == 2
    exceptions = events_named(node, "exception")
    assert len(exceptions) == 1
    assert exceptions[0]["exception.type"] == "builtins.ValueError"
    assert exceptions[0]["exception.message"] == "attempt 2 failed"
    assert node.status.status_code is StatusCode.ERROR
    assert node.attributes[attr.STATE] == "failed"
    assert node_spans(finished, "never") == []
    workflow = of_kind(finished, "workflow")[0]
    assert workflow.status.status_code is StatusCode.ERROR
    workflow_failed = events_named(workflow, "workflow_failed")
    assert len(workflow_failed) == 1
    assert workflow_failed[0][attr.ERROR_PHASE] == "orch"
    assert workflow_failed[0][attr.EVENT_ERROR_MESSAGE] == "attempt 2 failed"


def test_fallback_result_becomes_exec_result(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = fallback()
    finished = spans()

    assert outcome.error is None
    assert outcome.shared["result"] == "fallback after attempt 2 failed"
    node = one_node_span(finished, "fallback")
    fallbacks = events_named(node, "fallback_triggered")
    assert len(fallbacks) == 1
    assert fallbacks[0][attr.EVENT_ATTEMPT] == 2
    assert fallbacks[0][attr.EVENT_ERROR_MESSAGE] == "attempt 2 failed"
    assert node.attributes[attr.FALLBACK_COUNT] == 1
    assert node.status.status_code is StatusCode.UNSET
    assert events_named(node, "node_failed") == []
    assert events_named(node, "node_completed") != []


def test_on_error_handled_continues(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = handled_error()
    finished = spans()

    assert outcome.error is None
    assert outcome.shared == {"handled": "KeyError", "path": ["after"]}
    node = one_node_span(finished, "handler")
    failed = events_named(node, "node_failed")
    assert len(failed) == 1
    assert failed[0][attr.ERROR_HANDLED] is True
    assert failed[0][attr.EVENT_STATE] == "handled"
    assert failed[0][attr.EVENT_ERROR_TYPE] == "KeyError"
    assert len(events_named(node, "exception")) == 1
    assert node.status.status_code is not StatusCode.ERROR
    assert node.attributes[attr.ERROR_HANDLED] is True
    assert node.attributes[attr.STATE] == "handled"
    assert node.attributes[attr.NEXT_NODE_ID] == "after"
    assert events_named(node, "node_completed") == []
    assert len(node_spans(finished, "after")) == 1
    workflow = of_kind(finished, "workflow")[0]
    assert workflow.status.status_code is StatusCode.UNSET


@pytest.mark.parametrize(
    ("value", "phase", "message"),
    [(-1, "validate_input", "input -1 is negative"), (50, "validate_output", "output 500")],
)
def test_validation_failure_phase(
    value: int, phase: str, message: str, spans: Callable[[], list[ReadableSpan]]
) -> None:
    with pytest.raises(ValueError, match=message):
        kaygraph.Graph(start=CheckedNode(node_id="checked")).run({"value": value})
    finished = spans()

    node = one_node_span(finished, "checked")
    failed = events_named(node, "node_failed")
    assert len(failed) == 1
    assert failed[0][attr.ERROR_PHASE] == phase
    assert node.attributes[attr.ERROR_PHASE] == phase
    assert node.status.status_code is StatusCode.ERROR


class PhaseFailure(kaygraph.Node):
    """Node that raises RuntimeError in the lifecycle step named by ``fail_in``."""

    def __init__(self, fail_in: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_in = fail_in

    def before_prep(self, shared: dict[str, Any]) -> None:
        self._fail("before_prep")

    def prep(self, shared: dict[str, Any]) -> None:
        self._fail("prep")

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        self._fail("post")

    def _fail(self, step: str) -> None:
        if step == self.fail_in:
            raise RuntimeError(f"failed in {step}")


@pytest.mark.parametrize("phase", ["before_prep", "prep", "post"])
def test_failure_phase_names_lifecycle_step(
    phase: str, spans: Callable[[], list[ReadableSpan]]
) -> None:
    with pytest.raises(RuntimeError, match=f"failed in {phase}"):
        kaygraph.Graph(start=PhaseFailure(phase, node_id="phased")).run({})

    node = one_node_span(spans(), "phased")
    assert events_named(node, "node_failed")[0][attr.ERROR_PHASE] == phase


def test_validation_success_completes(spans: Callable[[], list[ReadableSpan]]) -> None:
    shared = {"value": 5}

    kaygraph.Graph(start=CheckedNode(node_id="checked")).run(shared)
    finished = spans()

    assert shared["checked"] == 50
    node = one_node_span(finished, "checked")
    assert node.status.status_code is StatusCode.UNSET
    assert len(events_named(node, "node_completed")) == 1
