"""Per-execution state of workflow, node and batch-item spans, and how their events are emitted."""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import traceback
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry._logs import Logger as EventLogger
from opentelemetry.trace import Span
from opentelemetry.util.types import AttributeValue

from kaygraph_otel import attributes as attr
from kaygraph_otel._snapshot import safe_str
from kaygraph_otel.config import Settings

logger = logging.getLogger("kaygraph_otel")


def debug_failure(where: str) -> None:
    """Log a failure of the instrumentation itself at debug level; the workflow goes on."""
    logger.debug(
        "kaygraph-otel instrumentation failed in %s; the workflow is unaffected",
        where,
        exc_info=True,
    )


@dataclass(frozen=True)
class RunOptions:
    """The correlation id and workflow name that ``run_context`` sets for the runs inside it."""

    correlation_id: str | None = None
    workflow_name: str | None = None


RUN_OPTIONS: contextvars.ContextVar[RunOptions | None] = contextvars.ContextVar(
    "kaygraph_otel_run_options", default=None
)


class Workflow:
    """One top-level workflow run (or one standalone node run): identity shared by its spans."""

    __slots__ = ("ids", "workflow_id", "name", "correlation_id", "transitions", "lock")

    def __init__(
        self, ids: dict[int, str], workflow_id: str, name: str, correlation_id: str | None
    ) -> None:
        self.ids = ids
        self.workflow_id = workflow_id
        self.name = name
        self.correlation_id = correlation_id
        self.transitions: dict[tuple[str, str, str], int] = {}
        self.lock = threading.Lock()

    def count_transition(self, source: str, action: str, target: str) -> None:
        key = (source, action, target)
        with self.lock:
            self.transitions[key] = self.transitions.get(key, 0) + 1


class NodeRun:
    """The state of one node or graph execution while its span is open."""

    __slots__ = (
        "instance",
        "span",
        "kind",
        "node_id",
        "node_type",
        "workflow",
        "recording",
        "phase",
        "in_prep",
        "in_exec",
        "is_batch",
        "batch_size",
        "item_counter",
        "lock",
        "attempts",
        "in_attempt",
        "in_fallback",
        "retries",
        "fallbacks",
        "items_succeeded",
        "items_failed",
        "item_spans_dropped",
        "handled_error",
        "context_token",
        "run_token",
        "exec_started_ns",
        "started_ns",
        "metric_attributes",
        "phase_span",
        "phase_token",
        "repeated_events",
        "events_dropped",
    )

    def __init__(
        self, instance: Any, span: Span, kind: str, node_id: str, node_type: str, workflow: Workflow
    ) -> None:
        self.instance = instance
        self.span = span
        self.kind = kind
        self.node_id = node_id
        self.node_type = node_type
        self.workflow = workflow
        self.recording = span.is_recording()
        self.phase = "before_prep"
        self.in_prep = False
        self.in_exec = False
        self.is_batch = False
        self.batch_size: int | None = None
        self.item_counter = itertools.count()
        self.lock = threading.Lock()
        self.attempts = 0
        self.in_attempt = False
        self.in_fallback = False
        self.retries = 0
        self.fallbacks = 0
        self.items_succeeded = 0
        self.items_failed = 0
        self.item_spans_dropped = 0
        self.handled_error: BaseException | None = None
        self.context_token: object = None
        self.run_token: contextvars.Token[NodeRun | None] | None = None
        self.exec_started_ns = 0
        self.started_ns = 0
        self.metric_attributes: Any = None
        self.phase_span: Span | None = None
        self.phase_token: object = None
        self.repeated_events: dict[str, int] = {}
        self.events_dropped = 0

    def claim_event(self, name: str, limit: int) -> bool:
        """Count one more event called ``name``; False once ``limit`` were already added."""
        with self.lock:
            count = self.repeated_events.get(name, 0)
            if count >= limit:
                self.events_dropped += 1
                return False
            self.repeated_events[name] = count + 1
            return True


class ItemRun:
    """The state of one batch item: its optional span and its attempts."""

    __slots__ = ("run", "index", "span", "attempts", "in_attempt", "in_fallback")

    def __init__(self, run: NodeRun, index: int, span: Span | None) -> None:
        self.run = run
        self.index = index
        self.span = span
        self.attempts = 0
        self.in_attempt = False
        self.in_fallback = False


CURRENT_RUN: contextvars.ContextVar[NodeRun | None] = contextvars.ContextVar(
    "kaygraph_otel_current_run", default=None
)
CURRENT_ITEM: contextvars.ContextVar[ItemRun | None] = contextvars.ContextVar(
    "kaygraph_otel_current_item", default=None
)


def error_attributes(exc: BaseException) -> dict[str, AttributeValue]:
    return {attr.EVENT_ERROR_TYPE: type(exc).__name__, attr.EVENT_ERROR_MESSAGE: safe_str(exc)}


# An exception that passes through many nested spans is recorded on each of
# them, so the recorded stack trace is bounded to keep that cost linear.
MAX_TRACEBACK_FRAMES = 64
MAX_STACKTRACE_CHARS = 16_384


def record_exception(span: Span, exc: BaseException) -> None:
    """Add the standard ``exception`` span event; a failing ``__str__`` becomes a marker."""
    try:
        stacktrace = "".join(
            traceback.format_exception(
                type(exc), exc, exc.__traceback__, limit=MAX_TRACEBACK_FRAMES
            )
        )
        if len(stacktrace) > MAX_STACKTRACE_CHARS:
            stacktrace = stacktrace[:MAX_STACKTRACE_CHARS] + "\n...[stack trace cut]"
    except Exception:  # noqa: BLE001 - a failing __str__ inside the traceback must not escape
        stacktrace = f"{type(exc).__name__}: <traceback unavailable>"
    span.add_event(
        "exception",
        {
            "exception.type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "exception.message": safe_str(exc),
            "exception.stacktrace": stacktrace,
        },
    )


class Emitter:
    """Emits schema events as span events, log records, or both, as ``event_signal`` selects."""

    def __init__(self, settings: Settings, event_logger: EventLogger | None) -> None:
        self.settings = settings
        self.selected = settings.events or None
        self.to_span = settings.event_signal in ("span", "both")
        self.event_logger = event_logger if settings.event_signal in ("log", "both") else None

    def emit(self, span: Span, name: str, attributes: dict[str, AttributeValue]) -> None:
        if self.selected is not None and name not in self.selected:
            return
        if self.to_span:
            span.add_event(name, attributes)
        if self.event_logger is not None:
            self._emit_log(span, name, attributes)

    def _emit_log(self, span: Span, name: str, attributes: dict[str, AttributeValue]) -> None:
        span_attributes = getattr(span, "attributes", None) or {}
        identity = {
            key: span_attributes[key]
            for key in (
                attr.NODE_ID,
                attr.NODE_TYPE,
                attr.WORKFLOW_ID,
                attr.CORRELATION_ID,
                attr.NODE_KIND,
            )
            if key in span_attributes
        }
        self.event_logger.emit(  # type: ignore[union-attr]
            event_name=f"kaygraph.{name}",
            context=trace.set_span_in_context(span),
            attributes={**identity, **attributes, "kaygraph.event_name": name},
        )
