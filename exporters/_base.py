"""The shared part of exporters that turn kaygraph-otel spans into schema events."""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Sequence
from typing import Any

from kaygraph_otel_exporters._drops import DropReporter
from kaygraph_otel_exporters.encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

Event = dict[str, Any]


class SchemaEventExporter(SpanExporter, abc.ABC):
    """Encode each batch of spans as schema events and hand them to ``_send``.

    Subclasses implement ``_send`` and ``_classify``. ``export`` never raises: an
    error while encoding or sending drops the batch, counts its events in ``drops``
    and returns FAILURE.

    Args:
        name: the exporter's name in log lines and metrics.
        target: where events go, already stripped of secrets, for log lines.
        logger: the subclass's module logger.
        include_started: whether an ended span also yields its ``node_started`` or
            ``workflow_started`` event. Leave it False behind a ``LiveSpanProcessor``,
            which sends that event when the span starts. Set it True behind a plain
            ``BatchSpanProcessor`` or ``SimpleSpanProcessor``.
        drop_log_interval: minimum number of seconds between two drop warnings.
    """

    def __init__(
        self,
        *,
        name: str,
        target: str,
        logger: logging.Logger,
        include_started: bool,
        drop_log_interval: float,
    ) -> None:
        self._logger = logger
        self._include_started = include_started
        self._shutdown_event = threading.Event()
        self.drops = DropReporter(name, target, logger, log_interval=drop_log_interval)

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
        """Encode ``spans`` and pass all their events to one ``_send`` call. Never raises."""
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
            self._send(events)
        except Exception as exc:  # noqa: BLE001 - export must never raise into the SDK
            reason = self._classify(exc)
            if reason == "unexpected_error":
                self._logger.debug("Unexpected error while sending events", exc_info=True)
            self.drops.record(len(events), reason, exc)
            return SpanExportResult.FAILURE

        self.drops.record_success()
        return SpanExportResult.SUCCESS

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

    def shutdown(self) -> None:
        """Reject later exports and release the backend's resources."""
        if self._shutdown_event.is_set():
            return
        self._shutdown_event.set()
        self._close()

    def _close(self) -> None:
        """Release the backend's resources. The default has none."""

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Return True: every export sends its events before it returns, so nothing is buffered."""
        return True
