"""A span processor that reports kaygraph-otel spans when they start as well as when they end.

The SDK hands a span to its processors' exporters only when the span ends, so a
node that runs for a minute would stay invisible for that minute. When a
kaygraph-otel span starts, ``LiveSpanProcessor`` queues a frozen copy of it with
no end time and the attribute ``kaygraph.pending=True``. Its exporter turns that
copy into the ``node_started`` or ``workflow_started`` event, and turns the ended
span into the remaining events. Both go through the first-in, first-out queue
of one SDK ``BatchSpanProcessor``, so the started event goes out with the next
batch, and never after the events of the same span's end.

While a span is open, a progress thread looks at it every
``schedule_delay_millis`` and queues another pending copy that carries the
events added since the last look (``kaygraph.live.first_event`` marks where they start),
so a retry or the start of ``exec`` in a long-running node shows up while the
node runs. The ended span then carries the same marker, and the exporter skips
the events that were already sent.

The SDK's queue is bounded. When it is full, the processor drops the new span
and, for exporters of schema events, counts its events as ``queue_full`` drops.
``force_flush`` and ``shutdown`` return within their time limits even when the
exporter's backend hangs. The export still in progress then finishes on a
daemon thread, which does not keep the interpreter from exiting.

Usage::

    provider.add_span_processor(LiveSpanProcessor(RedisEventExporter(redis_url)))
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Protocol, TypeVar, runtime_checkable

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from kaygraph_otel.attributes import EVENT_TYPES, LIVE_FIRST_EVENT, NEXT_NODE_ID, NODE_KIND, PENDING
from kaygraph_otel_exporters._drops import DropReporter

logger = logging.getLogger(__name__)

DEFAULT_SHUTDOWN_TIMEOUT_MILLIS = 5000
MIN_SCHEDULE_DELAY_MILLIS = 1
MAX_SCHEDULE_DELAY_MILLIS = 60_000
_STARTED = frozenset({"node_started", "workflow_started"})

T = TypeVar("T")


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
    SDK's ``BatchSpanProcessor``. When its queue is full, this processor drops the new
    span and counts its events in the exporter's ``drops``, if it has them.

    Args:
        exporter: an exporter of schema events, such as ``RedisEventExporter`` or
            ``BusEventExporter``. The processor calls its ``set_include_started(False)``.
        schedule_delay_millis: maximum delay in milliseconds before queued spans are
            exported, from 1 to 60000.
        max_queue_size: maximum number of spans (pending copies included) waiting in the queue.
        max_export_batch_size: maximum number of spans passed to one ``export`` call.
        shutdown_timeout_millis: the longest ``shutdown`` waits for the queue to be
            exported and the exporter to shut down.

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
        shutdown_timeout_millis: int = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS,
    ) -> None:
        if not isinstance(exporter, PendingSpanExporter):
            raise TypeError(
                f"{type(exporter).__name__} cannot export pending spans. LiveSpanProcessor "
                "needs an exporter with set_include_started(), such as RedisEventExporter or "
                "BusEventExporter. Use BatchSpanProcessor for other exporters."
            )
        _validate_sizes(schedule_delay_millis, max_queue_size, max_export_batch_size)
        if (
            not isinstance(shutdown_timeout_millis, int)
            or isinstance(shutdown_timeout_millis, bool)
            or shutdown_timeout_millis < 0
        ):
            raise ValueError(
                f"shutdown_timeout_millis must be a whole number >= 0, got "
                f"{shutdown_timeout_millis!r}; the default is {DEFAULT_SHUTDOWN_TIMEOUT_MILLIS}"
            )
        exporter.set_include_started(False)
        self._exporter = exporter
        self._schedule_delay_millis = schedule_delay_millis
        self._max_queue_size = max_queue_size
        self._shutdown_timeout_millis = shutdown_timeout_millis
        self._batch = BatchSpanProcessor(
            exporter,
            max_queue_size=max_queue_size,
            schedule_delay_millis=schedule_delay_millis,
            max_export_batch_size=max_export_batch_size,
        )
        self._shutdown = False
        self._queue = _sdk_queue(self._batch)
        self._open: dict[int, tuple[Span, int]] = {}
        self._open_lock = threading.Lock()
        self._progress_thread: threading.Thread | None = None
        self._progress_stop = threading.Event()
        reference = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_after_fork(reference))

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
            self._enqueue(_pending_copy(span, None))
            with self._open_lock:
                self._open[span.context.span_id] = (span, 0)
            if self._progress_thread is None:
                self._start_progress_thread()
        except Exception:  # noqa: BLE001 - monitoring must never raise into the workflow
            logger.debug("Queueing the pending copy of span %r failed", span, exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        """Queue ``span`` if it is a sampled kaygraph-otel span."""
        try:
            if not _is_sampled_kaygraph_span(span):
                return
            with self._open_lock:
                _, sent = self._open.pop(span.context.span_id, (None, 0))
            self._enqueue(_marked_copy(span, sent) if sent else span)
        except Exception:  # noqa: BLE001 - monitoring must never raise into the workflow
            logger.debug("Queueing ended span %r failed", span, exc_info=True)

    def _start_progress_thread(self) -> None:
        with self._open_lock:
            if self._progress_thread is not None:
                return
            thread = threading.Thread(
                target=self._report_progress, name="kaygraph-otel-live-progress", daemon=True
            )
            self._progress_thread = thread
        thread.start()

    def _report_progress(self) -> None:
        delay = self._schedule_delay_millis / 1000
        while not self._progress_stop.wait(delay):
            try:
                self.report_progress()
            except Exception:  # noqa: BLE001 - a failed look is retried at the next interval
                logger.debug("Reporting progress of open spans failed", exc_info=True)

    def report_progress(self) -> int:
        """Queue a copy of each open span that has events not yet sent; return how many."""
        queued = 0
        with self._open_lock:
            for span_id, (span, sent) in list(self._open.items()):
                events = span.events
                if len(events) <= sent or span.end_time is not None:
                    continue
                copy = _pending_copy(span, sent, events)
                self._open[span_id] = (span, len(events))
                self._enqueue(copy)
                queued += 1
        return queued

    def _enqueue(self, span: ReadableSpan) -> None:
        # The SDK would drop the oldest span of a full queue without telling the
        # exporter, so the processor drops the new one itself and counts its events.
        queue = self._queue
        if queue is not None and len(queue) >= self._max_queue_size:
            self._count_queue_full(span)
            return
        self._batch.on_end(span)

    def _count_queue_full(self, span: ReadableSpan) -> None:
        # This runs on the workflow's thread, so the events are estimated, not encoded.
        drops = getattr(self._exporter, "drops", None)
        if not isinstance(drops, DropReporter):
            return
        count = estimate_events(span, self._include_started())
        message = f"span queue is full (max_queue_size={self._max_queue_size})"
        drops.record(count, "queue_full", message)

    def _include_started(self) -> bool:
        return bool(getattr(self._exporter, "include_started", False))

    def shutdown(self) -> None:
        """Export the queue, then shut down the exporter, within ``shutdown_timeout_millis``.

        On timeout the spans still queued are discarded, and their estimated events
        are counted as ``shutdown`` drops in the exporter's ``drops``, if it has them.
        """
        self._shutdown = True
        self._progress_stop.set()
        finished, _ = _call_with_timeout(self._batch.shutdown, self._shutdown_timeout_millis)
        if finished:
            return
        dropped = self._discard_queue()
        message = f"shutdown did not finish within {self._shutdown_timeout_millis} ms"
        drops = getattr(self._exporter, "drops", None)
        if isinstance(drops, DropReporter):
            drops.record(dropped, "shutdown", message, log=False)
        # NOTE: the events of the batch that the exporter is still sending are not counted here.
        logger.warning(
            "LiveSpanProcessor for %r did not shut down within %d ms; dropped about %d queued "
            "events, and spans still being exported may be lost",
            self._exporter,
            self._shutdown_timeout_millis,
            dropped,
        )

    def _discard_queue(self) -> int:
        # Each pop takes a span that the SDK's worker can no longer export, so no span
        # is both exported and counted as dropped.
        queue = self._queue
        include_started = self._include_started()
        count = 0
        while queue:
            try:
                span = queue.pop()
            except IndexError:
                break
            count += estimate_events(span, include_started)
        return count

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export every queued span and flush the exporter; False after shutdown or on timeout."""
        if self._shutdown:
            return False
        deadline = time.monotonic() + max(0, timeout_millis) / 1000
        finished, flushed = _call_with_timeout(
            lambda: self._batch.force_flush(timeout_millis), timeout_millis
        )
        if not finished or flushed is not True:
            return False
        remaining_millis = max(0, int((deadline - time.monotonic()) * 1000))
        return bool(self._exporter.force_flush(remaining_millis))


def estimate_events(span: ReadableSpan, include_started: bool) -> int:
    """Estimate how many schema events the encoder makes of ``span``, without encoding it.

    The estimate counts the span events with schema event names from the
    ``kaygraph.live.first_event`` marker on, plus the ``execution_time`` and
    ``transition`` events of an ended span. It is exact for node, graph and
    workflow spans. For phase and batch item spans, and for a transition that the
    encoder leaves out because the node failed, it can be one or two too high.
    """
    attributes = span.attributes or {}
    first_event = attributes.get(LIVE_FIRST_EVENT)
    if span.end_time is None and first_event is None:
        return 1
    skip_before = first_event if isinstance(first_event, int) else 0
    count = 0
    for position, span_event in enumerate(span.events):
        name = span_event.name
        if position < skip_before or name not in EVENT_TYPES:
            continue
        if name in _STARTED and not include_started:
            continue
        count += 1
    if span.end_time is not None:
        count += 2 if NEXT_NODE_ID in attributes else 1
    return count


def _sdk_queue(batch: BatchSpanProcessor) -> collections.deque[ReadableSpan] | None:
    # The queue is a private attribute of the SDK's BatchProcessor (opentelemetry-sdk
    # 1.45). Without it, the processor leaves a full queue to the SDK, which drops
    # spans without counting them here.
    processor = getattr(batch, "_batch_processor", None)
    queue = getattr(processor, "_queue", None)
    return queue if isinstance(queue, collections.deque) else None


def _call_with_timeout(function: Callable[[], T], timeout_millis: int) -> tuple[bool, T | None]:
    """Call ``function`` and wait up to ``timeout_millis`` for it.

    Returns:
        Whether it returned in time, and what it returned (None when it raised or
        did not return in time). The call runs on a daemon thread, which keeps
        running after a timeout.
    """
    outcome: list[T] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(function())
        except Exception:  # noqa: BLE001 - the caller only learns that the call failed
            logger.debug("%r raised", function, exc_info=True)
        finally:
            done.set()

    thread = threading.Thread(target=run, name="kaygraph-otel-flush", daemon=True)
    try:
        thread.start()
    except RuntimeError:
        # New threads cannot start while the interpreter finalizes, so the call runs here.
        run()
    if not done.wait(max(0, timeout_millis) / 1000):
        return False, None
    return True, outcome[0] if outcome else None


def _is_kaygraph_span(span: ReadableSpan) -> bool:
    attributes = span.attributes
    return attributes is not None and NODE_KIND in attributes


def _is_sampled_kaygraph_span(span: ReadableSpan) -> bool:
    context = span.context
    return context is not None and context.trace_flags.sampled and _is_kaygraph_span(span)


def _reset_after_fork(reference: weakref.ref[LiveSpanProcessor]) -> None:
    processor = reference()
    if processor is None:
        return
    # The progress thread does not exist in a forked child; the next span starts a new one.
    processor._open_lock = threading.Lock()
    processor._open = {}
    processor._progress_thread = None
    processor._progress_stop = threading.Event()


def _pending_copy(span: Span, first_event: int | None, events: tuple = ()) -> ReadableSpan:
    """Return a copy of an open span: its start (``first_event`` None) or its events so far."""
    # In on_start this runs on the thread that started the span, before the span is
    # returned, so nothing else can be changing its attributes while they are copied.
    attributes = dict(span.attributes or {})
    attributes[PENDING] = True
    if first_event is not None:
        attributes[LIVE_FIRST_EVENT] = first_event
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=tuple(span.links),
        kind=span.kind,
        start_time=span.start_time,
        end_time=None,
        instrumentation_scope=span.instrumentation_scope,
    )


def _marked_copy(span: ReadableSpan, first_event: int) -> ReadableSpan:
    """Return the ended span with a marker saying its first ``first_event`` events were sent."""
    attributes = dict(span.attributes or {})
    attributes[LIVE_FIRST_EVENT] = first_event
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events,
        links=span.links,
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


def validate_schedule_delay(value: object, name: str) -> None:
    """Check a schedule delay in milliseconds: a whole number from 1 to 60000.

    Args:
        value: the delay to check.
        name: the argument or environment variable it came from, for the message.

    Raises:
        ValueError: ``value`` is not a whole number (bool included) or is out of range.
    """
    # The SDK's worker waits this long between exports, so a huge delay would never
    # export, and one beyond what threading accepts kills the worker thread.
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not MIN_SCHEDULE_DELAY_MILLIS <= value <= MAX_SCHEDULE_DELAY_MILLIS
    ):
        raise ValueError(
            f"{name} must be a whole number of milliseconds from {MIN_SCHEDULE_DELAY_MILLIS} "
            f"to {MAX_SCHEDULE_DELAY_MILLIS}, got {value!r}; the default is 200"
        )


def _validate_sizes(
    schedule_delay_millis: int, max_queue_size: int, max_export_batch_size: int
) -> None:
    validate_schedule_delay(schedule_delay_millis, "schedule_delay_millis")
    if max_queue_size <= 0:
        raise ValueError(
            f"max_queue_size must be positive, got {max_queue_size!r}. The default is 8192"
        )
    if not 0 < max_export_batch_size <= max_queue_size:
        raise ValueError(
            f"max_export_batch_size must be between 1 and max_queue_size ({max_queue_size}), "
            f"got {max_export_batch_size!r}"
        )
