"""OpenTelemetry SDK fixtures: one tracer provider per test session, spans kept in memory.

OpenTelemetry lets a process set its global tracer provider once, so the
session sets one provider and each test clears the in-memory exporter.
The instrumentors are given this provider explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "kaygraph_otel" / "event.schema.json"
EVENT_VALIDATOR = jsonschema.Draft202012Validator(
    json.loads(SCHEMA_PATH.read_text()), format_checker=jsonschema.FormatChecker()
)

_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
trace.set_tracer_provider(_PROVIDER)


def validate_event(event: dict) -> dict:
    """Raise jsonschema.ValidationError unless ``event`` matches the event schema; return it."""
    EVENT_VALIDATOR.validate(event)
    return event


@pytest.fixture
def tracer_provider() -> TracerProvider:
    return _PROVIDER


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def finished_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())
