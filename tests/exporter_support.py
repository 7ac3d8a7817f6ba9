"""Helpers for the exporter tests: kaygraph-otel spans, a Redis subscriber and schema checks."""

from __future__ import annotations

import json
import time
from functools import cache
from pathlib import Path
from typing import Any

import redis
from jsonschema import Draft202012Validator, FormatChecker
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.trace import Span, Tracer, set_span_in_context

from kaygraph_otel import attributes as attrs

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "kaygraph_otel" / "event.schema.json"
WORKFLOW_ID = "wf-exporter-tests"
CORRELATION_ID = "run-exporter-tests"
READ_TIMEOUT_S = 10.0


@cache
def event_validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def schema_errors(event: dict[str, Any]) -> list[str]:
    """Return the schema violations of ``event`` as readable strings; empty when valid."""
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in event_validator().iter_errors(event)
    ]


def make_tracer(*processors: SpanProcessor, sampler: Any = None) -> tuple[TracerProvider, Tracer]:
    kwargs: dict[str, Any] = {"resource": Resource.create({"service.name": "exporter-tests"})}
    if sampler is not None:
        kwargs["sampler"] = sampler
    provider = TracerProvider(**kwargs)
    for processor in processors:
        provider.add_span_processor(processor)
    return provider, provider.get_tracer("kaygraph-otel-tests")


def start_node_span(
    tracer: Tracer, node_id: str, node_type: str = "SummarizeNode", parent: Span | None = None
) -> Span:
    """Start a span the way kaygraph-otel starts a node span.

    The identity attributes are set at start, and a ``node_started`` span event is
    added right after, as the instrumentation does.
    """
    span = tracer.start_span(
        f"execute_node {node_type}",
        context=set_span_in_context(parent) if parent is not None else None,
        attributes={
            attrs.NODE_ID: node_id,
            attrs.NODE_TYPE: node_type,
            attrs.NODE_KIND: "node",
            attrs.WORKFLOW_ID: WORKFLOW_ID,
            attrs.CORRELATION_ID: CORRELATION_ID,
        },
    )
    span.add_event("node_started", {attrs.EVENT_STATE: "running"})
    return span


def complete_node_span(span: Span) -> None:
    span.add_event("node_completed", {attrs.EVENT_STATE: "completed"})
    span.end()


def run_node(tracer: Tracer, node_id: str) -> Span:
    span = start_node_span(tracer, node_id)
    complete_node_span(span)
    return span


class ChannelReader:
    """A real Redis Pub/Sub subscriber that decodes each message as a JSON event.

    The constructor returns only after Redis confirmed the subscription, so every
    message published afterwards is received.
    """

    def __init__(self, url: str, channel: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=READ_TIMEOUT_S)
        self._pubsub = self._client.pubsub()
        self._pubsub.subscribe(channel)
        confirmation = self._pubsub.get_message(timeout=READ_TIMEOUT_S)
        if confirmation is None or confirmation["type"] != "subscribe":
            raise RuntimeError(f"no subscribe confirmation for {channel!r}: {confirmation!r}")

    def read(self, count: int, timeout: float = READ_TIMEOUT_S) -> list[dict[str, Any]]:
        """Return up to ``count`` events, stopping early once ``timeout`` seconds have passed."""
        events: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while len(events) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            message = self._pubsub.get_message(timeout=remaining)
            if message is not None and message["type"] == "message":
                events.append(json.loads(message["data"]))
        return events

    def read_all(self, quiet_period: float = 0.5) -> list[dict[str, Any]]:
        """Return every event that arrives until none has arrived for ``quiet_period`` seconds."""
        events: list[dict[str, Any]] = []
        while True:
            message = self._pubsub.get_message(timeout=quiet_period)
            if message is None:
                return events
            if message["type"] == "message":
                events.append(json.loads(message["data"]))

    def close(self) -> None:
        self._pubsub.close()
        self._client.close()


def names_and_nodes(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["event_name"], event["node_id"]) for event in events]
