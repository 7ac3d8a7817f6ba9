"""The shared part of exporters that turn kaygraph-otel spans into schema events."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from kaygraph_otel_exporters._breaker import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_RESET_SECONDS,
    CircuitOpenError,
    ExportBreaker,
)
from kaygraph_otel_exporters._drops import DropReporter
from kaygraph_otel_exporters._fork import register_fork_reset
from kaygraph_otel_exporters.encoder import encode_spans

Event = dict[str, Any]


class SchemaEventExporter(SpanExporter, abc.ABC):
    """Encode each batch of spans as schema events and send them through a circuit breaker.

    Subclasses implement ``_send`` and ``_classify``. ``export`` never raises: an
    error while encoding or sending drops the batch, counts its events in ``drops``
    and returns FAILURE. After ``breaker_failures`` consecutive failed sends the
    circuit opens, and for ``breaker_reset_seconds`` every batch is dropped with
    reason ``circuit_open`` without calling ``_send``.

    A subclass that delivers on its own thread overrides ``_submit`` to queue the
    events, and calls ``breaker.call`` itself.

    Args:
        name: the exporter's name in log lines and metrics.
        target: where events go, already stripped of secrets, for log lines.
        logger: the subclass's module logger.
        include_started: whether an ended span also yields its ``node_started`` or
            ``workflow_started`` event. Leave it False behind a ``LiveSpanProcessor``,
            which sends that event when the span starts. Set it True behind a plain
            ``BatchSpanProcessor`` or ``SimpleSpanProcessor``.
        drop_log_interval: minimum number of seconds between two drop warnings.
        breaker_failures: consecutive failed sends that open the circuit.
        breaker_reset_seconds: seconds the circuit stays open before a trial send.
        breaker_exclude: exception types raised by ``_send`` that mean the backend
            responded and rejected the batch, so they do not count as failures.

    Raises:
        ValueError: when a breaker setting is out of range.
    """

    def __init__(
        self,
        *,
        name: str,
        target: str,
        logger: logging.Logger,
        include_started: bool,
        drop_log_interval: float,
        breaker_failures: int = DEFAULT_FAILURE_THRESHOLD,
        breaker_reset_seconds: float = DEFAULT_RESET_SECONDS,
        breaker_exclude: tuple[type[BaseException], ...] = (),
    ) -> None:
        self._name = name
        self._target = target
        self._logger = logger
        self._include_started = include_started
        self._shutdown_event = threading.Event()
        self.breaker = ExportBreaker(
            name,
            target,
            logger,
            failure_threshold=breaker_failures,
            reset_seconds=breaker_reset_seconds,
            exclude=breaker_exclude,
        )
        self.drops = DropReporter(name, target, logger, log_interval=drop_log_interval)
        self._counts_lock = threading.Lock()
        self._exported_events = 0
        self._exported_batches = 0
        register_fork_reset(self)

    @property
    def include_started(self) -> bool:
        """Whether ended spans also yield their started event."""
        return self._include_started

    def set_include_started(self, include_started: bool) -> None:
        """Set whether ended spans also yield their started event.

        ``LiveSpanProcessor`` calls this with False because it exports the started
        event from a pending copy of the span as soon as the span starts.
        """
        self._include_started = include_started

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode ``spans`` and pass all their events to ``_submit``; no ``Exception`` escapes."""
        if self._shutdown_event.is_set():
            self._logger.debug("Export called after shutdown. Ignoring %d spans", len(spans))
            return SpanExportResult.FAILURE

        try:
            events = encode_spans(spans, include_started=self._include_started)
        except Exception as exc:  # noqa: BLE001 - a bug in encoding must not reach the SDK
            self._logger.debug("Encoding %d spans failed", len(spans), exc_info=True)
            # The events of a span that failed to encode are unknown, so spans are counted.
            self.drops.record(len(spans), "encode_error", exc)
            return SpanExportResult.FAILURE
        if not events:
            return SpanExportResult.SUCCESS

        try:
            return self._submit(events)
        except Exception as exc:  # noqa: BLE001 - export must never raise into the SDK
            self._logger.debug("Submitting %d events failed", len(events), exc_info=True)
            self.drops.record(len(events), "unexpected_error", exc)
            return SpanExportResult.FAILURE

    def _submit(self, events: list[Event]) -> SpanExportResult:
        """Send ``events`` now, through the circuit breaker."""
        if not self.breaker.allows_call():
            self.drops.record(len(events), "circuit_open", self.breaker.describe_open())
            return SpanExportResult.FAILURE
        try:
            self.breaker.call(self._send, events)
        except CircuitOpenError as exc:
            self.drops.record(len(events), "circuit_open", exc)
            return SpanExportResult.FAILURE
        except Exception as exc:  # noqa: BLE001 - export must never raise into the SDK
            reason = self._classify(exc)
            if reason == "unexpected_error":
                self._logger.debug("Unexpected error while sending events", exc_info=True)
            self.drops.record(len(events), reason, exc)
            return SpanExportResult.FAILURE
        self._record_exported(len(events))
        return SpanExportResult.SUCCESS

    def _record_exported(self, count: int) -> None:
        """Count ``count`` events as delivered and log drops not yet reported."""
        with self._counts_lock:
            self._exported_events += count
            self._exported_batches += 1
        self.drops.record_success()

    @abc.abstractmethod
    def _send(self, events: list[Event]) -> None:
        """Send ``events`` in order, raising on failure."""

    def _classify(self, error: Exception) -> str:
        """Return the drop reason for ``error``. Subclasses name their backend's errors."""
        if isinstance(error, TimeoutError):
            return "timeout"
        if isinstance(error, OSError):
            return "os_error"
        return "unexpected_error"

    def stats(self) -> dict[str, Any]:
        """Return counts of delivered and dropped events and the circuit state.

        Keys: ``exporter``, ``target``, ``exported_events``, ``exported_batches``
        (successful sends), ``dropped_events``, ``dropped_by_reason``,
        ``circuit_state`` (``closed``, ``open`` or ``half-open``),
        ``circuit_opened`` (times the circuit opened) and ``consecutive_failures``.
        Subclasses add their own keys.
        """
        with self._counts_lock:
            exported_events, exported_batches = self._exported_events, self._exported_batches
        return {
            "exporter": self._name,
            "target": self._target,
            "exported_events": exported_events,
            "exported_batches": exported_batches,
            "dropped_events": self.drops.total,
            "dropped_by_reason": self.drops.by_reason(),
            "circuit_state": self.breaker.state,
            "circuit_opened": self.breaker.opened_count,
            "consecutive_failures": self.breaker.consecutive_failures,
        }

    def shutdown(self, timeout_millis: int | None = None) -> None:
        """Reject later exports and release the backend's resources.

        Args:
            timeout_millis: the maximum time, in milliseconds, that the call waits for
                queued events, for subclasses that queue them. This class queues nothing.
        """
        if self._shutdown_event.is_set():
            return
        self._shutdown_event.set()
        self._close(timeout_millis)

    def _close(self, timeout_millis: int | None) -> None:
        """Release the backend's resources. The default has none."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Return True: this class sends each batch before ``export`` returns."""
        return True

    def _after_fork_in_child(self) -> None:
        """Recreate locks, the breaker and backend connections in a forked child."""
        self._counts_lock = threading.Lock()
        self.drops.reinit_after_fork()
        self.breaker.reinit_after_fork()
        self._reset_connections_after_fork()

    def _reset_connections_after_fork(self) -> None:
        """Drop connections inherited from the parent. The default has none."""
