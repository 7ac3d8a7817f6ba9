"""Test fake of KayGraph 0.3.1's runtime core.

This package is NOT KayGraph. It is a small test double written from a prose
description of KayGraph 0.3.1's public classes, private lifecycle methods and call
order, without reading KayGraph's or PocketFlow's source. ``tests/conftest.py`` puts
it on ``sys.path`` only when the real ``kaygraph`` is not installed, so the
instrumentation can be tested on machines that cannot install KayGraph.

The fake follows the described behaviour: node ids, params, successors, hooks, the
order of steps in ``_run``, the retry loop in ``_exec``, shallow copies in ``_orch``,
thread and ``asyncio.gather`` concurrency, and the composition, persistence and
interactive submodules. Details that the description leaves open are the fake's own
choice and are marked as such where they occur (for example the context keys for
timing and the names of the ``MetricsNode`` statistics). The YAML loader functions
exist but raise ``NotImplementedError``, because the fake does not implement YAML
loading.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__version__ = "0.3.1"

__all__ = [
    "AsyncBatchGraph",
    "AsyncBatchNode",
    "AsyncGraph",
    "AsyncInteractiveGraph",
    "AsyncNode",
    "AsyncParallelBatchGraph",
    "AsyncParallelBatchNode",
    "BaseNode",
    "BatchGraph",
    "BatchNode",
    "ConditionalSubGraphNode",
    "Config",
    "Graph",
    "InteractiveGraph",
    "InteractiveNode",
    "MetricsNode",
    "Node",
    "ParallelBatchNode",
    "ParallelSubGraphNode",
    "PersistentGraph",
    "SubGraphNode",
    "UserInputNode",
    "ValidatedNode",
    "compose_graphs",
    "export_workflow",
    "graph_to_yaml",
    "load_workflow",
    "validate_workflow",
    "yaml_to_graph",
]

# Context keys that BaseNode._run writes. KayGraph's own key names are not known.
START_TIME_KEY = "start_time"
EXECUTION_TIME_KEY = "execution_time"


class Config(dict):
    """Node or graph configuration.

    NOTE: only "empty by default" and "a graph passes its config to nodes whose config
    is empty" are known about KayGraph's Config, so the fake makes it a plain dict.
    """


class BaseNode:
    """Node with params, successors, hooks and the sync ``_run`` lifecycle."""

    def __init__(self, node_id: str | None = None, config: Config | dict | None = None) -> None:
        self.node_id: str = node_id or f"{type(self).__name__}_{id(self)}"
        self.params: dict[str, Any] = {}
        self.successors: dict[str, BaseNode] = {}
        self.config: Config = config if isinstance(config, Config) else Config(config or {})
        self.logger = logging.getLogger(type(self).__name__)
        # copy.copy shares this dict between a node and its copies made by Graph._orch.
        self._context: dict[str, Any] = {}

    def get_context(self, key: str, default: Any = None) -> Any:
        return self._context.get(key, default)

    def set_context(self, key: str, value: Any) -> None:
        self._context[key] = value

    def set_params(self, params: dict[str, Any]) -> None:
        if not isinstance(params, dict):
            raise TypeError(
                f"params must be a dict, got {type(params).__name__}: {params!r}. "
                "Pass a dict of parameter names to values."
            )
        self.params = dict(params)

    # Hooks, no-ops by default.
    def before_prep(self, shared: dict[str, Any]) -> None:
        pass

    def after_exec(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        pass

    def on_error(self, shared: dict[str, Any], error: Exception) -> bool:
        """Handle an error raised in ``_run`` and return True to swallow it."""
        return False

    def setup_resources(self) -> None:
        pass

    def cleanup_resources(self) -> None:
        pass

    def __enter__(self) -> BaseNode:
        self.setup_resources()
        return self

    def __exit__(self, *exc_info: object) -> bool:
        self.cleanup_resources()
        return False

    # Graph wiring.
    def next(self, node: BaseNode, action: str = "default") -> BaseNode:
        """Store ``node`` as the successor for ``action`` and return ``node``."""
        if action in self.successors:
            warnings.warn(
                f"Node {self.node_id}: overwriting the successor for action {action!r}",
                stacklevel=2,
            )
        self.successors[action] = node
        return node

    def __rshift__(self, other: BaseNode) -> BaseNode:
        return self.next(other)

    def __sub__(self, action: str) -> _ActionTransition:
        if not isinstance(action, str):
            raise TypeError(
                f"action must be a str, got {type(action).__name__}: {action!r}. "
                'Write node - "action" >> other.'
            )
        return _ActionTransition(self, action)

    # User methods.
    def prep(self, shared: dict[str, Any]) -> Any:
        return None

    def exec(self, prep_res: Any) -> Any:
        return None

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        return None

    # Lifecycle.
    def _exec(self, prep_res: Any) -> Any:
        return self.exec(prep_res)

    def _run(self, shared: dict[str, Any]) -> Any:
        self.logger.info("Node %s starting", self.node_id)
        start = time.time()
        self.set_context(START_TIME_KEY, start)
        try:
            self.before_prep(shared)
            prep_res = self.prep(shared)
            exec_res = self._exec(prep_res)
            self.after_exec(shared, prep_res, exec_res)
            action = self.post(shared, prep_res, exec_res)
            self.set_context(EXECUTION_TIME_KEY, time.time() - start)
            self.logger.info("Node %s completed, action %r", self.node_id, action)
            return action
        except Exception as error:
            self.logger.error("Node %s failed: %r", self.node_id, error)
            if self.on_error(shared, error):
                return None
            raise

    def run(self, shared: dict[str, Any]) -> Any:
        if self.successors:
            warnings.warn(
                f"Node {self.node_id} has successors that run() does not run. "
                "Put the node in a Graph to follow them.",
                stacklevel=2,
            )
        return self._run(shared)


class _ActionTransition:
    """Result of ``node - "action"``, waiting for ``>> successor``."""

    def __init__(self, source: BaseNode, action: str) -> None:
        self.source = source
        self.action = action

    def __rshift__(self, target: BaseNode) -> BaseNode:
        return self.source.next(target, self.action)


class Node(BaseNode):
    """Node whose ``_exec`` retries ``exec`` and falls back to ``exec_fallback``."""

    def __init__(
        self,
        max_retries: int = 1,
        wait: float = 0,
        node_id: str | None = None,
        config: Config | dict | None = None,
    ) -> None:
        super().__init__(node_id=node_id, config=config)
        self.max_retries = max_retries
        self.wait = wait
        self.cur_retry = 0

    def exec_fallback(self, prep_res: Any, exc: Exception) -> Any:
        raise exc

    def _exec(self, prep_res: Any) -> Any:
        for attempt in range(self.max_retries):
            self.cur_retry = attempt
            try:
                return self.exec(prep_res)
            except Exception as exc:
                if self.cur_retry == self.max_retries - 1:
                    return self.exec_fallback(prep_res, exc)
                if self.wait > 0:
                    time.sleep(self.wait)
        return None


class BatchNode(Node):
    """Node whose ``prep`` returns items, each with its own retries and fallback."""

    def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        return [Node._exec(self, item) for item in (items or [])]


class ParallelBatchNode(BatchNode):
    """BatchNode that runs the items in a thread pool."""

    def __init__(self, max_workers: int | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_workers = max_workers

    def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        # Worker threads start with an empty contextvars context, like KayGraph's.
        with ThreadPoolExecutor(self.max_workers) as pool:
            return list(pool.map(lambda item: Node._exec(self, item), items or []))


class Graph(BaseNode):
    """Node that runs a chain of nodes, each as a fresh shallow copy."""

    def __init__(self, start: BaseNode | None = None, config: Config | dict | None = None) -> None:
        super().__init__(config=config)
        self.start_node = start

    def start(self, node: BaseNode) -> BaseNode:
        self.start_node = node
        return node

    def get_next_node(self, curr: BaseNode, action: Any) -> BaseNode | None:
        next_node = curr.successors.get(action or "default")
        if next_node is None and curr.successors:
            warnings.warn(
                f"Graph ends: node {curr.node_id} has no successor for action {action!r}. "
                f"Its actions are {sorted(curr.successors)}.",
                stacklevel=2,
            )
        return next_node

    def _prepare_step(self, node: BaseNode, params: dict[str, Any] | None) -> None:
        if not node.config:
            node.config = self.config
        node.set_params(params or dict(self.params))

    def _orch(self, shared: dict[str, Any], params: dict[str, Any] | None = None) -> Any:
        curr = copy.copy(self.start_node)
        last_action = None
        while curr is not None:
            self._prepare_step(curr, params)
            last_action = curr._run(shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    def _run(self, shared: dict[str, Any]) -> Any:
        prep_res = self.prep(shared)
        last_action = self._orch(shared)
        return self.post(shared, prep_res, last_action)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        return exec_res


class BatchGraph(Graph):
    """Graph whose ``prep`` returns param dicts, running the chain once per dict."""

    def _run(self, shared: dict[str, Any]) -> Any:
        prep_res = self.prep(shared) or []
        for item_params in prep_res:
            self._orch(shared, {**self.params, **item_params})
        return self.post(shared, prep_res, None)


class AsyncNode(Node):
    """Node with async user methods, run through ``_run_async`` without hooks."""

    async def prep_async(self, shared: dict[str, Any]) -> Any:
        return None

    async def exec_async(self, prep_res: Any) -> Any:
        return None

    async def exec_fallback_async(self, prep_res: Any, exc: Exception) -> Any:
        raise exc

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        return None

    async def _exec(self, prep_res: Any) -> Any:
        for attempt in range(self.max_retries):
            self.cur_retry = attempt
            try:
                return await self.exec_async(prep_res)
            except Exception as exc:
                if self.cur_retry == self.max_retries - 1:
                    return await self.exec_fallback_async(prep_res, exc)
                if self.wait > 0:
                    await asyncio.sleep(self.wait)
        return None

    async def _run_async(self, shared: dict[str, Any]) -> Any:
        prep_res = await self.prep_async(shared)
        exec_res = await self._exec(prep_res)
        return await self.post_async(shared, prep_res, exec_res)

    async def run_async(self, shared: dict[str, Any]) -> Any:
        if self.successors:
            warnings.warn(
                f"Node {self.node_id} has successors that run_async() does not run. "
                "Put the node in an AsyncGraph to follow them.",
                stacklevel=2,
            )
        return await self._run_async(shared)

    def _run(self, shared: dict[str, Any]) -> Any:
        raise RuntimeError(
            f"AsyncNode {self.node_id} cannot run synchronously. Await run_async() instead."
        )


class AsyncBatchNode(AsyncNode, BatchNode):
    """AsyncNode that awaits each item's retrying ``_exec`` in turn."""

    async def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        return [await AsyncNode._exec(self, item) for item in (items or [])]


class AsyncParallelBatchNode(AsyncNode, BatchNode):
    """AsyncNode that gathers the items' retrying ``_exec`` calls."""

    async def _exec(self, items: Iterable[Any] | None) -> list[Any]:
        return list(await asyncio.gather(*(AsyncNode._exec(self, item) for item in items or [])))


class AsyncGraph(Graph, AsyncNode):
    """Graph that awaits AsyncNode steps and calls other steps synchronously."""

    async def _orch_async(
        self, shared: dict[str, Any], params: dict[str, Any] | None = None
    ) -> Any:
        curr = copy.copy(self.start_node)
        last_action = None
        while curr is not None:
            self._prepare_step(curr, params)
            if isinstance(curr, AsyncNode):
                last_action = await curr._run_async(shared)
            else:
                last_action = curr._run(shared)
            curr = copy.copy(self.get_next_node(curr, last_action))
        return last_action

    async def _run_async(self, shared: dict[str, Any]) -> Any:
        prep_res = await self.prep_async(shared)
        last_action = await self._orch_async(shared)
        return await self.post_async(shared, prep_res, last_action)

    async def post_async(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        return exec_res


class AsyncBatchGraph(AsyncGraph, BatchGraph):
    """AsyncGraph that runs the chain once per param dict, in turn."""

    async def _run_async(self, shared: dict[str, Any]) -> Any:
        prep_res = await self.prep_async(shared) or []
        for item_params in prep_res:
            await self._orch_async(shared, {**self.params, **item_params})
        return await self.post_async(shared, prep_res, None)


class AsyncParallelBatchGraph(AsyncGraph, BatchGraph):
    """AsyncGraph that gathers one chain per param dict, all on the same shared dict."""

    async def _run_async(self, shared: dict[str, Any]) -> Any:
        prep_res = await self.prep_async(shared) or []
        await asyncio.gather(
            *(self._orch_async(shared, {**self.params, **item}) for item in prep_res)
        )
        return await self.post_async(shared, prep_res, None)


class ValidatedNode(Node):
    """Node that validates the input and output around the retrying ``Node._exec``.

    NOTE: KayGraph's validators may raise; whether it uses their return values is not
    known. The fake passes on what they return, and the defaults return their argument.
    """

    def validate_input(self, prep_res: Any) -> Any:
        return prep_res

    def validate_output(self, exec_res: Any) -> Any:
        return exec_res

    def _exec(self, prep_res: Any) -> Any:
        checked_input = self.validate_input(prep_res)
        exec_res = super()._exec(checked_input)
        return self.validate_output(exec_res)


class MetricsNode(Node):
    """Node that times each ``_run`` and counts successes, errors and retries.

    The counters live in one dict that Graph._orch's shallow copies share, so
    ``get_stats()`` on the node the user built covers the runs of its copies. The
    statistic names are the fake's own.
    """

    def __init__(self, collect_metrics: bool = True, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.collect_metrics = collect_metrics
        self.metrics: dict[str, Any] = {
            "execution_times": [],
            "retry_counts": [],
            "success_count": 0,
            "error_count": 0,
        }

    def _run(self, shared: dict[str, Any]) -> Any:
        if not self.collect_metrics:
            return super()._run(shared)
        start = time.perf_counter()
        try:
            action = super()._run(shared)
        except Exception:
            self.metrics["error_count"] += 1
            raise
        else:
            self.metrics["success_count"] += 1
            return action
        finally:
            self.metrics["execution_times"].append(time.perf_counter() - start)
            self.metrics["retry_counts"].append(self.cur_retry)

    def get_stats(self) -> dict[str, Any]:
        times = self.metrics["execution_times"]
        retries = self.metrics["retry_counts"]
        total = self.metrics["success_count"] + self.metrics["error_count"]
        return {
            "total_executions": total,
            "success_count": self.metrics["success_count"],
            "error_count": self.metrics["error_count"],
            "success_rate": self.metrics["success_count"] / total if total else 0.0,
            "avg_execution_time": sum(times) / len(times) if times else 0.0,
            "max_execution_time": max(times, default=0.0),
            "avg_retries": sum(retries) / len(retries) if retries else 0.0,
        }


# The submodules subclass the classes above, so they are imported after them.
from kaygraph.composition import (  # noqa: E402
    ConditionalSubGraphNode,
    ParallelSubGraphNode,
    SubGraphNode,
    compose_graphs,
)
from kaygraph.interactive import (  # noqa: E402
    AsyncInteractiveGraph,
    InteractiveGraph,
    InteractiveNode,
    UserInputNode,
)
from kaygraph.persistence import PersistentGraph  # noqa: E402
from kaygraph.workflow_loader import (  # noqa: E402
    export_workflow,
    graph_to_yaml,
    load_workflow,
    validate_workflow,
    yaml_to_graph,
)
