# ruff: noqa: F811 - the fixtures imported from test_kaygraph_spans are parameters here
"""KayGraph runtime paths beyond plain graphs: composition, persistence, interactive loops,
user overrides of the framework's private methods, hooks, structure and transitions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kaygraph
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan

from kaygraph_otel import attributes as attr
from tests.span_tree import children, node_spans, of_kind, one_node_span
from tests.test_kaygraph_spans import instrument, spans  # noqa: F401 - fixtures


class Add(kaygraph.Node):
    def __init__(self, node_id: str, amount: int, action: str | None = None) -> None:
        super().__init__(node_id=node_id)
        self.amount = amount
        self.action = action

    def prep(self, shared: dict[str, Any]) -> int:
        return shared.get("value", 0)

    def exec(self, value: int) -> int:
        return value + self.amount

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str | None:
        shared["value"] = exec_res
        shared.setdefault("visited", []).append(self.node_id)
        return self.action


class Loop(kaygraph.Node):
    """Returns "again" until shared["value"] reaches the limit, then "done"."""

    def prep(self, shared: dict[str, Any]) -> int:
        return shared.get("value", 0)

    def exec(self, value: int) -> int:
        return value + 1

    def post(self, shared: dict[str, Any], prep_res: int, exec_res: int) -> str:
        shared["value"] = exec_res
        return "again" if exec_res < shared["limit"] else "done"


def chain(*nodes: kaygraph.BaseNode) -> kaygraph.BaseNode:
    for left, right in zip(nodes, nodes[1:], strict=False):
        left >> right
    return nodes[0]


def test_persistent_graph_traces_original_nodes(
    spans: Callable[[], list[ReadableSpan]], tmp_path: Path
) -> None:
    first, second = Add("first", 1), Add("second", 10)
    graph = kaygraph.PersistentGraph(chain(first, second), checkpoint_dir=tmp_path)
    shared: dict[str, Any] = {}
    result = graph.run(shared)

    assert result is shared
    assert shared == {"value": 11, "visited": ["first", "second"]}
    assert len(list(tmp_path.glob("*.json"))) == 2
    recorded = spans()
    (workflow,) = of_kind(recorded, "workflow")
    assert {s.attributes[attr.NODE_ID] for s in children(recorded, workflow)} == {"first", "second"}
    assert one_node_span(recorded, "first").attributes[attr.NEXT_NODE_ID] == "second"


def test_interactive_graph_one_workflow_per_iteration(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    class Counter(kaygraph.Node):
        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["count"] = shared.get("count", 0) + 1
            shared["_exit"] = shared["count"] >= 3

    graph = kaygraph.InteractiveGraph(start=Counter(node_id="counter"))
    shared = graph.run_interactive({}, max_iterations=10)

    assert shared["count"] == 3
    recorded = spans()
    workflows = of_kind(recorded, "workflow")
    assert len(workflows) == 3
    assert len({w.context.trace_id for w in workflows}) == 3
    assert len(node_spans(recorded, "counter")) == 3


def test_conditional_subgraph_runs_only_when_true(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    inner = kaygraph.Graph(start=Add("inner_add", 5))
    node = kaygraph.ConditionalSubGraphNode(inner, "enabled", node_id="maybe")
    outer = kaygraph.Graph(start=node)

    outer.run({"enabled": False, "value": 1})
    assert node_spans(spans(), "inner_add") == []

    shared = {"enabled": True, "value": 1}
    outer.run(shared)
    assert shared["value"] == 6
    recorded = spans()
    maybe = [s for s in node_spans(recorded, "maybe")][-1]
    (inner_graph,) = children(recorded, maybe)
    assert inner_graph.attributes[attr.NODE_KIND] == "graph"
    assert [s.attributes[attr.NODE_ID] for s in children(recorded, inner_graph)] == ["inner_add"]


def test_parallel_subgraphs_and_compose_nest_inner_graphs(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    left = kaygraph.Graph(start=Add("left_add", 1))
    right = kaygraph.Graph(start=Add("right_add", 2))
    fan_out = kaygraph.ParallelSubGraphNode([left, right], node_id="fan_out")
    composed = kaygraph.compose_graphs(
        kaygraph.Graph(start=Add("c1", 100)), kaygraph.Graph(start=Add("c2", 1000)), node_id="seq"
    )
    fan_out >> composed
    outer = kaygraph.Graph(start=fan_out)
    outer.run({"value": 0})

    recorded = spans()
    fan_span = one_node_span(recorded, "fan_out")
    inner_graphs = children(recorded, fan_span)
    assert [g.attributes[attr.NODE_KIND] for g in inner_graphs] == ["graph", "graph"]
    assert sorted(
        c.attributes[attr.NODE_ID] for g in inner_graphs for c in children(recorded, g)
    ) == [
        "left_add",
        "right_add",
    ]
    seq_span = one_node_span(recorded, "seq")
    (workflow,) = of_kind(recorded, "workflow")
    assert seq_span.parent.span_id == workflow.context.span_id
    for node_id in ("c1", "c2"):
        (node,) = node_spans(recorded, node_id)
        ancestors = set()
        current: ReadableSpan | None = node
        by_id = {s.context.span_id: s for s in recorded}
        while current is not None and current.parent is not None:
            ancestors.add(current.parent.span_id)
            current = by_id.get(current.parent.span_id)
        assert seq_span.context.span_id in ancestors


def test_user_orch_and_exec_overrides_traced(spans: Callable[[], list[ReadableSpan]]) -> None:
    calls: list[str] = []

    class CountingGraph(kaygraph.Graph):
        def _orch(self, shared: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
            calls.append("orch")
            return super()._orch(shared, params)

    class DoublingNode(Add):
        def _exec(self, prep_res: int) -> int:
            calls.append("exec")
            return super()._exec(prep_res) * 2

    graph = CountingGraph(start=chain(DoublingNode("double", 1), Add("plus", 1)))
    shared: dict[str, Any] = {"value": 1}
    graph.run(shared)

    assert calls == ["orch", "exec"]
    assert shared["value"] == 5
    recorded = spans()
    double = one_node_span(recorded, "double")
    assert [e.name for e in double.events].count("node_executing") == 1
    assert len(of_kind(recorded, "workflow")) == 1


def test_hooks_run_inside_node_span(spans: Callable[[], list[ReadableSpan]]) -> None:
    seen: dict[str, int] = {}

    class Hooked(kaygraph.Node):
        def before_prep(self, shared: dict[str, Any]) -> None:
            seen["before_prep"] = trace.get_current_span().get_span_context().span_id

        def after_exec(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            seen["after_exec"] = trace.get_current_span().get_span_context().span_id

    kaygraph.Graph(start=Hooked(node_id="hooked")).run({})
    span = one_node_span(spans(), "hooked")
    assert seen == {"before_prep": span.context.span_id, "after_exec": span.context.span_id}


def test_cycle_structure_and_transition_counts(spans: Callable[[], list[ReadableSpan]]) -> None:
    loop = Loop(node_id="loop")
    finish = Add("finish", 0)
    loop - "again" >> loop
    loop - "done" >> finish
    shared: dict[str, Any] = {"limit": 4}
    kaygraph.Graph(start=loop).run(shared)

    assert shared["value"] == 4
    recorded = spans()
    (workflow,) = of_kind(recorded, "workflow")
    structure = json.loads(workflow.attributes[attr.GRAPH_STRUCTURE])
    assert [n["id"] for n in structure["nodes"]] == ["loop", "finish"]
    assert {(e["source"], e["action"], e["target"]) for e in structure["edges"]} == {
        ("loop", "again", "loop"),
        ("loop", "done", "finish"),
    }
    transitions = json.loads(workflow.attributes[attr.TRANSITIONS])
    counts = {(t["from"], t["action"], t["to"]): t["count"] for t in transitions}
    assert counts == {("loop", "again", "loop"): 3, ("loop", "done", "finish"): 1}
    loop_spans = node_spans(recorded, "loop")
    assert len(loop_spans) == 4
    assert [s.attributes.get(attr.ACTION) for s in loop_spans] == [
        "again",
        "again",
        "again",
        "done",
    ]


def test_deep_chain_walked_without_recursion_limit(
    instrument: Callable[..., Any], span_exporter: Any
) -> None:
    instrument(max_graph_nodes=3000)
    nodes = [Add(f"n{i}", 1) for i in range(2500)]
    graph = kaygraph.Graph(start=chain(*nodes))
    shared: dict[str, Any] = {}
    graph.run(shared)

    assert shared["value"] == 2500
    (workflow,) = of_kind(list(span_exporter.get_finished_spans()), "workflow")
    structure = json.loads(workflow.attributes[attr.GRAPH_STRUCTURE])
    assert len(structure["nodes"]) == 2500
    assert len(structure["edges"]) == 2499
    assert "truncated" not in structure


def test_structure_capped_by_max_graph_nodes(
    instrument: Callable[..., Any], span_exporter: Any
) -> None:
    instrument(max_graph_nodes=10)
    graph = kaygraph.Graph(start=chain(*[Add(f"n{i}", 1) for i in range(50)]))
    graph.run({})
    (workflow,) = of_kind(list(span_exporter.get_finished_spans()), "workflow")
    structure = json.loads(workflow.attributes[attr.GRAPH_STRUCTURE])
    assert len(structure["nodes"]) == 10
    assert structure["truncated"] is True
    assert all(e["target"] in {n["id"] for n in structure["nodes"]} for e in structure["edges"])


def test_workflow_id_stable_per_definition(spans: Callable[[], list[ReadableSpan]]) -> None:
    def build(second_amount: int, action: str | None = None) -> kaygraph.Graph:
        return kaygraph.Graph(start=chain(Add("a", 1, action), Add("b", second_amount)))

    build(1).run({})
    build(2).run({})
    build(1, "default").run({})
    kaygraph.Graph(start=chain(Add("a", 1), Add("c", 1))).run({})
    workflow_ids = [w.attributes[attr.WORKFLOW_ID] for w in of_kind(spans(), "workflow")]
    assert workflow_ids[0] == workflow_ids[1] == workflow_ids[2]
    assert workflow_ids[3] != workflow_ids[0]


def test_hostile_node_ids_come_through_intact(spans: Callable[[], list[ReadableSpan]]) -> None:
    hostile = ["quote \" and ' here", "line\nbreak", "<script>alert(1)</script>", "узел-節点-🙂"]
    graph = kaygraph.Graph(start=chain(*[Add(name, 1) for name in hostile]))
    graph.run({})
    recorded = spans()
    for name in hostile:
        assert one_node_span(recorded, name).attributes[attr.NODE_ID] == name
    (workflow,) = of_kind(recorded, "workflow")
    structure = json.loads(workflow.attributes[attr.GRAPH_STRUCTURE])
    assert [n["id"] for n in structure["nodes"]] == hostile


@pytest.mark.parametrize("max_retries", [200])
def test_many_retries_stay_under_span_event_limit(
    spans: Callable[[], list[ReadableSpan]], max_retries: int
) -> None:
    class AlwaysFails(kaygraph.Node):
        def exec(self, prep_res: Any) -> Any:
            raise RuntimeError("still broken")

        def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
            return "gave up"

    kaygraph.Graph(start=AlwaysFails(max_retries=max_retries, node_id="stubborn")).run({})
    span = one_node_span(spans(), "stubborn")
    names = [e.name for e in span.events]
    assert names[0] == "node_started"
    assert names.count("retry_attempted") == 16
    assert span.attributes[attr.RETRY_COUNT] == max_retries - 1
    assert span.attributes[attr.EVENTS_DROPPED] == max_retries - 1 - 16
    assert span.dropped_events == 0
    assert names[-1] == "node_completed"


def test_structure_follows_graph_changes_between_runs(
    spans: Callable[[], list[ReadableSpan]],
) -> None:
    first, second = Add("first", 1), Add("second", 1)
    graph = kaygraph.Graph(start=chain(first, second))
    graph.run({})
    graph.run({})
    third = Add("third", 1)
    second >> third
    graph.run({})

    structures = [
        json.loads(w.attributes[attr.GRAPH_STRUCTURE]) for w in of_kind(spans(), "workflow")
    ]
    assert [[n["id"] for n in s["nodes"]] for s in structures] == [
        ["first", "second"],
        ["first", "second"],
        ["first", "second", "third"],
    ]
    assert one_node_span(spans(), "third").attributes[attr.PARENT_NODE_ID] == "Graph"
