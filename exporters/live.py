"""A span processor that reports kaygraph-otel spans when they start as well as when they end.

The SDK hands a span to its processors' exporters only when the span ends, so a
node that runs for a minute would stay invisible for that minute. When a
kaygraph-otel span starts, ``LiveSpanProcessor`` queues a frozen copy of it with
no end time and the attribute ``kaygraph.pending=True``. Its exporter turns that
copy into the ``node_started`` or ``workflow_started`` event, and turns the ended
span into the remaining events. Both go through the first-in, first-out queue
of one SDK ``BatchSpanProcessor``, so the started event goes out with the next
batch, and never after the events of the same span's end.

Usage::

    provider.add_span_processor(LiveSpanProcessor(RedisEventExporter(redis_url)))
"""

from __future__ import annotations

import logging
from typing import Protocol, runtime_checkable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from kaygraph_otel.attributes import NODE_KIND

logger = logging.getLogger(__name__)

PENDING = "kaygraph.pending"


@runtime_checkable
class PendingSpanExporter(Protocol):
    """An exporter that accepts pending spans, whose ``end_time`` is None.

    Such an exporter turns a pending span into its started event only. Its
    ``set_include_started(False)`` stops it from emitting the started event again
    for the ended span.
    """

    def set_include_started(self, include_started: bool) -> None: ...


class LiveSpanProcessor(SpanProcessor):
    """Queue kaygraph-otel spans for export when they start and again when they end.

    Spans without the ``kaygraph.node_kind`` attribute, and spans that are not
    sampled, are ignored. Batching, the bounded queue and the worker thread are the
    SDK's ``BatchSpanProcessor``. When its queue is full, the SDK drops the oldest span.

    Args:
        exporter: an exporter of schema events, such as ``RedisEventExporter`` or
            ``BusEventExporter``. The processor calls its ``set_include_started(False)``.
        schedule_delay_millis: maximum delay in milliseconds before queued spans are exported.
        max_queue_size: maximum number of spans (pending copies included) waiting in the queue.
        max_export_batch_size: maximum number of spans passed to one ``export`` call.

    Raises:
        TypeError: when ``exporter`` cannot handle pending spans.
        ValueError: when a size or delay is out of range.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        *,
        schedule_delay_millis: int = 200,
        max_queue_size: int = 8192,
        max_export_batch_size: int = 512,
    ) -> None:
        if not isinstance(exporter, PendingSpanExporter):
            raise TypeError(
                f"{type(exporter).__name__} cannot export pending spans. LiveSpanProcessor "
                "needs an exporter with set_include_started(), such as RedisEventExporter or "
                "BusEventExporter. Use BatchSpanProcessor for other exporters."
            )
        _validate_sizes(schedule_delay_millis, max_queue_size, max_export_batch_size)
        exporter.set_include_started(False)
        self._exporter = exporter
        self._schedule_delay_millis = schedule_delay_millis
        self._batch = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
        )
        self._shutdown = False

    @property
    def exporter(self) -> SpanExporter:
        """The exporter that receives the batches."""
        return self._exporter

    @property
    def schedule_delay_millis(self) -> int:
        """Maximum delay in milliseconds before queued spans are exported."""
        return self._schedule_delay_millis

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Queue a pending copy of ``span`` if it is a sampled kaygraph-otel span."""
        if self._shutdown:
            return
        try:
            if not _is_sampled_kaygraph_span(span):
                return
            self._batch.on_end(_pending_copy(span))
        except Exception:  # noqa: BLE001 - monitoring must never raise into the workflow
            logger.debug("Queueing the pending copy of span %r failed", span, exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        """Queue ``span`` if it is a kaygraph-otel span."""
        try:
            if _is_kaygraph_span(span):
                self._batch.on_end(span)
        except Exception:  # noqa: BLE001 - monitoring must never raise into the workflow
            logger.debug("Queueing ended span %r failed", span, exc_info=True)

    def shutdown(self) -> None:
        """Export what is queued, then shut down the batch processor and the exporter."""
        self._shutdown = True
        self._batch.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every queued span now. Return False after shutdown."""
        return self._batch.force_flush(timeout_millis)


def _is_kaygraph_span(span: ReadableSpan) -> bool:
    attributes = span.attributes
    return attributes is not None and NODE_KIND in attributes


def _is_sampled_kaygraph_span(span: ReadableSpan) -> bool:
    context = span.context
    return context is not None and context.trace_flags.sampled and _is_kaygraph_span(span)


def _pending_copy(span: Span) -> ReadableSpan:
    # on_start runs on the thread that started the span before it returns the span,
    # so nothing else can be changing its attributes while they are copied.
    attributes = dict(span.attributes or {})
    attributes[PENDING] = True
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=(),
        links=tuple(span.links),
        kind=span.kind,
        start_time=span.start_time,
        end_time=None,
        instrumentation_scope=span.instrumentation_scope,
    )


def _validate_sizes(
    schedule_delay_millis: int, max_queue_size: int, max_export_batch_size: int
) -> None:
    if schedule_delay_millis <= 0:
        raise ValueError(
            f"schedule_delay_millis must be positive, got {schedule_delay_millis!r}; "
            "the default is 200"
        )
    if max_queue_size <= 0:
        raise ValueError(
            f"max_queue_size must be positive, got {max_queue_size!r}. The default is 8192"
        )
    if not 0 < max_export_batch_size <= max_queue_size:
        raise ValueError(
            f"max_export_batch_size must be between 1 and max_queue_size ({max_queue_size}), "
            f"got {max_export_batch_size!r}"
        )
