"""The static structure of a graph: its nodes, their types and the action-labelled edges.

The walk is breadth-first with an explicit queue, so cycles and deep nesting
cost no recursion. Nested graphs (a graph used as a node, or a graph held by
a node in its ``graph`` or ``graphs`` attribute, as KayGraph's subgraph nodes
do) are walked too and their nodes carry the id of the node that contains them.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_DEFAULT_ID = re.compile(r"^(?P<cls>.+)_\d+$")


def node_key(node: Any) -> int:
    """Return an identity shared by a node and its shallow copies.

    Graphs run shallow copies of the nodes that the user built. A shallow copy
    shares the original's ``successors`` dict, so that dict's id identifies the
    original for as long as the graph keeps a reference to it.
    """
    successors = getattr(node, "successors", None)
    return id(successors) if isinstance(successors, dict) else id(node)


def user_node_id(node: Any) -> str | None:
    """Return the node's ``node_id`` when the user set it, None for a KayGraph default id."""
    node_id = getattr(node, "node_id", None)
    if not isinstance(node_id, str) or not node_id:
        return None
    match = _DEFAULT_ID.match(node_id)
    if match and match.group("cls") in (type(node).__name__, "subgraph"):
        return None
    return node_id


def unique_id(base: str, used: set[str]) -> str:
    """Return ``base``, or ``base#2``, ``base#3`` and so on, whichever is first not in ``used``."""
    name = base
    number = 1
    while name in used:
        number += 1
        name = f"{base}#{number}"
    return name


@dataclass
class Structure:
    """Nodes and edges of one graph, the ids given to its nodes, and a stable workflow id."""

    nodes: list[dict[str, Any]] = field(default_factory=list)
    edges: list[dict[str, str]] = field(default_factory=list)
    truncated: bool = False
    ids: dict[int, str] = field(default_factory=dict)
    workflow_id: str = ""
    walked: list[Any] = field(default_factory=list, repr=False)
    _json: str | None = field(default=None, repr=False)

    def to_json(self) -> str:
        if self._json is None:
            body: dict[str, Any] = {"nodes": self.nodes, "edges": self.edges}
            if self.truncated:
                body["truncated"] = True
            self._json = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        return self._json


def _signature(graph: Any, nodes: list[Any]) -> tuple[Any, ...]:
    """Return what a walk of ``graph`` depends on: each node's id, links and nested graphs."""
    parts: list[Any] = [id(getattr(graph, "start_node", None))]
    for node in nodes:
        successors = getattr(node, "successors", None)
        links = (
            tuple((a, id(t)) for a, t in successors.items()) if isinstance(successors, dict) else ()
        )
        own = getattr(node, "__dict__", {})
        nested = (id(own.get("start_node")), id(own.get("graph")), id(own.get("graphs")))
        parts.append((id(node), own.get("node_id"), links, nested))
    return tuple(parts)


class StructureCache:
    """Structures of recently run graphs, reused while the graph's nodes and links are unchanged.

    Walking a graph costs far more per node than checking that it is unchanged,
    and a graph is usually built once and run many times. An entry is reused only
    while the same graph object has the same nodes, node ids, successors and
    nested graphs. Any change makes the next run walk it again. Entries hold the
    graph and its nodes through weak references, so a graph that the application
    drops is freed with its nodes.
    """

    def __init__(self, max_entries: int = 128) -> None:
        self._entries: collections.OrderedDict[tuple[int, str | None, int], _CacheEntry] = (
            collections.OrderedDict()
        )
        self._max_entries = max_entries
        self._lock = threading.Lock()

    def get(
        self, graph: Any, graph_id: str | None, max_nodes: int, walk: Callable[[], Structure]
    ) -> Structure:
        key = (id(graph), graph_id, max_nodes)
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.matches(graph):
            with self._lock:
                self._entries.move_to_end(key)
            return entry.structure
        structure = walk()
        entry = _CacheEntry.build(graph, structure)
        if entry is None:
            return structure
        with self._lock:
            self._entries[key] = entry
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return structure


@dataclass
class _CacheEntry:
    graph: weakref.ref[Any]
    nodes: list[weakref.ref[Any]]
    signature: tuple[Any, ...]
    structure: Structure

    @classmethod
    def build(cls, graph: Any, structure: Structure) -> _CacheEntry | None:
        walked, structure.walked = structure.walked, []
        try:
            graph_ref = weakref.ref(graph)
            node_refs = [weakref.ref(node) for node in walked]
        except TypeError:
            return None  # a class with __slots__ and no __weakref__ cannot be cached
        return cls(graph_ref, node_refs, _signature(graph, walked), structure)

    def matches(self, graph: Any) -> bool:
        if self.graph() is not graph:
            return False
        nodes = [ref() for ref in self.nodes]
        if any(node is None for node in nodes):
            return False
        return self.signature == _signature(graph, nodes)


def _children_graphs(node: Any, is_graph: Callable[[Any], bool]) -> list[Any]:
    inner: list[Any] = []
    if is_graph(node):
        start = getattr(node, "start_node", None)
        return [start] if start is not None else []
    candidate = node.__dict__.get("graph") if hasattr(node, "__dict__") else None
    if candidate is not None and is_graph(candidate):
        inner.append(candidate)
    many = node.__dict__.get("graphs") if hasattr(node, "__dict__") else None
    if isinstance(many, (list, tuple)):
        inner.extend(g for g in many if is_graph(g))
    return inner


def walk_graph(
    graph: Any,
    *,
    is_graph: Callable[[Any], bool],
    max_nodes: int,
    known_ids: dict[int, str] | None = None,
    graph_id: str | None = None,
) -> Structure:
    """Walk ``graph`` from its start node and return its Structure.

    Args:
        graph: the graph whose nodes are walked; the graph itself is not a node
            of the result.
        is_graph: returns whether an object is a graph of the instrumented framework.
        max_nodes: the walk stops after this many nodes and marks the result truncated.
        known_ids: ids already given to nodes, reused so a node keeps one id per run.
        graph_id: the id of ``graph``, recorded as the parent of its top-level nodes.
    """
    structure = Structure()
    ids = structure.ids
    used: set[str] = set((known_ids or {}).values())
    if graph_id is not None:
        # The graph's own id is the parent of its nodes, so no node may take it.
        used.add(graph_id)
    type_counts: collections.Counter[str] = collections.Counter()
    canonical: list[Any] = []
    order: dict[int, int] = {}
    pending_targets: list[tuple[dict[str, str], int, Any]] = []

    def assign(node: Any) -> str:
        key = node_key(node)
        if known_ids and key in known_ids:
            return known_ids[key]
        base = user_node_id(node) or type(node).__name__
        type_counts[base] += 1
        name = base if type_counts[base] == 1 else f"{base}#{type_counts[base]}"
        while name in used:
            type_counts[base] += 1
            name = f"{base}#{type_counts[base]}"
        used.add(name)
        return name

    queue: collections.deque[tuple[Any, str | None, bool]] = collections.deque()
    for start in _children_graphs(graph, is_graph):
        queue.append((start, graph_id, True))
    seen: set[int] = set()
    while queue:
        node, parent, is_start = queue.popleft()
        if id(node) in seen:
            continue
        if len(structure.nodes) >= max_nodes:
            structure.truncated = True
            break
        seen.add(id(node))
        structure.walked.append(node)
        node_id = assign(node)
        ids[node_key(node)] = node_id
        order[id(node)] = len(structure.nodes)
        nested = is_graph(node)
        entry: dict[str, Any] = {"id": node_id, "type": type(node).__name__, "parent": parent}
        if nested:
            entry["is_graph"] = True
        if is_start:
            entry["start"] = True
        structure.nodes.append(entry)
        canonical.append([entry["type"], user_node_id(node), parent is not graph_id, is_start])
        for inner_start in _children_graphs(node, is_graph):
            queue.append((inner_start, node_id, True))
        successors = getattr(node, "successors", None)
        if not isinstance(successors, dict):
            continue
        for action, target in list(successors.items()):
            queue.append((target, parent, False))
            edge = {"source": node_id, "target": "", "action": str(action)}
            structure.edges.append(edge)
            pending_targets.append((edge, order[id(node)], target))

    resolved_edges = []
    for edge, source_order, target in pending_targets:
        target_id = ids.get(node_key(target))
        if target_id is None:
            structure.truncated = True
            continue
        edge["target"] = target_id
        resolved_edges.append(edge)
        canonical.append([source_order, edge["action"], order.get(id(target))])
    structure.edges = resolved_edges
    digest = hashlib.sha256(
        json.dumps([type(graph).__name__, canonical], default=str).encode()
    ).hexdigest()
    structure.workflow_id = digest[:16]
    return structure
