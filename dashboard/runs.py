"""The dashboard's model of workflow runs, built from schema events as they arrive.

One ``RunRecord`` per ``correlation_id`` contains the run's graph structure (from
its ``workflow_started`` event), the display state of every node, how often
each edge was taken (``transition`` events), its spans (from ``data.span_id``)
and its most recent events. ``RunStore`` keeps a bounded number of runs and
serves the REST endpoints.

Node states follow the events: ``node_started``, ``node_preparing`` and
``node_executing`` mean running, ``retry_attempted`` retrying,
``node_completed`` completed, and ``node_failed`` failed, or handled when the
node's ``on_error`` suppressed the error. Nodes of the graph that have no event
yet are waiting. Batch item events (``data.item_index`` set) count items and
never finish the batch node itself.
"""

from __future__ import annotations

import collections
import datetime
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

Event = dict[str, Any]

DEFAULT_MAX_RUNS = 500
DEFAULT_MAX_EVENTS_PER_RUN = 5000

_STATE_BY_EVENT = {
    "node_started": "running",
    "node_preparing": "running",
    "node_executing": "running",
    "node_completed": "completed",
    "retry_attempted": "retrying",
}
_FINISHED_STATES = frozenset({"completed", "failed", "handled"})


def parse_timestamp(value: Any) -> float | None:
    """Return an event timestamp as Unix seconds, or None when it is not ISO 8601 text."""
    if not isinstance(value, str):
        return None
    text = value[:-1] + "+00:00" if value.endswith("Z") else value
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def _millis(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _error_text(error: Any) -> str:
    if not isinstance(error, dict):
        return ""
    kind = _text(error.get("type"))
    message = _text(error.get("message"))
    return f"{kind}: {message}" if kind and message else kind or message


def _is_handled(data: dict[str, Any]) -> bool:
    error = data.get("error")
    return data.get("state") == "handled" or (
        isinstance(error, dict) and error.get("handled") is True
    )


@dataclass
class NodeRecord:
    """Display state and counters of one node in one run."""

    node_id: str
    node_type: str
    state: str = "waiting"
    state_time: float = -math.inf
    executions: int = 0
    retries: int = 0
    fallbacks: int = 0
    items_done: int = 0
    items_failed: int = 0
    last_error: str = ""

    def set_state(self, state: str, when: float) -> None:
        # A node's end can be exported in a later batch than a newer start, so an
        # older event never overwrites a newer state.
        if when >= self.state_time:
            self.state = state
            self.state_time = when

    def to_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "executions": self.executions,
            "retries": self.retries,
            "fallbacks": self.fallbacks,
            "items_done": self.items_done,
            "items_failed": self.items_failed,
            "last_error": self.last_error,
        }


@dataclass
class SpanRecord:
    """One span of a run as the timeline draws it: a node, graph, workflow or batch item."""

    span_id: str
    parent_span_id: str | None
    node_id: str
    node_type: str
    kind: str
    item_index: int | None = None
    start: float | None = None
    end: float | None = None
    duration_ms: float | None = None
    state: str = "running"
    retries: int = 0
    error: str = ""
    start_seen: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "node_id": self.node_id,
            "node_type": self.node_type,
            "kind": self.kind,
            "item_index": self.item_index,
            "start_ms": _millis(self.start),
            "end_ms": _millis(self.end),
            "duration_ms": self.duration_ms,
            "state": self.state,
            "retries": self.retries,
            "error": self.error,
        }


class RunRecord:
    """The state, graph, spans and recent events of one workflow run.

    Args:
        correlation_id: the run id that all of the run's events carry.
        max_events: how many of the run's most recent events are kept for
            ``GET /api/runs/{correlation_id}``; older ones are counted in
            ``events_dropped``. Every event still updates states and counters.
    """

    def __init__(self, correlation_id: str, max_events: int = DEFAULT_MAX_EVENTS_PER_RUN) -> None:
        self.correlation_id = correlation_id
        self.workflow_id = ""
        self.workflow_name = ""
        self.root_node_id: str | None = None
        self.graph_nodes: list[dict[str, Any]] = []
        self.graph_edges: list[dict[str, str]] = []
        self.graph_truncated = False
        self.status = "running"
        self.workflow_finished = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None
        self.events: collections.deque[Event] = collections.deque(maxlen=max_events)
        self.event_count = 0
        self.events_dropped = 0
        self.errors = 0
        self.handled = 0
        self.retries = 0
        self.nodes: dict[str, NodeRecord] = {}
        self.spans: dict[str, SpanRecord] = {}
        self.transitions: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._event_ids: set[str] = set()
        self._graph_ids: set[str] = set()
        # Nodes per display state, so that status_now needs no pass over the nodes.
        self._state_counts: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_events(
        cls, correlation_id: str, events: Iterable[Event], max_events: int
    ) -> RunRecord:
        """Build a record from a run's stored events, such as a Redis Stream's entries."""
        record = cls(correlation_id, max_events)
        for event in events:
            record.add(event)
        return record

    def add(self, event: Event) -> bool:
        """Apply one event of this run; return False for an event seen before."""
        event_id = event.get("event_id")
        if isinstance(event_id, str):
            if event_id in self._event_ids:
                return False
            self._event_ids.add(event_id)
        if len(self.events) == self.events.maxlen:
            evicted = self.events[0].get("event_id")
            self._event_ids.discard(evicted if isinstance(evicted, str) else "")
            self.events_dropped += 1
        self.events.append(event)
        self.event_count += 1

        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        when = parse_timestamp(event.get("timestamp"))
        when = when if when is not None else time.time()
        self.first_event_at = (
            when if self.first_event_at is None else min(self.first_event_at, when)
        )
        self.last_event_at = when if self.last_event_at is None else max(self.last_event_at, when)

        name = _text(event.get("event_name"))
        if isinstance(data.get("graph"), dict):
            self._merge_graph(data["graph"], name, event)
        workflow = self.is_workflow_event(event)
        self._apply_span(event, data, name, when, workflow)
        if workflow:
            self._apply_workflow(event, data, name, when)
        else:
            self._apply_node(event, data, name, when)
        return True

    def is_workflow_event(self, event: Event) -> bool:
        """Return whether ``event`` belongs to the workflow span rather than to a node."""
        if _text(event.get("event_name")).startswith("workflow_"):
            return True
        # The workflow span's own metric events carry the workflow's id as node_id.
        node_id = event.get("node_id")
        return node_id == self.root_node_id and node_id not in self._graph_ids

    def kind_of(self, event: Event) -> str:
        """Return "workflow", "item" or "node": what the event's span measures."""
        if self.is_workflow_event(event):
            return "workflow"
        data = event.get("data")
        if isinstance(data, dict) and isinstance(data.get("item_index"), int):
            return "item"
        return "node"

    def _merge_graph(self, graph: dict[str, Any], name: str, event: Event) -> None:
        for node in graph.get("nodes") or []:
            if not isinstance(node, dict) or not isinstance(node.get("id"), str):
                continue
            if node["id"] in self._graph_ids:
                continue
            self._graph_ids.add(node["id"])
            parent = node.get("parent")
            self.graph_nodes.append(
                {
                    "id": node["id"],
                    "type": _text(node.get("type")),
                    "parent": parent if isinstance(parent, str) else None,
                    "is_graph": node.get("is_graph") is True,
                    "start": node.get("start") is True,
                }
            )
        known = {(edge["source"], edge["target"], edge["action"]) for edge in self.graph_edges}
        for edge in graph.get("edges") or []:
            if not isinstance(edge, dict):
                continue
            source, target = edge.get("source"), edge.get("target")
            if not isinstance(source, str) or not isinstance(target, str):
                continue
            key = (source, target, _text(edge.get("action")))
            if key not in known:
                known.add(key)
                self.graph_edges.append({"source": key[0], "target": key[1], "action": key[2]})
        if graph.get("truncated") is True:
            self.graph_truncated = True
        if name == "workflow_started" and self.root_node_id is None:
            self.root_node_id = _text(event.get("node_id"))

    def _apply_workflow(self, event: Event, data: dict[str, Any], name: str, when: float) -> None:
        if name == "workflow_started":
            self.root_node_id = self.root_node_id or _text(event.get("node_id"))
            self.workflow_name = _text(data.get("workflow_name")) or _text(event.get("node_id"))
            self.workflow_id = _text(event.get("workflow_id"))
            self.started_at = when if self.started_at is None else min(self.started_at, when)
        elif name in ("workflow_completed", "workflow_failed"):
            self.status = "completed" if name == "workflow_completed" else "failed"
            self.workflow_finished = True
            self.ended_at = when

    def _apply_node(self, event: Event, data: dict[str, Any], name: str, when: float) -> None:
        node_id = _text(event.get("node_id"))
        if name == "transition":
            source = _text(data.get("from_node_id")) or node_id
            action = _text(data.get("action")) or "default"
            self.transitions[(source, action, _text(data.get("next_node_id")))] += 1
            return
        node = self.nodes.get(node_id)
        if node is None:
            node = self.nodes[node_id] = NodeRecord(node_id, _text(event.get("node_type")))
            self._state_counts[node.state] += 1
        before = node.state
        self._update_node(node, data, name, when)
        if node.state != before:
            self._state_counts[before] -= 1
            self._state_counts[node.state] += 1

    def _update_node(self, node: NodeRecord, data: dict[str, Any], name: str, when: float) -> None:
        is_item = isinstance(data.get("item_index"), int)

        if name == "retry_attempted":
            node.retries += 1
            self.retries += 1
        elif name == "fallback_triggered":
            node.fallbacks += 1
        elif name == "node_started" and not is_item:
            node.executions += 1
        if isinstance(data.get("error"), dict):
            node.last_error = _error_text(data["error"])
        if name == "node_failed":
            if _is_handled(data):
                self.handled += 1
            else:
                self.errors += 1

        if is_item:
            if name == "node_completed":
                node.items_done += 1
            elif name == "node_failed":
                node.items_failed += 1
            if node.state == "waiting":
                node.set_state("running", when)
            return
        state = _STATE_BY_EVENT.get(name)
        if name == "node_failed":
            state = "handled" if _is_handled(data) else "failed"
        if state is not None:
            node.set_state(state, when)

    def _apply_span(
        self, event: Event, data: dict[str, Any], name: str, when: float, workflow: bool
    ) -> None:
        span_id = data.get("span_id")
        if not isinstance(span_id, str) or not span_id:
            return
        span = self.spans.get(span_id)
        if span is None:
            parent = data.get("parent_span_id")
            index = data.get("item_index")
            kind = "node"
            if workflow:
                kind = "workflow"
            elif isinstance(index, int):
                kind = "item"
            span = SpanRecord(
                span_id=span_id,
                parent_span_id=parent if isinstance(parent, str) else None,
                node_id=_text(event.get("node_id")),
                node_type=_text(event.get("node_type")),
                kind=kind,
                item_index=index if isinstance(index, int) else None,
            )
            self.spans[span_id] = span
        if name in ("node_started", "workflow_started"):
            span.start = when
            span.start_seen = True
        elif name == "execution_time":
            metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
            duration = metrics.get("duration_ms")
            span.end = when
            if isinstance(duration, (int, float)) and not isinstance(duration, bool):
                span.duration_ms = float(duration)
                # A started event gives the start; spans without one (batch items)
                # start their duration before the end.
                if not span.start_seen:
                    span.start = when - duration / 1000.0
            state = data.get("state")
            span.state = state if state in _FINISHED_STATES else "completed"
        elif name in ("node_completed", "workflow_completed") and span.end is None:
            span.state = "completed"
        elif name in ("node_failed", "workflow_failed"):
            span.state = "handled" if _is_handled(data) else "failed"
        elif name == "retry_attempted":
            span.retries += 1
        if isinstance(data.get("error"), dict):
            span.error = _error_text(data["error"])
        if span.start is None:
            span.start = when

    @property
    def status_now(self) -> str:
        """The run's status: from workflow events, or from its nodes for a run without them."""
        if self.workflow_finished or self.graph_nodes:
            return self.status
        counts = self._state_counts
        if counts["failed"]:
            return "failed"
        if self.nodes and counts["completed"] + counts["handled"] == len(self.nodes):
            return "completed"
        return "running"

    @property
    def finished(self) -> bool:
        return self.status_now != "running"

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """Return the run's row for ``GET /api/runs``; times are Unix milliseconds."""
        started = self.started_at if self.started_at is not None else self.first_event_at
        status = self.status_now
        ended = self.ended_at
        if ended is None and status != "running":
            ended = self.last_event_at
        reference = ended
        if reference is None:
            reference = now if now is not None else time.time()
        duration = None if started is None else max(0.0, (reference - started) * 1000.0)
        node_ids = self._graph_ids or set(self.nodes)
        finished = sum(
            1
            for node_id in node_ids
            if node_id in self.nodes and self.nodes[node_id].state in _FINISHED_STATES
        )
        return {
            "correlation_id": self.correlation_id,
            "workflow_name": self.workflow_name or self._fallback_name(),
            "workflow_id": self.workflow_id,
            "status": status,
            "started_at": _millis(started),
            "ended_at": _millis(ended),
            "duration_ms": None if duration is None else round(duration, 3),
            "node_count": len(node_ids),
            "nodes_finished": finished,
            "errors": self.errors,
            "handled": self.handled,
            "retries": self.retries,
            "event_count": self.event_count,
            "last_event_at": _millis(self.last_event_at),
        }

    def _fallback_name(self) -> str:
        first = next(iter(self.nodes.values()), None)
        return first.node_id if first is not None else ""

    def graph_view(self) -> dict[str, Any]:
        """Return the graph with node states and per-edge transition counts."""
        nodes = []
        for graph_node in self.graph_nodes:
            record = self.nodes.get(graph_node["id"])
            state = record.to_dict() if record is not None else NodeRecord("", "").to_dict()
            nodes.append({**graph_node, **state})
        edges = []
        seen: set[tuple[str, str, str]] = set()
        for edge in self.graph_edges:
            key = (edge["source"], edge["action"], edge["target"])
            seen.add(key)
            edges.append({**edge, "count": self.transitions.get(key, 0), "in_graph": True})
        for (source, action, target), count in self.transitions.items():
            if (source, action, target) not in seen:
                edges.append(
                    {"source": source, "target": target, "action": action, "count": count,
                     "in_graph": False}
                )  # fmt: skip
        extra = [
            {"id": node.node_id, "type": node.node_type, **node.to_dict()}
            for node in self.nodes.values()
            if node.node_id not in self._graph_ids
        ]
        return {
            "correlation_id": self.correlation_id,
            "workflow_name": self.workflow_name,
            "root_node_id": self.root_node_id,
            "nodes": nodes,
            "edges": edges,
            "truncated": self.graph_truncated,
            "extra_nodes": extra,
        }

    def spans_view(self) -> list[dict[str, Any]]:
        """Return the run's spans ordered by start time."""
        spans = sorted(self.spans.values(), key=lambda span: (span.start or 0.0, span.span_id))
        return [span.to_dict() for span in spans]


class RunStore:
    """The most recent runs, by ``correlation_id``.

    When more than ``max_runs`` runs are known, the run that finished first is
    forgotten first, and the oldest run of all when every run is still running.
    """

    def __init__(
        self, max_runs: int = DEFAULT_MAX_RUNS, max_events_per_run: int = DEFAULT_MAX_EVENTS_PER_RUN
    ) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be at least 1, got {max_runs!r}")
        if max_events_per_run < 1:
            raise ValueError(f"max_events_per_run must be at least 1, got {max_events_per_run!r}")
        self.max_runs = max_runs
        self.max_events_per_run = max_events_per_run
        self._runs: collections.OrderedDict[str, RunRecord] = collections.OrderedDict()
        # Finished runs in the order they finished, so eviction needs no pass over all runs.
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._runs)

    def add(self, event: Event) -> RunRecord | None:
        """Apply an event to its run; return the run, or None for a duplicate or invalid event."""
        if not isinstance(event, dict) or not isinstance(event.get("event_name"), str):
            return None
        correlation_id = _text(event.get("correlation_id"))
        record = self._runs.get(correlation_id)
        if record is None:
            record = RunRecord(correlation_id, self.max_events_per_run)
            self._runs[correlation_id] = record
            self._evict()
        if not record.add(event):
            return None
        if record.finished:
            self._finished.setdefault(correlation_id)
        else:
            self._finished.pop(correlation_id, None)
        return record

    def get(self, correlation_id: str) -> RunRecord | None:
        return self._runs.get(correlation_id)

    def summaries(self, limit: int) -> list[dict[str, Any]]:
        """Return up to ``limit`` run summaries, the most recently started first."""
        now = time.time()
        rows = [record.summary(now) for record in self._runs.values()]
        rows.sort(key=lambda row: row["started_at"] or 0.0, reverse=True)
        return rows[:limit]

    def _evict(self) -> None:
        while len(self._runs) > self.max_runs:
            if self._finished:
                victim, _ = self._finished.popitem(last=False)
                del self._runs[victim]
            else:
                victim, _ = self._runs.popitem(last=False)
                self._finished.pop(victim, None)
