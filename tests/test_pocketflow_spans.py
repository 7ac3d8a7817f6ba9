"""Span trees, span attributes and span events of instrumented PocketFlow workflows.

PocketFlow nodes have no ``node_id``, so a node's id in its spans is its class
name, numbered (``Name#2``) when a workflow holds several nodes of one class.
``SCENARIOS`` is shared with ``tests/test_encoder.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pocketflow
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from kaygraph_otel import PocketFlowInstrumentor, instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel import attributes as attr
from tests.span_tree import (
    children,
    events_named,
    node_spans,
    of_kind,
    one_node_span,
    parent_id,
    span_id,
)

USER_TRACER = trace.get_tracer("tests.user_code")


@pytest.fixture
def instrument(
    tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> Iterator[Callable[..., PocketFlowInstrumentor]]:
    """Return a function that instruments PocketFlow with options, and uninstrument at teardown."""
    assert not PocketFlowInstrumentor().is_instrumented_by_opentelemetry, "a test leaked a patch"

    def start(**options: Any) -> PocketFlowInstrumentor:
        return instrument_pocketflow(tracer_provider=tracer_provider, **options)

    try:
        yield start
    finally:
        uninstrument_pocketflow()


@pytest.fixture
def spans(
    instrument: Callable[..., PocketFlowInstrumentor], span_exporter: InMemorySpanExporter
) -> Callable[[], list[ReadableSpan]]:
    """Instrument PocketFlow with default options and return a reader of the finished spans."""
    instrument()
    return lambda: list(span_exporter.get_finished_spans())


# Nodes


class Record(pocketflow.Node):
    """Node that appends its class name to ``shared["path"]``, so subclasses give steps ids."""

    def prep(self, shared: dict[str, Any]) -> list[str]:
        return shared.setdefault("path", [])

    def exec(self, prep_res: Any) -> str:
        return type(self).__name__

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> None:
        shared["path"].append(exec_res)


class Load(Record):
    pass


class Transform(Record):
    pass


class Save(Record):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> str:
        super().post(shared, prep_res, exec_res)
        return "saved"


class Approve(Record):
    pass


class Reject(Record):
    pass


class Route(pocketflow.Node):
    def prep(self, shared: dict[str, Any]) -> str:
        return shared["route"]

    def exec(self, route: str) -> str:
        return route

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> str:
        return exec_res


class Flaky(pocketflow.Node):
    """Node that raises ValueError in the first ``failures`` attempts, counted in ``shared``."""

    def __init__(self, failures: int, max_retries: int) -> None:
        super().__init__(max_retries=max_retries)
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


class WithFallback(Flaky):
    def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
        return f"fallback after {exc}"


class Squares(pocketflow.BatchNode):
    def prep(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    def exec(self, number: int) -> int:
        return number * number

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["squares"] = exec_res


class Count(pocketflow.AsyncNode):
    async def prep_async(self, shared: dict[str, Any]) -> int:
        return shared.get("count", 0)

    async def exec_async(self, count: int) -> int:
        await asyncio.sleep(0)
        return count + 1

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared["count"] = exec_res


class Triple(pocketflow.AsyncParallelBatchNode):
    async def prep_async(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    async def exec_async(self, number: int) -> int:
        with USER_TRACER.start_as_current_span("user work"):
            await asyncio.sleep(0.001)
            return number * 3

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: list[int]) -> None:
        shared["tripled"] = exec_res


class Halve(pocketflow.AsyncBatchNode):
    async def prep_async(self, shared: dict[str, Any]) -> list[int]:
        return shared["numbers"]

    async def exec_async(self, number: int) -> float:
        return number / 2

    async def post_async(
        self, shared: dict[str, Any], prep_res: Any, exec_res: list[float]
    ) -> None:
        shared["halved"] = exec_res


class ByKey(pocketflow.AsyncNode):
    async def exec_async(self, prep_res: Any) -> int:
        await asyncio.sleep(0.001)
        return self.params["key"] * 10

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: int) -> None:
        shared.setdefault("by_key", {})[self.params["key"]] = exec_res


class KeysParallelFlow(pocketflow.AsyncParallelBatchFlow):
    async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, int]]:
        return [{"key": key} for key in shared["keys"]]


class KeysFlow(pocketflow.BatchFlow):
    def prep(self, shared: dict[str, Any]) -> list[dict[str, int]]:
        return [{"key": key} for key in shared["keys"]]


class SeeKey(pocketflow.Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared.setdefault("keys_seen", []).append(self.params["key"])


class Override(pocketflow.Node):
    def _run(self, shared: dict[str, Any]) -> Any:
        shared["overrides"] = shared.get("overrides", 0) + 1
        return super()._run(shared)


# Scenarios


@dataclass
class Outcome:
    shared: dict[str, Any]
    result: Any
    error: tuple[type[BaseException], str] | None


def run_sync(flow: pocketflow.BaseNode, shared: dict[str, Any]) -> Outcome:
    try:
        result = flow.run(shared)
    except Exception as exc:  # noqa: BLE001 - the scenario reports the error
        return Outcome(shared, None, (type(exc), str(exc)))
    return Outcome(shared, result, None)


def run_async(flow: pocketflow.AsyncNode, shared: dict[str, Any]) -> Outcome:
    try:
        result = asyncio.run(flow.run_async(shared))
    except Exception as exc:  # noqa: BLE001 - the scenario reports the error
        return Outcome(shared, None, (type(exc), str(exc)))
    return Outcome(shared, result, None)


def sequential() -> Outcome:
    load = Load()
    load >> Transform() >> Save()
    return run_sync(pocketflow.Flow(start=load), {})


def branching() -> Outcome:
    route = Route()
    route - "approve" >> Approve()
    route - "reject" >> Reject()
    return run_sync(pocketflow.Flow(start=route), {"route": "approve"})


def nested() -> Outcome:
    inner_start = Transform()
    inner_start >> Reject()
    inner = pocketflow.Flow(start=inner_start)
    load = Load()
    load >> inner >> Approve()
    return run_sync(pocketflow.Flow(start=load), {})


def batch() -> Outcome:
    return run_sync(pocketflow.Flow(start=Squares()), {"numbers": [1, 2, 3, 4]})


def async_flow() -> Outcome:
    count = Count()
    count >> Triple() >> Halve()
    return run_async(pocketflow.AsyncFlow(start=count), {"numbers": [2, 4, 6]})


def async_parallel_batch_flow() -> Outcome:
    return run_async(KeysParallelFlow(start=ByKey()), {"keys": [1, 2, 3]})


def batch_flow() -> Outcome:
    return run_sync(KeysFlow(start=SeeKey()), {"keys": [7, 8]})


def retries() -> Outcome:
    return run_sync(pocketflow.Flow(start=Flaky(failures=2, max_retries=3)), {})


def fallback() -> Outcome:
    return run_sync(pocketflow.Flow(start=WithFallback(failures=9, max_retries=2)), {})


def failure() -> Outcome:
    load = Load()
    load >> Flaky(failures=9, max_retries=2) >> Save()
    return run_sync(pocketflow.Flow(start=load), {})


def run_override() -> Outcome:
    return run_sync(pocketflow.Flow(start=Override()), {})


SCENARIOS: dict[str, Callable[[], Outcome]] = {
    "sequential": sequential,
    "branching": branching,
    "nested": nested,
    "batch": batch,
    "async_flow": async_flow,
    "async_parallel_batch_flow": async_parallel_batch_flow,
    "batch_flow": batch_flow,
    "retries": retries,
    "fallback": fallback,
    "failure": failure,
    "run_override": run_override,
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_results_unchanged_by_instrumentation(
    name: str, instrument: Callable[..., PocketFlowInstrumentor]
) -> None:
    plain = SCENARIOS[name]()
    instrument(capture_snapshots=True)

    traced = SCENARIOS[name]()

    assert traced.shared == plain.shared
    assert traced.result == plain.result
    assert traced.error == plain.error


def test_failure_reraises_same_exception_object(spans: Callable[[], list[ReadableSpan]]) -> None:
    error = PermissionError("denied")

    class Denied(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            raise error

    with pytest.raises(PermissionError) as excinfo:
        pocketflow.Flow(start=Denied()).run({})

    assert excinfo.value is error
    node = one_node_span(spans(), "Denied")
    assert node.status.status_code is StatusCode.ERROR
    assert len(events_named(node, "node_failed")) == 1
    assert len(events_named(node, "exception")) == 1


def test_sequential_flow_span_tree(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = sequential()
    finished = spans()

    assert outcome.result == "saved"
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    workflow = workflows[0]
    assert workflow.name == "invoke_workflow Flow"
    assert workflow.parent is None
    assert workflow.attributes[attr.FRAMEWORK] == "pocketflow"
    nodes = children(finished, workflow)
    assert [span.attributes[attr.NODE_ID] for span in nodes] == ["Load", "Transform", "Save"]
    assert len(finished) == 4
    for span in nodes:
        assert span.attributes[attr.NODE_KIND] == "node"
        assert span.attributes[attr.FRAMEWORK] == "pocketflow"
        assert span.attributes[attr.PARENT_NODE_ID] == "Flow"
        assert span.name == f"node {span.attributes[attr.NODE_TYPE]}"
    assert nodes[0].attributes[attr.NEXT_NODE_ID] == "Transform"
    assert nodes[1].attributes[attr.NEXT_NODE_ID] == "Save"
    assert nodes[2].attributes[attr.ACTION] == "saved"
    assert attr.NEXT_NODE_ID not in nodes[2].attributes


def test_repeated_node_classes_get_numbered_ids(spans: Callable[[], list[ReadableSpan]]) -> None:
    first = Load()
    first >> Load() >> Load()

    pocketflow.Flow(start=first).run({})
    finished = spans()

    nodes = of_kind(finished, "node")
    assert [span.attributes[attr.NODE_ID] for span in nodes] == ["Load", "Load#2", "Load#3"]


def test_branching_traces_only_taken_branch(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = branching()
    finished = spans()

    assert outcome.shared["path"] == ["Approve"]
    route = one_node_span(finished, "Route")
    assert route.attributes[attr.ACTION] == "approve"
    assert route.attributes[attr.NEXT_NODE_ID] == "Approve"
    assert len(node_spans(finished, "Approve")) == 1
    assert node_spans(finished, "Reject") == []


def test_nested_flow_spans_nest(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = nested()
    finished = spans()

    assert outcome.shared["path"] == ["Load", "Transform", "Reject", "Approve"]
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    graphs = of_kind(finished, "graph")
    assert len(graphs) == 1
    inner = graphs[0]
    assert parent_id(inner) == span_id(workflows[0])
    assert inner.attributes[attr.NODE_ID] == "Flow#2"
    for node_id in ("Transform", "Reject"):
        span = one_node_span(finished, node_id)
        assert parent_id(span) == span_id(inner)
        assert span.attributes[attr.PARENT_NODE_ID] == "Flow#2"
    for node_id in ("Load", "Approve"):
        assert parent_id(one_node_span(finished, node_id)) == span_id(workflows[0])
    assert inner.attributes[attr.NEXT_NODE_ID] == "Approve"


def test_batch_node_item_spans(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = batch()
    finished = spans()

    assert outcome.shared["squares"] == [1, 4, 9, 16]
    node = one_node_span(finished, "Squares")
    items = of_kind(finished, "batch_item")
    assert [span.attributes[attr.BATCH_ITEM_INDEX] for span in items] == [0, 1, 2, 3]
    assert all(parent_id(item) == span_id(node) for item in items)
    assert node.attributes[attr.BATCH_SIZE] == 4
    assert node.attributes[attr.BATCH_SUCCEEDED] == 4
    assert node.attributes[attr.BATCH_FAILED] == 0


def test_async_flow_with_gathered_items(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = async_flow()
    finished = spans()

    assert outcome.error is None
    assert outcome.shared["count"] == 1
    assert outcome.shared["tripled"] == [6, 12, 18]
    assert outcome.shared["halved"] == [1.0, 2.0, 3.0]
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    assert workflows[0].name == "invoke_workflow AsyncFlow"
    triple = one_node_span(finished, "Triple")
    halve = one_node_span(finished, "Halve")
    for node in (one_node_span(finished, "Count"), triple, halve):
        assert parent_id(node) == span_id(workflows[0])
    triple_items = children(finished, triple)
    item_spans = [span for span in triple_items if span.name == "item Triple"]
    assert sorted(span.attributes[attr.BATCH_ITEM_INDEX] for span in item_spans) == [0, 1, 2]
    user_spans = [span for span in finished if span.name == "user work"]
    assert len(user_spans) == 3
    assert sorted(parent_id(span) for span in user_spans) == sorted(map(span_id, item_spans))
    halve_items = [span for span in children(finished, halve) if span.name == "item Halve"]
    assert [span.attributes[attr.BATCH_ITEM_INDEX] for span in halve_items] == [0, 1, 2]


def test_async_parallel_batch_flow_spans(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = async_parallel_batch_flow()
    finished = spans()

    assert outcome.shared["by_key"] == {1: 10, 2: 20, 3: 30}
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    assert workflows[0].name == "invoke_workflow KeysParallelFlow"
    by_key = node_spans(finished, "ByKey")
    assert len(by_key) == 3
    assert all(parent_id(span) == span_id(workflows[0]) for span in by_key)
    assert len(finished) == 4


def test_batch_flow_one_workflow_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = batch_flow()
    finished = spans()

    assert outcome.shared["keys_seen"] == [7, 8]
    workflows = of_kind(finished, "workflow")
    assert len(workflows) == 1
    seen = node_spans(finished, "SeeKey")
    assert len(seen) == 2
    assert all(parent_id(span) == span_id(workflows[0]) for span in seen)


def test_retry_events_count_attempts(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = retries()
    finished = spans()

    assert outcome.shared == {"attempts": 3, "result": "succeeded"}
    node = one_node_span(finished, "Flaky")
    retry_events = events_named(node, "retry_attempted")
    assert [event[attr.EVENT_ATTEMPT] for event in retry_events] == [1, 2]
    assert [event[attr.EVENT_MAX_ATTEMPTS] for event in retry_events] == [3, 3]
    assert node.attributes[attr.RETRY_COUNT] == 2
    assert events_named(node, "fallback_triggered") == []
    assert node.status.status_code is StatusCode.UNSET


def test_fallback_result_becomes_exec_result(spans: Callable[[], list[ReadableSpan]]) -> None:
    outcome = fallback()
    finished = spans()

    assert outcome.shared["result"] == "fallback after attempt 2 failed"
    node = one_node_span(finished, "WithFallback")
    fallbacks = events_named(node, "fallback_triggered")
    assert len(fallbacks) == 1
    assert fallbacks[0][attr.EVENT_ATTEMPT] == 2
    assert node.status.status_code is StatusCode.UNSET


def test_exhausted_retries_without_fallback_fail(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    outcome = failure()
    finished = spans()

    assert outcome.error == (ValueError, "attempt 2 failed")
    node = one_node_span(finished, "Flaky")
    assert events_named(node, "fallback_triggered") == []
    failed = events_named(node, "node_failed")
    assert len(failed) == 1
    assert failed[0][attr.ERROR_PHASE] == "exec"
    assert node.status.status_code is StatusCode.ERROR
    assert node_spans(finished, "Save") == []
    workflow = of_kind(finished, "workflow")[0]
    assert workflow.status.status_code is StatusCode.ERROR


def test_run_override_one_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    class LateOverride(Override):
        def _run(self, shared: dict[str, Any]) -> Any:
            shared["late"] = True
            return super()._run(shared)

    shared: dict[str, Any] = {}
    pocketflow.Flow(start=LateOverride()).run(shared)
    finished = spans()

    assert shared == {"late": True, "overrides": 1}
    assert len(node_spans(finished, "LateOverride")) == 1
    assert len(finished) == 2


def test_node_created_before_instrumenting(
    instrument: Callable[..., PocketFlowInstrumentor], span_exporter: InMemorySpanExporter
) -> None:
    flow = pocketflow.Flow(start=Override())
    instrument()

    flow.run({})
    finished = list(span_exporter.get_finished_spans())

    assert len(node_spans(finished, "Override")) == 1
    assert len(finished) == 2


def test_standalone_async_node_is_root(spans: Callable[[], list[ReadableSpan]]) -> None:
    shared: dict[str, Any] = {}

    asyncio.run(Count().run_async(shared))
    finished = spans()

    assert shared == {"count": 1}
    assert len(finished) == 1
    assert finished[0].parent is None
    assert finished[0].attributes[attr.NODE_KIND] == "node"
