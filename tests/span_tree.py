"""Helpers that read the tree of finished spans: parents, children, kinds and node ids."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from kaygraph_otel import attributes as attr


def span_id(span: ReadableSpan) -> int:
    return span.get_span_context().span_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [span for span in spans if parent_id(span) == span_id(parent)]


def of_kind(spans: list[ReadableSpan], kind: str) -> list[ReadableSpan]:
    return [span for span in spans if span.attributes.get(attr.NODE_KIND) == kind]


def node_spans(spans: list[ReadableSpan], node_id: str) -> list[ReadableSpan]:
    """Return the node and graph spans (not item spans) of ``node_id``."""
    return [
        span
        for span in spans
        if span.attributes.get(attr.NODE_ID) == node_id
        and span.attributes.get(attr.NODE_KIND) != "batch_item"
    ]


def one_node_span(spans: list[ReadableSpan], node_id: str) -> ReadableSpan:
    found = node_spans(spans, node_id)
    assert len(found) == 1, f"expected one span of node {node_id!r}, found {len(found)}"
    return found[0]


def events_named(span: ReadableSpan, name: str) -> list[dict[str, Any]]:
    return [dict(event.attributes or {}) for event in span.events if event.name == name]


def event_names(span: ReadableSpan) -> list[str]:
    return [event.name for event in span.events]
