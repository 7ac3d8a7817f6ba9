"""Checks that the kaygraph test fake behaves like KayGraph 0.3.1's runtime core.

These tests check the fake only. When the real kaygraph is installed, the fake is
not on the path and the module is skipped, because some details here (context key
names, statistic names, checkpoint file names) are the fake's own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import kaygraph
import pytest

FAKE_DIR = Path(__file__).parent / "fake_kaygraph"
if not Path(kaygraph.__file__).resolve().is_relative_to(FAKE_DIR.resolve()):
    pytest.skip(
        "the real kaygraph is installed; these tests cover the fake", allow_module_level=True
    )

from kaygraph import (  # noqa: E402
    AsyncBatchGraph,
    AsyncGraph,
    AsyncInteractiveGraph,
    AsyncNode,
    AsyncParallelBatchGraph,
    AsyncParallelBatchNode,
    BaseNode,
    BatchGraph,
    BatchNode,
    ConditionalSubGraphNode,
    Config,
    Graph,
    InteractiveGraph,
    MetricsNode,
    Node,
    ParallelBatchNode,
    ParallelSubGraphNode,
    PersistentGraph,
    SubGraphNode,
    ValidatedNode,
    compose_graphs,
)


class RecordingNode(Node):
    """Node that appends each lifecycle call to ``shared["calls"]``."""

    def before_prep(self, shared: dict[str, Any]) -> None:
        shared["calls"].append("before_prep")

    def prep(self, shared: dict[str, Any]) -> str:
        shared["calls"].append("prep")
        return "prep-result"

    def exec(self, prep_res: Any) -> str:
        self.calls_ref.append(("exec", prep_res))
        return "exec-result"

    def after_exec(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["calls"].append(("after_exec", prep_res, exec_res))

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
        shared["calls"].append(("post", prep_res, exec_res))
        return "done"


class AppendNode(Node):
    """Node that appends its node_id to ``shared["path"]`` and returns a fixed action."""

    def __init__(self, node_id: str, action: str | None = None, **kwargs: Any) -> None:
        super().__init__(node_id=node_id, **kwargs)
        self.action = action

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str | None:
        shared.setdefault("path", []).append(self.node_id)
        return self.action


# BaseNode basics


def test_version_is_0_3_1() -> None:
    assert kaygraph.__version__ == "0.3.1"


def test_default_node_id_uses_class_and_id() -> None:
    node = Node()
    other = Node()

    assert node.node_id == f"Node_{id(node)}"
    assert node.node_id != other.node_id


def test_graph_default_id_uses_class_name() -> None:
    graph = Graph()

    assert graph.node_id == f"Graph_{id(graph)}"


def test_node_defaults() -> None:
    node = BaseNode(node_id="n")

    assert node.params == {}
    assert node.successors == {}
    assert isinstance(node.config, Config)
    assert not node.config
    assert node.logger.name == "BaseNode"


def test_set_params_rejects_non_dict() -> None:
    with pytest.raises(TypeError, match="params must be a dict"):
        Node().set_params([("a", 1)])  # type: ignore[arg-type]


def test_set_params_stores_shallow_copy() -> None:
    node = Node()
    nested = [1]
    params = {"a": nested}

    node.set_params(params)
    params["b"] = 2

    assert node.params == {"a": [1]}
    assert node.params is not params
    assert node.params["a"] is nested


def test_context_get_and_set() -> None:
    node = Node()
    node.set_context("k", 1)

    assert node.get_context("k") == 1
    assert node.get_context("missing") is None


def test_rshift_and_action_transition() -> None:
    a, b, c = Node(), Node(), Node()

    returned = a >> b
    a - "approve" >> c

    assert returned is b
    assert a.successors == {"default": b, "approve": c}


def test_action_transition_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="action must be a str"):
        Node() - 1  # type: ignore[operator]


def test_next_warns_on_overwrite() -> None:
    a = Node()
    a >> Node()

    with pytest.warns(UserWarning, match="overwriting"):
        a >> Node()


def test_run_warns_when_successors_exist() -> None:
    a = Node()
    a >> Node()

    with pytest.warns(UserWarning, match="successors"):
        a.run({})


def test_context_manager_calls_resource_hooks() -> None:
    events: list[str] = []

    class ResourceNode(Node):
        def setup_resources(self) -> None:
            events.append("setup")

        def cleanup_resources(self) -> None:
            events.append("cleanup")

    with ResourceNode() as node:
        events.append("body")

    assert isinstance(node, ResourceNode)
    assert events == ["setup", "body", "cleanup"]


# BaseNode._run


def test_run_calls_steps_in_order() -> None:
    node = RecordingNode(node_id="rec")
    calls: list[Any] = []
    node.calls_ref = calls
    shared: dict[str, Any] = {"calls": calls}

    action = node._run(shared)

    assert action == "done"
    assert calls == [
        "before_prep",
        "prep",
        ("exec", "prep-result"),
        ("after_exec", "prep-result", "exec-result"),
        ("post", "prep-result", "exec-result"),
    ]


def test_run_stores_timing_in_context() -> None:
    node = Node()

    node._run({})

    assert isinstance(node.get_context("start_time"), float)
    assert node.get_context("execution_time") >= 0


def test_run_logs_start_and_completion(caplog: pytest.LogCaptureFixture) -> None:
    node = Node(node_id="logged")

    with caplog.at_level("INFO", logger="Node"):
        node._run({})

    messages = [record.getMessage() for record in caplog.records]
    assert any("logged starting" in message for message in messages)
    assert any("logged completed" in message for message in messages)


def test_on_error_true_swallows_error() -> None:
    seen: list[Exception] = []

    class SwallowingNode(Node):
        def exec(self, prep_res: Any) -> None:
            raise ValueError("boom")

        def after_exec(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            seen.append(RuntimeError("after_exec must not run"))

        def on_error(self, shared: dict[str, Any], error: Exception) -> bool:
            seen.append(error)
            return True

    action = SwallowingNode()._run({})

    assert action is None
    assert len(seen) == 1
    assert isinstance(seen[0], ValueError)


def test_on_error_false_reraises() -> None:
    class FailingNode(Node):
        def prep(self, shared: dict[str, Any]) -> None:
            raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        FailingNode()._run({})


# Node retries and fallback


class FlakyNode(Node):
    """Node whose exec fails ``failures`` times, recording ``cur_retry`` on each try."""

    def __init__(self, failures: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failures = failures
        self.attempts: list[int] = []

    def exec(self, prep_res: Any) -> str:
        self.attempts.append(self.cur_retry)
        if len(self.attempts) <= self.failures:
            raise ConnectionError(f"attempt {self.cur_retry} failed")
        return "ok"

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        shared["exec_res"] = exec_res
        return None


def test_retry_succeeds_on_third_attempt() -> None:
    node = FlakyNode(failures=2, max_retries=3)
    shared: dict[str, Any] = {}

    node._run(shared)

    assert node.attempts == [0, 1, 2]
    assert node.cur_retry == 2
    assert shared["exec_res"] == "ok"


def test_fallback_result_becomes_exec_res() -> None:
    class FallbackNode(FlakyNode):
        def exec_fallback(self, prep_res: Any, exc: Exception) -> str:
            return f"fallback after {exc}"

    node = FallbackNode(failures=5, max_retries=2)
    shared: dict[str, Any] = {}

    node._run(shared)

    assert node.attempts == [0, 1]
    assert shared["exec_res"] == "fallback after attempt 1 failed"


def test_default_fallback_reraises_last_error() -> None:
    node = FlakyNode(failures=5, max_retries=2)

    with pytest.raises(ConnectionError, match="attempt 1 failed"):
        node._run({})


def test_validated_node_wraps_retrying_exec() -> None:
    order: list[str] = []

    class Checked(ValidatedNode):
        def validate_input(self, prep_res: Any) -> Any:
            order.append("validate_input")
            return prep_res

        def exec(self, prep_res: Any) -> int:
            order.append(f"exec {self.cur_retry}")
            if self.cur_retry == 0:
                raise ValueError("first try fails")
            return 1

        def validate_output(self, exec_res: Any) -> Any:
            order.append("validate_output")
            return exec_res

    Checked(max_retries=2)._run({})

    assert order == ["validate_input", "exec 0", "exec 1", "validate_output"]


# Batches


def test_batch_node_gives_each_item_retries() -> None:
    class Doubler(BatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return [1, 2, 3]

        def exec(self, item: int) -> int:
            return item * 2

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    shared: dict[str, Any] = {}
    Doubler()._run(shared)

    assert shared["out"] == [2, 4, 6]


def test_batch_node_treats_none_as_no_items() -> None:
    assert BatchNode()._exec(None) == []


def test_parallel_batch_node_uses_worker_threads() -> None:
    caller = threading.get_ident()
    thread_ids: list[int] = []

    class Threads(ParallelBatchNode):
        def prep(self, shared: dict[str, Any]) -> list[int]:
            return list(range(8))

        def exec(self, item: int) -> int:
            thread_ids.append(threading.get_ident())
            return item * 10

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["out"] = exec_res

    node = Threads(4)
    shared: dict[str, Any] = {}
    node._run(shared)

    assert node.max_workers == 4
    assert shared["out"] == [item * 10 for item in range(8)]
    assert len(thread_ids) == 8
    assert caller not in thread_ids


# Graph orchestration


def test_graph_follows_actions_and_returns_last() -> None:
    first = AppendNode("first", action="left")
    left = AppendNode("left", action="end")
    right = AppendNode("right")
    first - "left" >> left
    first - "right" >> right
    shared: dict[str, Any] = {}

    action = Graph(start=first).run(shared)

    assert shared["path"] == ["first", "left"]
    assert action == "end"


def test_graph_warns_on_unknown_action() -> None:
    first = AppendNode("first", action="nowhere")
    first >> AppendNode("second")
    shared: dict[str, Any] = {}

    with pytest.warns(UserWarning, match="no successor for action 'nowhere'"):
        Graph(start=first).run(shared)

    assert shared["path"] == ["first"]


def test_orch_runs_shallow_copies() -> None:
    seen: dict[str, Any] = {}

    class MarkingNode(Node):
        def exec(self, prep_res: Any) -> None:
            self.visited = True
            seen["self"] = self
            seen["node_id"] = self.node_id
            seen["successors"] = self.successors

    node = MarkingNode(node_id="marker")
    Graph(start=node).run({})

    assert seen["self"] is not node
    assert seen["self"].visited is True
    assert not hasattr(node, "visited")
    assert seen["node_id"] == "marker"
    assert seen["successors"] is node.successors


def test_graph_passes_config_to_nodes_without_one() -> None:
    seen: dict[str, Config] = {}

    class ConfigNode(Node):
        def exec(self, prep_res: Any) -> None:
            seen[self.node_id] = self.config

    bare = ConfigNode(node_id="bare")
    own = ConfigNode(node_id="own", config={"model": "own"})
    bare >> own
    graph = Graph(start=bare, config={"model": "graph"})
    graph.run({})

    assert seen["bare"] is graph.config
    assert seen["own"] == {"model": "own"}
    assert not bare.config


def test_graph_params_are_copied_to_nodes() -> None:
    seen: list[dict[str, Any]] = []

    class ParamNode(Node):
        def exec(self, prep_res: Any) -> None:
            seen.append(self.params)

    graph = Graph(start=ParamNode())
    graph.set_params({"user": "u1"})
    graph.run({})

    assert seen == [{"user": "u1"}]
    assert seen[0] is not graph.params


def test_nested_graph_runs_inner_chain() -> None:
    inner = Graph(start=AppendNode("inner"))
    outer_start = AppendNode("outer")
    outer_start >> inner
    shared: dict[str, Any] = {}

    Graph(start=outer_start).run(shared)

    assert shared["path"] == ["outer", "inner"]


def test_batch_graph_merges_item_params() -> None:
    seen: list[dict[str, Any]] = []

    class ParamNode(Node):
        def exec(self, prep_res: Any) -> None:
            seen.append(self.params)

    class Items(BatchGraph):
        def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"item": 1}, {"item": 2}]

    graph = Items(start=ParamNode())
    graph.set_params({"run": "r"})
    graph.run({})

    assert seen == [{"run": "r", "item": 1}, {"run": "r", "item": 2}]


# Node kinds in the core module


def test_metrics_node_counts_runs() -> None:
    class Sometimes(MetricsNode):
        def exec(self, prep_res: Any) -> str:
            if self.params.get("fail"):
                raise ValueError("asked to fail")
            return "ok"

    node = Sometimes(True, max_retries=2)
    node._run({})
    node._run({})
    node.set_params({"fail": True})
    with pytest.raises(ValueError):
        node._run({})
    stats = node.get_stats()

    assert stats["total_executions"] == 3
    assert stats["success_count"] == 2
    assert stats["error_count"] == 1
    assert node.metrics["retry_counts"] == [0, 0, 1]
    assert len(node.metrics["execution_times"]) == 3


def test_metrics_node_off_collects_nothing() -> None:
    node = MetricsNode(False)
    node._run({})

    assert node.get_stats()["total_executions"] == 0


# Async


def test_async_node_sync_run_raises() -> None:
    with pytest.raises(RuntimeError, match="run_async"):
        AsyncNode()._run({})


def test_async_retry_then_fallback() -> None:
    class AsyncFlaky(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            raise ConnectionError(f"try {self.cur_retry}")

        async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> str:
            return f"fallback {exc}"

        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared["exec_res"] = exec_res

    shared: dict[str, Any] = {}
    asyncio.run(AsyncFlaky(max_retries=3).run_async(shared))

    assert shared["exec_res"] == "fallback try 2"


def test_async_graph_runs_sync_and_async_steps() -> None:
    class AsyncAppend(AsyncNode):
        async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
            shared.setdefault("path", []).append(self.node_id)

    first = AsyncAppend(node_id="async")
    first >> AppendNode("sync")
    shared: dict[str, Any] = {}

    asyncio.run(AsyncGraph(start=first).run_async(shared))

    assert shared["path"] == ["async", "sync"]


def test_async_parallel_batch_node_gathers() -> None:
    class Gathered(AsyncParallelBatchNode):
        async def exec_async(self, item: int) -> int:
            await asyncio.sleep(0)
            return item + 1

    results = asyncio.run(Gathered()._exec([1, 2, 3]))

    assert results == [2, 3, 4]


def test_async_batch_graph_runs_items_in_turn() -> None:
    order: list[str] = []

    class Step(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            order.append(f"start {self.params['item']}")
            await asyncio.sleep(0)
            order.append(f"end {self.params['item']}")

    class Items(AsyncBatchGraph):
        async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"item": 1}, {"item": 2}]

    asyncio.run(Items(start=Step()).run_async({}))

    assert order == ["start 1", "end 1", "start 2", "end 2"]


def test_async_parallel_batch_graph_is_concurrent() -> None:
    item_count = 4

    class Barrier(AsyncNode):
        async def exec_async(self, prep_res: Any) -> None:
            self.shared_ids.append(id(self.shared))
            self.arrived.append(self.params["item"])
            # Each orchestration waits here until all have arrived, which only
            # happens when they run concurrently.
            while len(self.arrived) < item_count:
                await asyncio.sleep(0.01)

        async def prep_async(self, shared: dict[str, Any]) -> None:
            self.shared = shared

    class Items(AsyncParallelBatchGraph):
        async def prep_async(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
            return [{"item": index} for index in range(item_count)]

    node = Barrier()
    node.arrived = []
    node.shared_ids = []
    shared: dict[str, Any] = {}

    async def run_bounded() -> None:
        await asyncio.wait_for(Items(start=node).run_async(shared), timeout=10)

    asyncio.run(run_bounded())

    assert sorted(node.arrived) == list(range(item_count))
    assert set(node.shared_ids) == {id(shared)}


# Composition


class SetKeysNode(Node):
    """Node that writes ``values`` into the shared dict and records what it saw."""

    def __init__(self, values: dict[str, Any], seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self.values = values
        self.seen = seen

    def prep(self, shared: dict[str, Any]) -> None:
        self.seen.append(dict(shared))
        shared.update(self.values)


def test_subgraph_node_copies_and_merges_keys() -> None:
    seen: list[dict[str, Any]] = []
    inner = Graph(start=SetKeysNode({"answer": 42, "scratch": "x"}, seen))
    node = SubGraphNode(inner, input_keys=["question"], output_keys=["answer"])
    shared = {"question": "q", "secret": "s"}

    node._run(shared)

    assert node.node_id == f"subgraph_{id(inner)}"
    assert seen == [{"question": "q"}]
    assert shared == {"question": "q", "secret": "s", "answer": 42}


def test_subgraph_node_deep_copies_without_keys() -> None:
    class AppendItem(Node):
        def prep(self, shared: dict[str, Any]) -> None:
            shared["items"].append(2)

    items = [1]
    shared: dict[str, Any] = {"items": items}

    SubGraphNode(Graph(start=AppendItem()))._run(shared)

    assert items == [1]
    assert shared["items"] == [1, 2]


def test_conditional_subgraph_skips_when_false() -> None:
    seen: list[dict[str, Any]] = []
    node = ConditionalSubGraphNode(Graph(start=SetKeysNode({"ran": True}, seen)), "go")

    skipped: dict[str, Any] = {"go": False}
    node._run(skipped)
    ran: dict[str, Any] = {"go": True}
    node._run(ran)

    assert "ran" not in skipped
    assert ran["ran"] is True
    assert len(seen) == 1


def test_parallel_subgraph_runs_each_on_own_copy() -> None:
    seen: list[dict[str, Any]] = []
    graphs = [
        Graph(start=SetKeysNode({"a": 1}, seen)),
        Graph(start=SetKeysNode({"b": 2}, seen)),
    ]
    node = ParallelSubGraphNode(graphs)
    shared: dict[str, Any] = {"base": 0}

    node._run(shared)

    assert node.node_id == "parallel_subgraphs"
    assert seen == [{"base": 0}, {"base": 0}]
    assert shared == {"base": 0, "a": 1, "b": 2}


def test_compose_graphs_runs_in_turn() -> None:
    seen: list[dict[str, Any]] = []
    first = Graph(start=SetKeysNode({"a": 1}, seen))
    second = Graph(start=SetKeysNode({"b": 2}, seen))
    node = compose_graphs(first, second, node_id="composed")
    shared: dict[str, Any] = {}

    node._run(shared)

    assert isinstance(node, SubGraphNode)
    assert node.node_id == "composed"
    assert seen == [{}, {"a": 1}]
    assert shared == {"a": 1, "b": 2}


# Persistence and interactive graphs


def test_persistent_graph_runs_originals(tmp_path: Path) -> None:
    ran: list[BaseNode] = []

    class Original(AppendNode):
        def exec(self, prep_res: Any) -> None:
            ran.append(self)

    first = Original("first")
    second = Original("second")
    first >> second
    graph = PersistentGraph(first, checkpoint_dir=tmp_path)
    shared: dict[str, Any] = {}

    result = graph.run(shared)

    assert result is shared
    assert ran[0] is first
    assert ran[1] is second
    checkpoints = sorted(tmp_path.glob("*.json"))
    assert len(checkpoints) == 2
    assert json.loads(checkpoints[1].read_text()) == {"path": ["first"]}


def test_interactive_graph_loops_until_exit() -> None:
    class Counter(Node):
        def prep(self, shared: dict[str, Any]) -> None:
            shared["count"] = shared.get("count", 0) + 1
            shared["_seen_transient"] = "_temp" in shared
            shared["_temp"] = True
            if shared["count"] == 3:
                shared["_exit"] = True

    shared = InteractiveGraph(start=Counter()).run_interactive({})

    assert shared["count"] == 3
    assert shared["_seen_transient"] is False
    assert shared["_exit"] is True


def test_interactive_graph_stops_at_limit() -> None:
    class Counter(Node):
        def prep(self, shared: dict[str, Any]) -> None:
            shared["count"] = shared.get("count", 0) + 1

    shared = InteractiveGraph(start=Counter()).run_interactive(max_iterations=2)

    assert shared == {"count": 2}


def test_async_interactive_graph_loops() -> None:
    class Counter(AsyncNode):
        async def prep_async(self, shared: dict[str, Any]) -> None:
            shared["count"] = shared.get("count", 0) + 1
            if shared["count"] == 2:
                shared["_exit"] = True

    graph = AsyncInteractiveGraph(start=Counter())
    shared = asyncio.run(graph.run_interactive_async())

    assert shared["count"] == 2


@pytest.mark.parametrize(
    "name",
    ["load_workflow", "validate_workflow", "yaml_to_graph", "graph_to_yaml", "export_workflow"],
)
def test_yaml_functions_raise(name: str) -> None:
    with pytest.raises(NotImplementedError, match="does not implement YAML loading"):
        getattr(kaygraph, name)("workflow.yaml")
