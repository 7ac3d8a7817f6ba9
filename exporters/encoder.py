"""Encoding of kaygraph-otel spans into schema events (see ``kaygraph_otel/event.schema.json``).

A started span (``end_time`` None) yields its ``workflow_started`` or
``node_started`` event. An open span copied with ``kaygraph.live.first_event``
yields the span events from that position on, and that is how the live path
reports progress before a span ends. An ended span yields one event per span event whose
name is a schema event name, then an ``execution_time`` metric event and,
when the node led to a successor, a ``transition`` event. Event ids are UUID5
values derived from the trace id, span id and event position, so the same
event encoded twice has the same id and receivers can deduplicate.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode, format_span_id, format_trace_id

from kaygraph_otel import attributes as attr

Event = dict[str, Any]

_NAMESPACE = uuid.UUID("6b0f8a52-52a4-4c39-9c55-0a3f5b7c1e10")
_STARTED = frozenset({"node_started", "workflow_started"})
_DEFAULT_STATE = {
    "workflow_started": "running",
    "node_started": "running",
    "node_preparing": "preparing",
    "data_input": "preparing",
    "node_executing": "executing",
    "data_output": "executing",
    "queue_depth": "executing",
    "throughput_metric": "executing",
    "fallback_triggered": "executing",
    "retry_attempted": "retrying",
    "node_completed": "completed",
    "workflow_completed": "completed",
    "transition": "completed",
    "node_failed": "failed",
    "workflow_failed": "failed",
}
_ERROR_FIELDS = (
    (attr.EVENT_ERROR_TYPE, "type"),
    (attr.EVENT_ERROR_MESSAGE, "message"),
    (attr.ERROR_HANDLED, "handled"),
    (attr.ERROR_PHASE, "phase"),
    (attr.EVENT_ATTEMPT, "attempt"),
    (attr.EVENT_MAX_ATTEMPTS, "max_attempts"),
)


def _uuid5(name: str) -> str:
    """Return ``str(uuid.uuid5(_NAMESPACE, name))``, computed without building UUID objects."""
    digest = bytearray(hashlib.sha1(_NAMESPACE.bytes + name.encode("utf-8")).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    text = digest.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _timestamp(nanoseconds: int) -> str:
    moment = datetime.datetime.fromtimestamp(nanoseconds / 1e9, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _parse_json(text: Any) -> Any:
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


class _SpanFields:
    """The identity fields that every event of one span shares."""

    __slots__ = ("attributes", "trace_id", "span_id", "common", "kind")

    def __init__(self, span: ReadableSpan) -> None:
        # A plain dict, because lookups in the SDK's attribute mapping run in Python code.
        attributes: Mapping[str, Any] = dict(span.attributes or {})
        context = span.get_span_context()
        self.attributes = attributes
        self.kind = attributes.get(attr.NODE_KIND)
        self.trace_id = format_trace_id(context.trace_id)
        self.span_id = format_span_id(context.span_id)
        parent = span.parent
        data: dict[str, Any] = {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": format_span_id(parent.span_id) if parent is not None else None,
        }
        parent_node = attributes.get(attr.PARENT_NODE_ID)
        if parent_node is not None:
            data["parent_node_id"] = str(parent_node)
        index = attributes.get(attr.BATCH_ITEM_INDEX)
        if isinstance(index, int):
            data["item_index"] = index
        self.common = data

    def event(self, name: str, timestamp: int, key: str, data: dict[str, Any]) -> Event:
        attributes = self.attributes
        correlation_id = attributes.get(attr.CORRELATION_ID) or self.trace_id
        return {
            "event_id": _uuid5(f"{self.trace_id}{self.span_id}{key}"),
            "timestamp": _timestamp(timestamp),
            "node_id": str(attributes.get(attr.NODE_ID, "")),
            "node_type": str(attributes.get(attr.NODE_TYPE, "")),
            "event_type": attr.EVENT_TYPES[name],
            "event_name": name,
            "data": {**self.common, **data},
            "correlation_id": str(correlation_id),
            "workflow_id": str(attributes.get(attr.WORKFLOW_ID, "")),
        }


def _started_data(fields: _SpanFields) -> dict[str, Any]:
    data: dict[str, Any] = {"state": "running"}
    structure = _parse_json(fields.attributes.get(attr.GRAPH_STRUCTURE))
    if isinstance(structure, dict):
        data["graph"] = structure
    name = fields.attributes.get(attr.WORKFLOW_NAME)
    if name is not None:
        data["workflow_name"] = str(name)
    return data


def _event_data(name: str, attributes: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {"state": attributes.get(attr.EVENT_STATE) or _DEFAULT_STATE[name]}
    if attr.EVENT_ERROR_TYPE in attributes:
        data["error"] = {
            field: attributes[key] for key, field in _ERROR_FIELDS if key in attributes
        }
        data["error"].setdefault("message", "")
    metrics = {
        key[len(attr.EVENT_METRIC_PREFIX) :]: value
        for key, value in attributes.items()
        if key.startswith(attr.EVENT_METRIC_PREFIX) and isinstance(value, (int, float))
    }
    if metrics:
        data["metrics"] = metrics
    if attr.EVENT_INPUT_SNAPSHOT in attributes:
        data["input_snapshot"] = _parse_json(attributes[attr.EVENT_INPUT_SNAPSHOT])
    if attr.EVENT_OUTPUT_SNAPSHOT in attributes:
        data["output_snapshot"] = _parse_json(attributes[attr.EVENT_OUTPUT_SNAPSHOT])
    if attr.EVENT_SCRUBBED in attributes:
        data["scrubbed"] = [str(path) for path in attributes[attr.EVENT_SCRUBBED]]
    index = attributes.get(attr.BATCH_ITEM_INDEX)
    if isinstance(index, int):
        data["item_index"] = index
    return data


_PHASE_EVENTS = {"prep": ("node_preparing", "preparing"), "exec": ("node_executing", "executing")}


def encode_started_span(span: ReadableSpan) -> Event | None:
    """Return the started event of a workflow, graph, node or phase span, or None for others.

    A prep or exec phase span (recorded when phase spans are on) starts the
    ``node_preparing`` or ``node_executing`` step of its node.
    """
    fields = _SpanFields(span)
    if fields.kind is None or fields.kind == "batch_item" or span.start_time is None:
        return None
    if fields.kind == "phase":
        phase = _PHASE_EVENTS.get(str(fields.attributes.get(attr.PHASE)))
        if phase is None:
            return None
        name, state = phase
        return fields.event(name, span.start_time, f"{name}:phase", {"state": state})
    name = "workflow_started" if fields.kind == "workflow" else "node_started"
    return fields.event(name, span.start_time, f"{name}:0", _started_data(fields))


def encode_span(span: ReadableSpan, *, include_started: bool = True) -> list[Event]:
    """Return the schema events of one span, in order; an empty list for other spans."""
    first_event = (span.attributes or {}).get(attr.LIVE_FIRST_EVENT)
    if span.end_time is None and first_event is None:
        started = encode_started_span(span)
        return [started] if started is not None else []
    fields = _SpanFields(span)
    if fields.kind is None:
        return []
    events: list[Event] = []
    if fields.kind == "phase":
        started = encode_started_span(span) if include_started else None
        return [started] if started is not None and span.end_time is not None else []
    skip_before = first_event if isinstance(first_event, int) else 0
    for position, span_event in enumerate(span.events):
        name = span_event.name
        if name not in attr.EVENT_TYPES or position < skip_before:
            continue
        key = f"{name}:0" if name in _STARTED else f"{name}:{position}"
        if name in _STARTED:
            if not include_started or fields.kind == "batch_item":
                continue
            data = _started_data(fields)
        else:
            data = _event_data(name, dict(span_event.attributes or {}))
        events.append(fields.event(name, span_event.timestamp, key, data))
    if span.end_time is not None:
        events.extend(_derived_events(span, fields))
    return events


def _derived_events(span: ReadableSpan, fields: _SpanFields) -> list[Event]:
    attributes = fields.attributes
    failed = span.status.status_code is StatusCode.ERROR
    handled = attributes.get(attr.STATE) == "handled"
    state = "completed"
    if failed:
        state = "failed"
    elif handled:
        state = "handled"
    start, end = span.start_time, span.end_time
    # A span received over OTLP may lack its start time or end before it starts.
    duration_ms = (end - start) / 1e6 if start and end and end >= start else 0.0
    events = [
        fields.event(
            "execution_time",
            span.end_time,
            "execution_time:end",
            {"state": state, "metrics": {"duration_ms": duration_ms}},
        )
    ]
    next_node = attributes.get(attr.NEXT_NODE_ID)
    if next_node is not None and fields.kind in ("node", "graph") and not failed:
        action = attributes.get(attr.ACTION)
        events.append(
            fields.event(
                "transition",
                span.end_time,
                "transition:end",
                {
                    "state": state,
                    "from_node_id": str(attributes.get(attr.NODE_ID, "")),
                    "action": str(action) if action is not None else "default",
                    "next_node_id": str(next_node),
                },
            )
        )
    return events


def encode_spans(spans: Iterable[ReadableSpan], *, include_started: bool = True) -> list[Event]:
    """Return the schema events of every span in ``spans``, span by span."""
    events: list[Event] = []
    for span in spans:
        events.extend(encode_span(span, include_started=include_started))
    return events


def event_to_json(event: Event) -> str:
    """Return compact JSON text of one event; non-ASCII text is kept as is."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))
