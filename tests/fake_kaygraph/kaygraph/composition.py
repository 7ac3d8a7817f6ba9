"""Nodes that run whole graphs on a copy of the shared dict (test fake of KayGraph 0.3.1)."""

from __future__ import annotations

import copy
from typing import Any

from kaygraph import BaseNode, Graph, Node

# Key for the list of per-graph result dicts when ParallelSubGraphNode does not merge.
# NOTE: the key is the fake's own, because KayGraph's behaviour with merge_results=False is
# not known.
PARALLEL_RESULTS_KEY = "parallel_results"


class SubGraphNode(BaseNode):
    """Node whose ``exec`` runs ``graph`` on a copy of chosen keys of the shared dict.

    ``prep`` copies ``input_keys`` from the shared dict, or deep-copies all of it when
    ``input_keys`` is None. ``post`` merges ``output_keys`` of the inner dict back, or
    all of its keys when ``output_keys`` is None, and returns None.
    """

    def __init__(
        self,
        graph: Graph,
        node_id: str | None = None,
        input_keys: list[str] | None = None,
        output_keys: list[str] | None = None,
    ) -> None:
        super().__init__(node_id=node_id or f"subgraph_{id(graph)}")
        self.graph = graph
        self.input_keys = input_keys
        self.output_keys = output_keys

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        if self.input_keys is None:
            return copy.deepcopy(shared)
        return {key: shared[key] for key in self.input_keys if key in shared}

    def exec(self, prep_res: dict[str, Any]) -> dict[str, Any]:
        self.graph.run(prep_res)
        return prep_res

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: dict[str, Any]) -> Any:
        keys = exec_res.keys() if self.output_keys is None else self.output_keys
        for key in keys:
            if key in exec_res:
                shared[key] = exec_res[key]
        return None


class ConditionalSubGraphNode(SubGraphNode):
    """SubGraphNode that runs the graph only when ``shared[condition_key] == condition_value``."""

    def __init__(
        self,
        graph: Graph,
        condition_key: str,
        condition_value: Any = True,
        node_id: str | None = None,
        input_keys: list[str] | None = None,
        output_keys: list[str] | None = None,
    ) -> None:
        super().__init__(graph, node_id=node_id, input_keys=input_keys, output_keys=output_keys)
        self.condition_key = condition_key
        self.condition_value = condition_value

    def prep(self, shared: dict[str, Any]) -> dict[str, Any] | None:
        if shared.get(self.condition_key) != self.condition_value:
            return None
        return super().prep(shared)

    def exec(self, prep_res: dict[str, Any] | None) -> dict[str, Any] | None:
        if prep_res is None:
            return None
        return super().exec(prep_res)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> Any:
        if exec_res is None:
            return None
        return super().post(shared, prep_res, exec_res)


class ParallelSubGraphNode(BaseNode):
    """Node that runs each graph in turn, not concurrently, on its own deep copy.

    With ``merge_results`` the result dicts are merged into the shared dict in graph
    order, so a later graph's value wins for a key that several graphs set.
    """

    def __init__(
        self, graphs: list[Graph], node_id: str | None = None, merge_results: bool = True
    ) -> None:
        super().__init__(node_id=node_id or "parallel_subgraphs")
        self.graphs = list(graphs)
        self.merge_results = merge_results

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared

    def exec(self, prep_res: dict[str, Any]) -> list[dict[str, Any]]:
        results = []
        for graph in self.graphs:
            graph_shared = copy.deepcopy(prep_res)
            graph.run(graph_shared)
            results.append(graph_shared)
        return results

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[dict[str, Any]]) -> Any:
        if self.merge_results:
            for result in exec_res:
                shared.update(result)
        else:
            shared[PARALLEL_RESULTS_KEY] = exec_res
        return None


class _SequenceNode(Node):
    """Node that runs several graphs in turn on the shared dict it is given."""

    def __init__(self, graphs: tuple[Graph, ...]) -> None:
        super().__init__()
        self.graphs = graphs

    def prep(self, shared: dict[str, Any]) -> dict[str, Any]:
        return shared

    def exec(self, prep_res: dict[str, Any]) -> None:
        for graph in self.graphs:
            graph.run(prep_res)


def compose_graphs(*graphs: Graph, node_id: str | None = None) -> SubGraphNode:
    """Wrap ``graphs`` into one SubGraphNode that runs them in turn on one copy."""
    return SubGraphNode(Graph(start=_SequenceNode(graphs)), node_id=node_id)
