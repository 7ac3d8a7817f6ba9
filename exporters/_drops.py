"""Drop accounting for exporters: count dropped events by reason, warn at most once per interval.

An exporter whose backend is down fails every batch. Logging each failure would
flood the application's log, so ``DropReporter`` counts every dropped event and
writes one WARNING per interval that carries the count since the previous one.
The counts are also recorded on the OpenTelemetry counter
``kaygraph_otel.exporter.dropped_events`` with the attributes ``exporter`` (the
exporter class name) and ``reason``. The counter is a no-op until the
application sets a meter provider.

Reasons used by the exporters in this package:

- ``connection``, ``timeout``, ``authentication``, ``redis_error``, ``os_error``:
  the backend could not be reached or failed while the batch was sent.
- ``backend_error``: the backend responded with a server error (HTTP 5xx) on every attempt.
- ``rate_limited``: the backend responded HTTP 429 on every attempt.
- ``rejected``: the backend refused the batch with an HTTP 4xx status, so it is not retried.
- ``redirect``: the backend responded with a redirect, which is not followed.
- ``gone``: the backend responded HTTP 410, so nothing more is sent to it.
- ``circuit_open``: the circuit breaker was open, so no call was made.
- ``queue_full``: a bounded queue had no room for the batch.
- ``too_large``: one event, or the batch the backend refused with HTTP 413, exceeds
  the size limit.
- ``shutdown``: the exporter shut down before the batch could be delivered.
- ``encode_error``, ``unexpected_error``: a bug; the debug log has the traceback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from opentelemetry import metrics

DEFAULT_LOG_INTERVAL_SECONDS = 30.0
DROPPED_EVENTS_METRIC = "kaygraph_otel.exporter.dropped_events"

_meter = metrics.get_meter("kaygraph_otel_exporters")
_dropped_counter = _meter.create_counter(
    DROPPED_EVENTS_METRIC,
    unit="{event}",
    description="Schema events that an exporter dropped, by exporter and reason.",
)


class DropReporter:
    """Thread-safe counter of dropped events with a rate-limited WARNING log.

    Args:
        exporter: name of the exporter, used in log lines and as a metric attribute.
        target: where the exporter sends events, already stripped of secrets.
        logger: the logger that receives the warnings, normally the exporter's module logger.
        log_interval: minimum number of seconds between two warnings.
        clock: monotonic clock in seconds. Tests may pass their own.
    """

    def __init__(
        self,
        exporter: str,
        target: str,
        logger: logging.Logger,
        *,
        log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if log_interval < 0:
            raise ValueError(
                f"log_interval must be zero or more seconds, got {log_interval!r}; "
                "pass 0 to log every failure"
            )
        self._exporter = exporter
        self._target = target
        self._logger = logger
        self._log_interval = log_interval
        self._clock = clock
        self._lock = threading.Lock()
        self._by_reason: dict[str, int] = {}
        self._total = 0
        self._unlogged = 0
        self._last_log: float | None = None

    def record(
        self, count: int, reason: str, error: BaseException | str, *, log: bool = True
    ) -> None:
        """Count ``count`` dropped events and log a warning unless one was logged recently.

        Args:
            count: number of events dropped.
            reason: short machine-readable cause, such as ``"connection"`` or ``"timeout"``.
            error: the exception or message that caused the drop.
            log: False when the caller logs the drop itself; the next warning still
                includes these events in its count.
        """
        if count <= 0:
            return
        _dropped_counter.add(count, {"exporter": self._exporter, "reason": reason})
        with self._lock:
            self._by_reason[reason] = self._by_reason.get(reason, 0) + count
            self._total += count
            self._unlogged += count
            now = self._clock()
            if not log:
                return
            if self._last_log is not None and now - self._last_log < self._log_interval:
                return
            since_last, total = self._unlogged, self._total
            self._unlogged = 0
            self._last_log = now
        self._logger.warning(
            "%s failed to export to %s: %s (%s). Dropped %d events since the last warning, "
            "%d in total.",
            self._exporter,
            self._target,
            error,
            reason,
            since_last,
            total,
        )

    def record_success(self) -> None:
        """Log, at INFO, the drops not yet reported once an export succeeds again."""
        with self._lock:
            if not self._unlogged:
                return
            since_last, total = self._unlogged, self._total
            self._unlogged = 0
        self._logger.info(
            "%s exports to %s again. Dropped %d more events since the last warning, %d in total.",
            self._exporter,
            self._target,
            since_last,
            total,
        )

    def reinit_after_fork(self) -> None:
        """Recreate the lock in a forked child. The counts are kept."""
        # Another thread of the parent may have held the lock when the process forked.
        self._lock = threading.Lock()

    @property
    def total(self) -> int:
        """Number of events dropped since this reporter was created."""
        with self._lock:
            return self._total

    def by_reason(self) -> dict[str, int]:
        """Return a copy of the dropped-event counts keyed by reason."""
        with self._lock:
            return dict(self._by_reason)
