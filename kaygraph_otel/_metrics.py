"""Workflow metrics through the OpenTelemetry metrics API.

The instruments do nothing until the application sets a meter provider, so
their cost without one is a few method calls per node.
"""

from __future__ import annotations

from opentelemetry.metrics import Meter
from opentelemetry.util.types import Attributes

from kaygraph_otel import attributes as attr

# Instrument names, units and descriptions, in one table so the reference page can check them.
INSTRUMENTS: dict[str, tuple[str, str]] = {
    "kaygraph.node.duration": ("s", "Duration of node and graph executions."),
    "kaygraph.node.executions": ("{execution}", "Node and graph executions that ended."),
    "kaygraph.node.errors": ("{error}", "Node executions that raised, handled or not."),
    "kaygraph.node.retries": ("{retry}", "Failed attempts that were retried."),
    "kaygraph.node.fallbacks": ("{fallback}", "Calls of a node's own exec_fallback."),
    "kaygraph.node.active": ("{execution}", "Node and graph executions in flight."),
    "kaygraph.batch.size": ("{item}", "Items per batch node execution."),
    "kaygraph.transitions": ("{transition}", "Moves from one node to the next, by action."),
}


class Metrics:
    """The instruments of one instrumentor, with cached attribute sets per node type."""

    def __init__(self, meter: Meter) -> None:
        def describe(name: str) -> dict[str, str]:
            unit, description = INSTRUMENTS[name]
            return {"name": name, "unit": unit, "description": description}

        self.duration = meter.create_histogram(**describe("kaygraph.node.duration"))
        self.executions = meter.create_counter(**describe("kaygraph.node.executions"))
        self.errors = meter.create_counter(**describe("kaygraph.node.errors"))
        self.retries = meter.create_counter(**describe("kaygraph.node.retries"))
        self.fallbacks = meter.create_counter(**describe("kaygraph.node.fallbacks"))
        self.active = meter.create_up_down_counter(**describe("kaygraph.node.active"))
        self.batch_size = meter.create_histogram(**describe("kaygraph.batch.size"))
        self.transitions = meter.create_counter(**describe("kaygraph.transitions"))
        self._node_attributes: dict[tuple[str, str, str], NodeAttributes] = {}
        self._transition_attributes: dict[tuple[str, str, str, str], Attributes] = {}

    def node_attributes(self, node_type: str, kind: str, framework: str) -> NodeAttributes:
        key = (node_type, kind, framework)
        cached = self._node_attributes.get(key)
        if cached is None:
            cached = NodeAttributes(
                {attr.NODE_TYPE: node_type, attr.NODE_KIND: kind, attr.FRAMEWORK: framework}
            )
            if len(self._node_attributes) < 10_000:
                self._node_attributes[key] = cached
        return cached

    def count_transition(self, workflow: str, source: str, action: str, target: str) -> None:
        key = (workflow, source, action, target)
        cached = self._transition_attributes.get(key)
        if cached is None:
            cached = {
                attr.WORKFLOW_NAME: workflow,
                attr.TRANSITION_FROM: source,
                attr.TRANSITION_ACTION: action,
                attr.TRANSITION_TO: target,
            }
            if len(self._transition_attributes) < 10_000:
                self._transition_attributes[key] = cached
        self.transitions.add(1, cached)

    def record_end(
        self, node: NodeAttributes, seconds: float, outcome: str, error: BaseException | None
    ) -> None:
        ended = node.ended(outcome)
        self.duration.record(seconds, ended)
        self.executions.add(1, ended)
        self.active.add(-1, node.base)
        if error is not None:
            self.errors.add(1, {**ended, attr.ERROR_TYPE: type(error).__qualname__})


class NodeAttributes:
    """The metric attributes of one node type, and of its outcomes, built once."""

    __slots__ = ("base", "_ended")

    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self._ended: dict[str, dict[str, str]] = {}

    def ended(self, outcome: str) -> dict[str, str]:
        attributes = self._ended.get(outcome)
        if attributes is None:
            attributes = self._ended[outcome] = {**self.base, attr.OUTCOME: outcome}
        return attributes
