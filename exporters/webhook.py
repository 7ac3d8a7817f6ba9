"""Export kaygraph-otel schema events to an HTTP endpoint as signed webhook requests.

Usage::

    from opentelemetry.sdk.trace import TracerProvider
    from kaygraph_otel_exporters import LiveSpanProcessor, WebhookSpanExporter

    exporter = WebhookSpanExporter("https://hooks.example.internal/kaygraph", secret="whsec_...")
    provider = TracerProvider()
    provider.add_span_processor(LiveSpanProcessor(exporter))

Each request is a ``POST`` of ``{"events": [...]}`` (schema events in the order
the spans produced them) with ``Content-Type: application/json``, signed the
Standard Webhooks way: ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature`` headers, the last an HMAC-SHA256 over
``id.timestamp.body``. A receiver checks a request with
``standardwebhooks.Webhook(secret).verify(body, headers)`` and drops repeats by
``webhook-id``, which stays the same on every retry of a body. The timestamp
and signature are renewed per attempt.

Delivery
--------
``export`` only encodes the events, packs them into bodies of at most
``max_body_bytes`` and queues them. One daemon thread per exporter sends them,
so a slow or failing endpoint never holds up the SDK's export thread. The
queue holds at most ``max_queue_bytes`` of bodies; a body that does not fit is
dropped (``queue_full``). A single event larger than ``max_body_bytes`` is
dropped (``too_large``).

Responses, per attempt:

- 2xx: delivered.
- 429, and 503 with ``Retry-After``: retried after the header's delay (seconds
  or an HTTP date, capped at ``max_retry_after_seconds``).
- Other 5xx, 408, timeouts and connection errors: retried with exponential
  backoff and jitter, up to ``max_attempts`` attempts in all. An attempt that
  takes longer than ``attempt_timeout`` in all, such as one to an endpoint that
  trickles its response, is aborted and counts as a timeout.
- 3xx: not followed and not retried (``redirect``).
- 410: the endpoint is gone. The exporter logs it once and drops this and every
  later body (``gone``).
- 413: not retried (``too_large``). Other 4xx: not retried (``rejected``).

Connection errors, timeouts, 5xx and 408 count toward the circuit breaker.
Responses that reject the body, and 429, do not. While the circuit is open,
``export`` drops events without queueing them.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SpanExportResult

from kaygraph_otel.version import __version__
from kaygraph_otel_exporters._base import Event, SchemaEventExporter
from kaygraph_otel_exporters._breaker import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_RESET_SECONDS,
    CircuitOpenError,
)
from kaygraph_otel_exporters._deadline import attempt_deadline, deadline_passed, deadline_transport
from kaygraph_otel_exporters._delivery import Delivery, DeliveryQueue, build_deliveries
from kaygraph_otel_exporters._drops import DEFAULT_LOG_INTERVAL_SECONDS
from kaygraph_otel_exporters._retry import backoff_delay, parse_retry_after
from kaygraph_otel_exporters._signing import WebhookSigner
from kaygraph_otel_exporters._webhook_checks import (
    require_positive_seconds,
    validate_headers,
    validate_sizes,
    validate_url,
)
from kaygraph_otel_exporters.encoder import event_to_json

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 256 * 1024
DEFAULT_MAX_QUEUE_BYTES = 8 * 1024 * 1024
DEFAULT_SHUTDOWN_TIMEOUT_MILLIS = 3000
DEFAULT_ATTEMPT_TIMEOUT_SECONDS = 10.0
# At most this much of a response body is read, so that a keep-alive connection can be reused.
MAX_RESPONSE_BYTES = 64 * 1024
USER_AGENT = f"kaygraph-otel/{__version__}"


class _RejectedError(Exception):
    """The endpoint responded with a status that retrying will not change."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.reason = reason
        self.status = status


class _RetryableError(Exception):
    """The endpoint responded with a status worth retrying; ``retry_after`` is its delay, if any."""

    def __init__(self, reason: str, status: int, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status}")
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class _RateLimitedError(_RetryableError):
    """HTTP 429: the endpoint is up but rate-limits the sender, so the circuit stays closed."""


class WebhookSpanExporter(SchemaEventExporter):
    """Post the schema events of kaygraph-otel spans to a webhook endpoint, signed.

    Args:
        url: the endpoint, an ``http://`` or ``https://`` URL.
        secret: the signing secret, ``whsec_`` followed by the base64 of a key of
            at least 24 bytes, or the key as bytes. It is never logged.
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for each read of the response.
        write_timeout: seconds to wait for each write of the request.
        pool_timeout: seconds to wait for a free connection in the client's pool.
        attempt_timeout: seconds one attempt may take in all, from connecting to
            reading the response; past it the attempt is aborted as a timeout.
        max_attempts: attempts per body, the first included.
        backoff_initial_seconds: the delay after the first failed attempt; it doubles
            after each further one, with jitter.
        backoff_max_seconds: the maximum backoff delay.
        max_retry_after_seconds: the maximum delay taken from a ``Retry-After`` header.
        max_body_bytes: the largest request body; bigger batches are split.
        max_queue_bytes: the maximum number of body bytes queued for delivery at once.
        breaker_failures: consecutive failed attempts that open the circuit.
        breaker_reset_seconds: seconds the circuit stays open before a trial request.
        shutdown_timeout_millis: the maximum time ``shutdown`` waits for queued bodies. The
            SDK passes what remains of its own 30 s budget, so this cap keeps
            interpreter exit prompt when the endpoint hangs.
        headers: extra request headers, such as an ``Authorization`` header. They are
            never logged and cannot replace the content or signature headers.
        include_started: whether an ended span also yields its started event. A
            ``LiveSpanProcessor`` sets it False; behind a plain ``BatchSpanProcessor``
            keep it True.
        drop_log_interval: minimum number of seconds between two warnings about
            dropped events.

    Raises:
        ValueError: when the URL is not http or https, the secret is invalid, or a
            timeout, size, attempt count, breaker setting or header is out of range.
    """

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        connect_timeout: float = 2.0,
        read_timeout: float = 10.0,
        write_timeout: float = 10.0,
        pool_timeout: float = 2.0,
        attempt_timeout: float = DEFAULT_ATTEMPT_TIMEOUT_SECONDS,
        max_attempts: int = 5,
        backoff_initial_seconds: float = 0.5,
        backoff_max_seconds: float = 30.0,
        max_retry_after_seconds: float = 60.0,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        breaker_failures: int = DEFAULT_FAILURE_THRESHOLD,
        breaker_reset_seconds: float = DEFAULT_RESET_SECONDS,
        shutdown_timeout_millis: int = DEFAULT_SHUTDOWN_TIMEOUT_MILLIS,
        headers: Mapping[str, str] | None = None,
        include_started: bool = True,
        drop_log_interval: float = DEFAULT_LOG_INTERVAL_SECONDS,
    ) -> None:
        target = validate_url(url)
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("read_timeout", read_timeout),
            ("write_timeout", write_timeout),
            ("pool_timeout", pool_timeout),
            ("attempt_timeout", attempt_timeout),
            ("backoff_initial_seconds", backoff_initial_seconds),
            ("backoff_max_seconds", backoff_max_seconds),
            ("max_retry_after_seconds", max_retry_after_seconds),
        ):
            require_positive_seconds(name, value)
        validate_sizes(max_attempts, max_body_bytes, max_queue_bytes, shutdown_timeout_millis)
        self._extra_headers = validate_headers(headers)
        self._signer = WebhookSigner(secret)

        super().__init__(
            name=type(self).__name__,
            target=target,
            logger=logger,
            include_started=include_started,
            drop_log_interval=drop_log_interval,
            breaker_failures=breaker_failures,
            breaker_reset_seconds=breaker_reset_seconds,
            breaker_exclude=(_RejectedError, _RateLimitedError),
        )
        self._url = url
        self._timeout = httpx.Timeout(
            connect=connect_timeout, read=read_timeout, write=write_timeout, pool=pool_timeout
        )
        self._attempt_timeout = float(attempt_timeout)
        self._max_attempts = max_attempts
        self._backoff_initial = float(backoff_initial_seconds)
        self._backoff_max = float(backoff_max_seconds)
        self._max_retry_after = float(max_retry_after_seconds)
        self._max_body_bytes = max_body_bytes
        self._max_queue_bytes = max_queue_bytes
        self._shutdown_timeout_millis = shutdown_timeout_millis
        self._endpoint_gone = threading.Event()
        self._init_delivery_state()

    def _init_delivery_state(self) -> None:
        self._queue = DeliveryQueue(self._max_queue_bytes)
        self._client = self._new_client()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._abandon = threading.Event()
        self._retries = 0

    def _new_client(self) -> httpx.Client:
        # One delivery thread sends one request at a time, so one connection is enough.
        return httpx.Client(
            timeout=self._timeout,
            follow_redirects=False,
            transport=deadline_transport(
                httpx.Limits(max_connections=1, max_keepalive_connections=1)
            ),
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
        )

    @property
    def url(self) -> str:
        """The endpoint, as given. It may contain credentials, so log ``target`` instead."""
        return self._url

    @property
    def target(self) -> str:
        """The endpoint with any password or token replaced, for log lines."""
        return self._target

    def _submit(self, events: list[Event]) -> SpanExportResult:
        if self._endpoint_gone.is_set():
            self.drops.record(len(events), "gone", "the endpoint responded 410 Gone")
            return SpanExportResult.FAILURE
        if not self.breaker.allows_call():
            self.drops.record(len(events), "circuit_open", self.breaker.describe_open())
            return SpanExportResult.FAILURE

        deliveries, too_large = build_deliveries(
            [event_to_json(event) for event in events], self._max_body_bytes
        )
        result = SpanExportResult.SUCCESS
        if too_large:
            self.drops.record(
                too_large, "too_large", f"event larger than max_body_bytes={self._max_body_bytes}"
            )
            result = SpanExportResult.FAILURE
        for delivery in deliveries:
            if not self._queue.put(delivery):
                self.drops.record(
                    delivery.event_count,
                    "queue_full",
                    f"delivery queue is full (max_queue_bytes={self._max_queue_bytes})",
                )
                result = SpanExportResult.FAILURE
        self._ensure_worker()
        return result

    def _send(self, events: list[Event]) -> None:
        # Events go through _submit and the delivery thread, so nothing calls _send.
        raise NotImplementedError("WebhookSpanExporter delivers on its own thread")

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is not None:
                return
            self._worker = threading.Thread(
                target=self._run_worker, name="kaygraph-otel-webhook", daemon=True
            )
            self._worker.start()

    def _run_worker(self) -> None:
        queue, client = self._queue, self._client
        try:
            while (delivery := queue.get()) is not None:
                try:
                    self._deliver(delivery, client)
                except Exception as exc:  # noqa: BLE001 - the thread must outlive a bug
                    logger.debug("Delivering %s failed", delivery.webhook_id, exc_info=True)
                    self.drops.record(delivery.event_count, "unexpected_error", exc)
                finally:
                    queue.task_done()
        finally:
            client.close()

    def _deliver(self, delivery: Delivery, client: httpx.Client) -> None:
        last_reason, last_error = "circuit_open", ""
        for attempt in range(1, self._max_attempts + 1):
            if self._endpoint_gone.is_set():
                self.drops.record(delivery.event_count, "gone", "the endpoint responded 410 Gone")
                return
            if self._abandon.is_set():
                self.drops.record(delivery.event_count, "shutdown", "the exporter shut down")
                return
            try:
                self.breaker.call(self._post, delivery, client)
            except CircuitOpenError as exc:
                # A body whose own failures opened the circuit is counted under their cause.
                reason = "circuit_open" if attempt == 1 else last_reason
                self.drops.record(delivery.event_count, reason, last_error or exc)
                return
            except _RejectedError as exc:
                self._reject(delivery, exc)
                return
            except _RetryableError as exc:
                last_reason, last_error, delay = exc.reason, str(exc), exc.retry_after
            except httpx.TimeoutException as exc:
                last_reason, last_error, delay = "timeout", _describe(exc), None
            except httpx.TransportError as exc:
                last_reason, last_error, delay = "connection", _describe(exc), None
            else:
                self._record_exported(delivery.event_count)
                return

            if attempt == self._max_attempts:
                break
            if delay is None:
                delay = backoff_delay(attempt, self._backoff_initial, self._backoff_max)
            self._retries += 1
            logger.debug(
                "Webhook %s attempt %d of %d failed (%s); retrying in %.2f s",
                delivery.webhook_id,
                attempt,
                self._max_attempts,
                last_error,
                delay,
            )
            if self._abandon.wait(delay):
                self.drops.record(delivery.event_count, "shutdown", "the exporter shut down")
                return
        self.drops.record(delivery.event_count, last_reason, last_error)

    def _post(self, delivery: Delivery, client: httpx.Client) -> None:
        timestamp = datetime.datetime.now(datetime.timezone.utc)
        headers = dict(self._extra_headers)
        headers.update(self._signer.headers(delivery.webhook_id, timestamp, delivery.body))
        with attempt_deadline(self._attempt_timeout):
            with client.stream(
                "POST", self._url, content=delivery.body, headers=headers
            ) as response:
                _read_some(response, self._attempt_timeout)
                status = response.status_code
                retry_after = response.headers.get("retry-after")
        _raise_for_status(status, retry_after, self._max_retry_after)

    def _reject(self, delivery: Delivery, error: _RejectedError) -> None:
        if error.reason == "gone" and not self._endpoint_gone.is_set():
            self._endpoint_gone.set()
            logger.warning(
                "%s: %s responded 410 Gone, so no more events are sent to it. Later events are "
                "dropped and counted; create a new exporter to send again",
                self._name,
                self._target,
            )
        self.drops.record(delivery.event_count, error.reason, error)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Wait until every queued body is delivered or dropped; False if time ran out first."""
        return self._queue.join(max(0, timeout_millis) / 1000)

    def _close(self, timeout_millis: int | None) -> None:
        budget = self._shutdown_timeout_millis
        if timeout_millis is not None:
            budget = min(budget, max(0, timeout_millis))
        delivered = self._queue.join(budget / 1000)

        # Stop retries and waits, and drop what is still queued. A request that is in
        # progress finishes within its timeouts on the daemon thread, which then
        # closes the client, so the interpreter can exit without waiting for it.
        self._abandon.set()
        left = self._queue.close()
        if left:
            self.drops.record(
                sum(delivery.event_count for delivery in left),
                "shutdown",
                f"shutdown did not deliver within {budget} ms",
            )
        with self._worker_lock:
            worker = self._worker
        if worker is None:
            self._client.close()
        if not delivered:
            logger.warning(
                "%s shut down before delivering to %s: %d queued bodies were dropped and a "
                "request may still be in progress",
                self._name,
                self._target,
                len(left),
            )

    def close(self) -> None:
        """Shut down: wait up to ``shutdown_timeout_millis`` for delivery, then close the client."""
        self.shutdown()

    def stats(self) -> dict[str, Any]:
        """Return the counts of ``SchemaEventExporter.stats`` plus the delivery queue's.

        Extra keys: ``queued_events`` and ``queued_bytes`` (waiting, not counting the
        body in progress), ``pending_deliveries`` (bodies queued or in progress),
        ``retries`` (attempts after the first) and ``endpoint_gone`` (the endpoint
        responded 410 Gone).
        """
        stats = super().stats()
        stats.update(
            queued_events=self._queue.queued_events,
            queued_bytes=self._queue.queued_bytes,
            pending_deliveries=self._queue.unfinished,
            retries=self._retries,
            endpoint_gone=self._endpoint_gone.is_set(),
        )
        return stats

    def _reset_connections_after_fork(self) -> None:
        # The parent keeps delivering what it queued, on its own connection. The child
        # starts with an empty queue, a new client and no delivery thread. The inherited
        # client is dropped without being closed, because it shares sockets with the parent.
        endpoint_gone = self._endpoint_gone.is_set()
        self._endpoint_gone = threading.Event()
        if endpoint_gone:
            self._endpoint_gone.set()
        self._init_delivery_state()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self._target!r})"


def _raise_for_status(status: int, retry_after: str | None, max_retry_after: float) -> None:
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        raise _RejectedError("redirect", status)
    if status == 410:
        raise _RejectedError("gone", status)
    if status == 413:
        raise _RejectedError("too_large", status)
    if status == 429:
        raise _RateLimitedError(
            "rate_limited", status, parse_retry_after(retry_after, max_retry_after)
        )
    if status == 503:
        raise _RetryableError(
            "backend_error", status, parse_retry_after(retry_after, max_retry_after)
        )
    if status == 408 or status >= 500 or status < 200:
        raise _RetryableError("backend_error", status, None)
    raise _RejectedError("rejected", status)


def _read_some(response: httpx.Response, attempt_timeout: float) -> None:
    read = 0
    for chunk in response.iter_raw():
        if deadline_passed():
            raise httpx.ReadTimeout(
                f"the response took longer than attempt_timeout={attempt_timeout} s"
            )
        read += len(chunk)
        if read > MAX_RESPONSE_BYTES:
            # Leaving the body unread makes httpx close this connection instead of reusing it.
            return


def _describe(error: Exception) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
