"""WebhookSpanExporter against real HTTP receivers on 127.0.0.1.

The receivers defined here (``WebhookReceiver``, ``SilentReceiver``) are also
used by the circuit breaker, fault and fork tests.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import random
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from kaygraph_otel import attributes as attrs
from kaygraph_otel_exporters import LiveSpanProcessor, WebhookSpanExporter, configure
from kaygraph_otel_exporters._delivery import BODY_OVERHEAD, build_deliveries
from kaygraph_otel_exporters._retry import backoff_delay, parse_retry_after
from kaygraph_otel_exporters._signing import MIN_SECRET_BYTES, decode_secret
from kaygraph_otel_exporters.encoder import encode_spans, event_to_json
from tests.exporter_support import make_tracer, run_node, schema_errors, start_node_span
from tests.helpers import wait_for

WEBHOOK_LOGGER = "kaygraph_otel_exporters.webhook"
WAIT_S = 10.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# Receivers


@dataclass(frozen=True)
class Reply:
    """How a ``WebhookReceiver`` responds to one request.

    Attributes:
        status: the HTTP status code.
        headers: extra response headers, such as ``Retry-After`` or ``Location``.
        delay: seconds to wait before responding.
        hold: when set, the handler waits for this event (at most ``WAIT_S``) before responding.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hold: threading.Event | None = None


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]
    body: bytes
    client_port: int
    received_at: float


class WebhookReceiver:
    """An HTTP/1.1 server on 127.0.0.1 that records every POST and responds from a script.

    The n-th request gets the n-th scripted ``Reply``; once the script is used up,
    every request gets ``default``.
    """

    def __init__(self, replies: Iterable[Reply] = (), default: Reply | None = None) -> None:
        self._lock = threading.Lock()
        self._replies = list(replies)
        self._default = default or Reply()
        self._requests: list[ReceivedRequest] = []
        self._connections: set[int] = set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                reply = receiver._record(
                    ReceivedRequest(
                        self.path,
                        {name.lower(): value for name, value in self.headers.items()},
                        body,
                        self.client_address[1],
                        time.monotonic(),
                    )
                )
                if reply.hold is not None:
                    reply.hold.wait(WAIT_S)
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:
                    # The client gave up waiting; the request still counts as received.
                    self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def _record(self, request: ReceivedRequest) -> Reply:
        with self._lock:
            self._requests.append(request)
            self._connections.add(request.client_port)
            return self._replies.pop(0) if self._replies else self._default

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/kaygraph"

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self._requests)

    def set_default(self, reply: Reply) -> None:
        with self._lock:
            self._default = reply

    def wait_for_requests(self, count: int, timeout: float = WAIT_S) -> bool:
        return wait_for(lambda: len(self.requests) >= count, timeout=timeout)

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def deliveries_by_id(
    requests: list[ReceivedRequest], secret: str
) -> dict[str, list[dict[str, Any]]]:
    """Verify every request's signature and return the events of each ``webhook-id``, once.

    Raises:
        standardwebhooks.webhooks.WebhookVerificationError: a signature does not verify.
        AssertionError: two requests with one ``webhook-id`` carry different bodies.
    """
    webhook = Webhook(secret)
    bodies: dict[str, bytes] = {}
    events: dict[str, list[dict[str, Any]]] = {}
    for request in requests:
        payload = webhook.verify(request.body, request.headers)
        webhook_id = request.headers["webhook-id"]
        if webhook_id in bodies:
            assert bodies[webhook_id] == request.body, f"retry of {webhook_id} changed its body"
            continue
        bodies[webhook_id] = request.body
        events[webhook_id] = payload["events"]
    return events


class SilentReceiver:
    """A raw TCP server on 127.0.0.1 that reads each request and then never completes a reply.

    ``mode="hang"`` keeps each connection open without a byte of reply until
    ``stop``; ``mode="reset"`` closes it with SO_LINGER 0, which sends a TCP RST.
    ``mode="trickle"`` sends the response headers, then one body byte every
    ``TRICKLE_INTERVAL_S``; ``mode="trickle-headers"`` sends the headers themselves
    that way. Either stops after ``TRICKLE_MAX_BYTES`` bytes or at ``stop``.
    """

    TRICKLE_INTERVAL_S = 0.5
    TRICKLE_MAX_BYTES = 60
    HEADERS = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"

    def __init__(self, mode: str) -> None:
        if mode not in ("hang", "reset", "trickle", "trickle-headers"):
            raise ValueError(
                f"mode must be 'hang', 'reset', 'trickle' or 'trickle-headers', got {mode!r}"
            )
        self.mode = mode
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.accepted = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/kaygraph"

    def _serve(self) -> None:
        while not self._stopping.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
            self._read_request(connection)
            if self.mode == "reset":
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                connection.close()
                continue
            with self._lock:
                self._open.append(connection)
            if self.mode.startswith("trickle"):
                threading.Thread(target=self._trickle, args=(connection,), daemon=True).start()

    def _trickle(self, connection: socket.socket) -> None:
        if self.mode == "trickle-headers":
            data = self.HEADERS[: self.TRICKLE_MAX_BYTES]
        else:
            data = self.HEADERS + b"x" * self.TRICKLE_MAX_BYTES
            connection.sendall(self.HEADERS)
            data = data[len(self.HEADERS) :]
        for index in range(len(data)):
            if self._stopping.wait(self.TRICKLE_INTERVAL_S):
                return
            try:
                connection.sendall(data[index : index + 1])
            except OSError:
                return

    @staticmethod
    def _read_request(connection: socket.socket) -> None:
        connection.settimeout(1.0)
        received = b""
        try:
            while b"\r\n\r\n" not in received:
                chunk = connection.recv(65536)
                if not chunk:
                    return
                received += chunk
        except OSError:
            return

    def __enter__(self) -> SilentReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self._listener.close()
        with self._lock:
            for connection in self._open:
                connection.close()
            self._open.clear()


# Fixtures and helpers


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


def ended_spans(node_ids: Iterable[str]) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    for node_id in node_ids:
        run_node(tracer, node_id)
    provider.shutdown()
    return list(memory.get_finished_spans())


def failed_span(message: str) -> ReadableSpan:
    """Return an ended node span with a ``node_failed`` event whose error message is ``message``."""
    memory = InMemorySpanExporter()
    provider, tracer = make_tracer(SimpleSpanProcessor(memory))
    span = start_node_span(tracer, "big-error")
    span.add_event(
        "node_failed",
        {
            attrs.EVENT_STATE: "failed",
            attrs.EVENT_ERROR_TYPE: "ValueError",
            attrs.EVENT_ERROR_MESSAGE: message,
        },
    )
    span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


def fast_exporter(url: str, secret: str, **kwargs: Any) -> WebhookSpanExporter:
    """An exporter with short timeouts and backoff, so failing cases finish quickly."""
    settings: dict[str, Any] = {
        "connect_timeout": 1.0,
        "read_timeout": 2.0,
        "write_timeout": 2.0,
        "backoff_initial_seconds": 0.02,
        "backoff_max_seconds": 0.1,
        "include_started": True,
    }
    settings.update(kwargs)
    return WebhookSpanExporter(url, secret, **settings)


def all_events(deliveries: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [event for events in deliveries.values() for event in events]


class TestDelivery:
    def test_signed_batch_verifies(self, receiver: WebhookReceiver, secret: str) -> None:
        spans = ended_spans(["load", "summarize"])
        expected = encode_spans(spans, include_started=True)
        exporter = fast_exporter(receiver.url, secret)

        assert exporter.export(spans) is SpanExportResult.SUCCESS
        assert exporter.force_flush(10_000) is True
        exporter.shutdown()

        [request] = receiver.requests
        payload = Webhook(secret).verify(request.body, request.headers)
        assert request.path == "/hooks/kaygraph"
        assert request.headers["content-type"] == "application/json"
        assert request.headers["user-agent"].startswith("kaygraph-otel/")
        assert request.headers["webhook-id"].startswith("msg_")
        assert request.headers["webhook-signature"].startswith("v1,")
        assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
        assert list(payload) == ["events"]
        assert payload["events"] == json.loads(json.dumps(expected))
        for event in payload["events"]:
            assert schema_errors(event) == [], event
        assert exporter.stats()["exported_events"] == len(expected)

    def test_wrong_secret_fails_verification(self, receiver: WebhookReceiver) -> None:
        exporter = fast_exporter(receiver.url, new_secret())
        exporter.export(ended_spans(["a"]))
        assert exporter.force_flush(10_000)
        exporter.shutdown()

        [request] = receiver.requests
        with pytest.raises(WebhookVerificationError, match="No matching signature"):
            Webhook(new_secret()).verify(request.body, request.headers)

    def test_export_only_enqueues(self, secret: str) -> None:
        release = threading.Event()
        with WebhookReceiver([Reply(hold=release)]) as server:
            exporter = fast_exporter(server.url, secret, read_timeout=WAIT_S)
            first, second = ended_spans(["first"]), ended_spans(["second"])

            assert exporter.export(first) is SpanExportResult.SUCCESS
            assert server.wait_for_requests(1)
            # The receiver keeps the first request waiting, yet export returns at once.
            assert exporter.export(second) is SpanExportResult.SUCCESS
            while_waiting = exporter.stats()
            release.set()
            assert exporter.force_flush(10_000) is True
            exporter.shutdown()

        assert while_waiting["pending_deliveries"] == 2
        assert while_waiting["exported_events"] == 0
        assert len(server.requests) == 2
        assert exporter.stats()["exported_batches"] == 2

    def test_live_processor_delivers_workflow(self, receiver: WebhookReceiver, secret: str) -> None:
        exporter = fast_exporter(receiver.url, secret)
        memory = InMemorySpanExporter()
        provider, tracer = make_tracer(
            LiveSpanProcessor(exporter, schedule_delay_millis=20), SimpleSpanProcessor(memory)
        )
        for node_id in ("a", "b", "c"):
            run_node(tracer, node_id)

        assert provider.force_flush(10_000) is True
        provider.shutdown()

        expected = encode_spans(memory.get_finished_spans(), include_started=True)
        received = all_events(deliveries_by_id(receiver.requests, secret))
        assert sorted(event["event_id"] for event in received) == sorted(
            event["event_id"] for event in expected
        )
        started = [event["event_name"] for event in received].count("node_started")
        assert started == 3

    def test_batches_split_under_max_body(self, receiver: WebhookReceiver, secret: str) -> None:
        spans = ended_spans([f"node-{index}" for index in range(15)])
        expected = encode_spans(spans, include_started=True)
        exporter = fast_exporter(receiver.url, secret, max_body_bytes=2048)

        exporter.export(spans)
        assert exporter.force_flush(10_000)
        exporter.shutdown()

        requests = receiver.requests
        assert len(requests) > 1
        for request in requests:
            assert len(request.body) <= 2048
        deliveries = deliveries_by_id(requests, secret)
        assert len(deliveries) == len(requests)
        received = all_events(deliveries)
        assert [event["event_id"] for event in received] == [
            event["event_id"] for event in expected
        ]
        assert exporter.drops.total == 0

    def test_oversized_event_dropped(self, receiver: WebhookReceiver, secret: str) -> None:
        small = ended_spans(["small"])
        big = failed_span("x" * 5000)
        exporter = fast_exporter(receiver.url, secret, max_body_bytes=4096)

        result = exporter.export(small + big)
        assert exporter.force_flush(10_000)
        exporter.shutdown()

        events = encode_spans(small + big, include_started=True)
        received = all_events(deliveries_by_id(receiver.requests, secret))
        assert result is SpanExportResult.FAILURE
        assert exporter.drops.by_reason() == {"too_large": 1}
        assert len(received) == len(events) - 1
        assert "node_failed" not in [event["event_name"] for event in received]

    def test_extra_headers_sent(self, receiver: WebhookReceiver, secret: str) -> None:
        exporter = fast_exporter(receiver.url, secret, headers={"Authorization": "Bearer t0k"})
        exporter.export(ended_spans(["a"]))
        assert exporter.force_flush(10_000)
        exporter.shutdown()

        assert receiver.requests[0].headers["authorization"] == "Bearer t0k"


class TestRetries:
    def test_500_then_429_then_200_delivers_once(self, secret: str) -> None:
        replies = [Reply(500), Reply(429, {"Retry-After": "1"})]
        batches = [
            ended_spans([f"batch{batch}-{index}" for index in range(3)]) for batch in range(3)
        ]
        with WebhookReceiver(replies) as server:
            exporter = fast_exporter(server.url, secret)
            for spans in batches:
                assert exporter.export(spans) is SpanExportResult.SUCCESS
            assert exporter.force_flush(15_000) is True
            exporter.shutdown()
        requests = server.requests

        assert len(requests) == len(batches) + 2
        first_id = requests[0].headers["webhook-id"]
        assert [request.headers["webhook-id"] for request in requests[:3]] == [first_id] * 3
        # Retry-After: 1 was honoured between the second and third attempt.
        assert requests[2].received_at - requests[1].received_at >= 0.95
        deliveries = deliveries_by_id(requests, secret)
        assert len(deliveries) == len(batches)
        for spans, events in zip(batches, deliveries.values(), strict=True):
            expected = encode_spans(spans, include_started=True)
            assert [event["event_id"] for event in events] == [
                event["event_id"] for event in expected
            ]
        stats = exporter.stats()
        assert stats["retries"] == 2
        assert stats["dropped_events"] == 0
        assert stats["exported_batches"] == len(batches)

    def test_503_retry_after_honoured(self, secret: str) -> None:
        with WebhookReceiver([Reply(503, {"Retry-After": "1"})]) as server:
            exporter = fast_exporter(server.url, secret)
            exporter.export(ended_spans(["a"]))
            assert exporter.force_flush(10_000)
            exporter.shutdown()
        first, second = server.requests

        assert second.received_at - first.received_at >= 0.95
        assert exporter.drops.total == 0

    def test_retry_after_capped(self, secret: str) -> None:
        with WebhookReceiver([Reply(429, {"Retry-After": "3600"})]) as server:
            exporter = fast_exporter(server.url, secret, max_retry_after_seconds=0.2)
            exporter.export(ended_spans(["a"]))

            assert server.wait_for_requests(2, timeout=5.0)
            assert exporter.force_flush(5_000)
            exporter.shutdown()

        assert exporter.stats()["exported_batches"] == 1

    @pytest.mark.parametrize(
        ("status", "reason"), [(400, "rejected"), (401, "rejected"), (413, "too_large")]
    )
    def test_client_error_not_retried(self, secret: str, status: int, reason: str) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with WebhookReceiver(default=Reply(status)) as server:
            exporter = fast_exporter(server.url, secret)
            exporter.export(spans)
            assert exporter.force_flush(10_000)
            exporter.shutdown()

        assert len(server.requests) == 1
        assert exporter.drops.by_reason() == {reason: count}
        assert exporter.stats()["circuit_state"] == "closed"

    def test_server_errors_retried_until_attempts_run_out(self, secret: str) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with WebhookReceiver(default=Reply(500)) as server:
            exporter = fast_exporter(server.url, secret, max_attempts=3, breaker_failures=10)
            exporter.export(spans)
            assert exporter.force_flush(10_000)
            exporter.shutdown()

        assert len(server.requests) == 3
        assert len({request.headers["webhook-id"] for request in server.requests}) == 1
        assert exporter.drops.by_reason() == {"backend_error": count}
        assert exporter.stats()["retries"] == 2

    def test_gone_stops_delivery(self, secret: str, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.WARNING, logger=WEBHOOK_LOGGER)
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with WebhookReceiver(default=Reply(410)) as server:
            exporter = fast_exporter(server.url, secret, drop_log_interval=3600)
            exporter.export(spans)
            assert exporter.force_flush(10_000)
            results = [exporter.export(spans) for _ in range(3)]
            assert exporter.force_flush(10_000)
            exporter.shutdown()

        assert len(server.requests) == 1
        assert results == [SpanExportResult.FAILURE] * 3
        assert exporter.drops.by_reason() == {"gone": 4 * count}
        assert exporter.stats()["endpoint_gone"] is True
        gone_lines = [r for r in caplog.records if "410 Gone" in r.getMessage()]
        assert len(gone_lines) == 1

    def test_redirect_not_followed(self, secret: str) -> None:
        spans = ended_spans(["a"])
        count = len(encode_spans(spans, include_started=True))
        with WebhookReceiver() as other:
            redirect = Reply(307, {"Location": other.url})
            with WebhookReceiver(default=redirect) as server:
                exporter = fast_exporter(server.url, secret)
                exporter.export(spans)
                assert exporter.force_flush(10_000)
                exporter.shutdown()

        assert len(server.requests) == 1
        assert other.requests == []
        assert exporter.drops.by_reason() == {"redirect": count}


class TestAttemptDeadline:
    @pytest.mark.parametrize("mode", ["trickle", "trickle-headers"])
    def test_trickling_endpoint_times_out(self, secret: str, mode: str) -> None:
        spans = ended_spans(["slow"])
        with SilentReceiver(mode) as server:
            # Each byte comes well within read_timeout, so only the attempt deadline ends it.
            exporter = fast_exporter(
                server.url, secret, attempt_timeout=1.0, read_timeout=5.0, max_attempts=2
            )
            exporter.export(spans)
            flushed = exporter.force_flush(int(WAIT_S * 1000))
            stats = exporter.stats()
            exporter.shutdown()

        assert flushed
        assert server.accepted == 2
        assert stats["dropped_by_reason"] == {"timeout": len(encode_spans(spans))}
        assert stats["exported_events"] == 0


class TestQueue:
    def test_full_queue_drops_and_counts(self, secret: str) -> None:
        release = threading.Event()
        spans = ended_spans(["a"])
        events = encode_spans(spans, include_started=True)
        count = len(events)
        body = build_deliveries([event_to_json(event) for event in events], 4096)[0][0].body
        with WebhookReceiver([Reply(hold=release)]) as server:
            # The queue has room for exactly one body.
            exporter = fast_exporter(
                server.url,
                secret,
                read_timeout=WAIT_S,
                max_body_bytes=len(body),
                max_queue_bytes=len(body),
            )
            exporter.export(spans)
            assert server.wait_for_requests(1)
            # The first body is in progress, so the queue takes one more and drops the rest.
            results = [exporter.export(spans) for _ in range(4)]
            dropped = exporter.stats()["dropped_by_reason"]
            release.set()
            assert exporter.force_flush(10_000)
            exporter.shutdown()

        assert results[0] is SpanExportResult.SUCCESS
        assert results[1:] == [SpanExportResult.FAILURE] * 3
        assert dropped == {"queue_full": 3 * count}
        assert len(server.requests) == 2

    def test_bodies_pack_in_order(self) -> None:
        texts = [json.dumps({"n": index}) for index in range(50)]

        deliveries, too_large = build_deliveries(texts, 100)

        assert too_large == 0
        for delivery in deliveries:
            assert len(delivery.body) <= 100
        unpacked = [event for d in deliveries for event in json.loads(d.body)["events"]]
        assert unpacked == [{"n": index} for index in range(50)]
        assert sum(delivery.event_count for delivery in deliveries) == 50

    def test_event_exactly_at_limit_fits(self) -> None:
        text = "x" * (200 - BODY_OVERHEAD - 2)
        deliveries, too_large = build_deliveries([json.dumps(text)], 200)

        assert too_large == 0
        assert len(deliveries[0].body) == 200


class TestRetryTiming:
    def test_backoff_doubles_with_jitter(self) -> None:
        rng = random.Random(7)
        for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 10.0)]:
            delay = backoff_delay(attempt, 0.5, 10.0, rng=rng)
            assert ceiling / 2 <= delay <= ceiling, (attempt, delay)

    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("5", 5.0),
            (" 12 ", 12.0),
            ("0", 0.0),
            ("100000", 60.0),
            ("Wed, 21 Oct 2026 07:28:30 GMT", 30.0),
            ("Wed, 21 Oct 2026 07:27:00 GMT", 0.0),
            ("Wed, 21 Oct 2026 09:28:00 GMT", 60.0),
            ("soon", None),
            ("-3", None),
            ("1.5", None),
            (None, None),
        ],
    )
    def test_retry_after_parsed(self, header: str | None, expected: float | None) -> None:
        now = datetime.datetime(2026, 10, 21, 7, 28, 0, tzinfo=datetime.timezone.utc)

        assert parse_retry_after(header, 60.0, now=now) == expected


class TestArguments:
    @pytest.mark.parametrize(
        ("url", "message"),
        [
            ("ftp://127.0.0.1/hook", "unsupported webhook URL scheme 'ftp'"),
            ("redis://127.0.0.1:6379/0", "unsupported webhook URL scheme 'redis'"),
            ("127.0.0.1:8000/hook", "unsupported webhook URL scheme"),
            ("http:///hook", "it has no host"),
            ("http://127.0.0.1:notaport/hook", "invalid webhook URL"),
            ("", "must be a non-empty http:// or https:// URL"),
        ],
    )
    def test_non_http_url_rejected(self, secret: str, url: str, message: str) -> None:
        with pytest.raises(ValueError, match=message) as info:
            WebhookSpanExporter(url, secret)
        assert "http://127.0.0.1:8000/webhook" in str(info.value)

    def test_url_password_not_in_error(self, secret: str) -> None:
        with pytest.raises(ValueError) as info:
            WebhookSpanExporter("ftp://user:hunter2secret@127.0.0.1/hook", secret)
        assert "hunter2secret" not in str(info.value)
        assert "ftp://user:***@127.0.0.1/hook" in str(info.value)

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            ("whsec_not*base64!", "not valid base64"),
            ("whsec_" + base64.b64encode(b"short").decode(), "its key is 5 bytes"),
            ("", "its key is 0 bytes"),
            (12345, "expected a string such as 'whsec_...' or bytes, got int"),
            (b"too short", "its key is 9 bytes"),
        ],
    )
    def test_bad_secret_rejected(self, value: Any, message: str) -> None:
        with pytest.raises(ValueError, match=message) as info:
            WebhookSpanExporter("http://127.0.0.1:9/hook", value)
        assert "generate one with" in str(info.value)
        if isinstance(value, str) and value:
            assert value.removeprefix("whsec_") not in str(info.value)

    def test_secret_formats_accepted(self) -> None:
        key = secrets.token_bytes(MIN_SECRET_BYTES)
        encoded = base64.b64encode(key).decode()

        assert decode_secret("whsec_" + encoded) == key
        assert decode_secret(encoded) == key
        assert decode_secret(encoded.rstrip("=")) == key
        assert decode_secret(key) == key

    @pytest.mark.parametrize(
        "name", ["connect_timeout", "read_timeout", "write_timeout", "pool_timeout"]
    )
    @pytest.mark.parametrize("value", [0, -1.0, None, float("inf")])
    def test_timeouts_must_be_positive(self, secret: str, name: str, value: Any) -> None:
        with pytest.raises(ValueError, match=f"{name} must be a positive, finite number"):
            WebhookSpanExporter("http://127.0.0.1:9/hook", secret, **{name: value})

    def test_queue_smaller_than_body_rejected(self, secret: str) -> None:
        with pytest.raises(ValueError, match="max_queue_bytes .* must be at least max_body_bytes"):
            WebhookSpanExporter(
                "http://127.0.0.1:9/hook", secret, max_body_bytes=4096, max_queue_bytes=1024
            )

    @pytest.mark.parametrize("name", ["webhook-signature", "Content-Type", "WEBHOOK-ID"])
    def test_reserved_header_rejected(self, secret: str, name: str) -> None:
        with pytest.raises(ValueError, match="is set by the exporter and cannot be replaced"):
            WebhookSpanExporter("http://127.0.0.1:9/hook", secret, headers={name: "x"})

    @pytest.mark.parametrize("value", [0, -1.0, None, float("inf")])
    def test_attempt_timeout_must_be_positive(self, secret: str, value: Any) -> None:
        with pytest.raises(ValueError, match="attempt_timeout must be a positive, finite number"):
            WebhookSpanExporter("http://127.0.0.1:9/hook", secret, attempt_timeout=value)

    def test_client_has_explicit_timeouts(self, secret: str) -> None:
        exporter = WebhookSpanExporter(
            "http://127.0.0.1:9/hook",
            secret,
            connect_timeout=1.5,
            read_timeout=3.0,
            write_timeout=4.0,
            pool_timeout=0.5,
        )
        client = exporter._client

        assert client.timeout == httpx.Timeout(connect=1.5, read=3.0, write=4.0, pool=0.5)
        assert client.follow_redirects is False
        exporter.close()


class TestLifecycle:
    def test_close_closes_client(self, receiver: WebhookReceiver, secret: str) -> None:
        exporter = fast_exporter(receiver.url, secret)
        exporter.export(ended_spans(["a"]))
        assert exporter.force_flush(10_000)
        client = exporter._client

        exporter.close()

        assert wait_for(lambda: client.is_closed, timeout=5.0)
        assert exporter.export(ended_spans(["b"])) is SpanExportResult.FAILURE
        assert len(receiver.requests) == 1

    def test_close_without_export(self, secret: str) -> None:
        exporter = WebhookSpanExporter("http://127.0.0.1:9/hook", secret)

        exporter.close()
        exporter.close()

        assert exporter._client.is_closed

    def test_secret_never_logged(self, secret: str, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        key = secret.removeprefix("whsec_")
        with WebhookReceiver([Reply(500), Reply(400)], default=Reply(200)) as server:
            exporter = fast_exporter(server.url, secret, drop_log_interval=0)
            for node_id in ("a", "b", "c"):
                exporter.export(ended_spans([node_id]))
            assert exporter.force_flush(10_000)
            exporter.shutdown()

        assert len(server.requests) == 4
        assert caplog.records
        assert key not in caplog.text
        assert key not in repr(exporter)
        assert key not in repr(exporter._signer)
        assert key not in str(exporter.stats())


class TestConfigure:
    ENV_VARS = (
        "KAYGRAPH_OTEL_WEBHOOK_URL",
        "KAYGRAPH_OTEL_WEBHOOK_SECRET",
        "KAYGRAPH_OTEL_REDIS_URL",
        "KAYGRAPH_OTEL_BREAKER_FAILURES",
        "KAYGRAPH_OTEL_BREAKER_RESET_SECONDS",
    )

    @pytest.fixture(autouse=True)
    def clean_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in self.ENV_VARS:
            monkeypatch.delenv(name, raising=False)

    @staticmethod
    def webhook_exporters(provider: Any) -> list[WebhookSpanExporter]:
        # The SDK offers no public way to list a provider's processors.
        processors = provider._active_span_processor._span_processors  # noqa: SLF001
        return [
            p.exporter
            for p in processors
            if isinstance(p, LiveSpanProcessor) and isinstance(p.exporter, WebhookSpanExporter)
        ]

    def test_arguments_build_webhook_exporter(self, receiver: WebhookReceiver, secret: str) -> None:
        provider = configure(webhook_url=receiver.url, webhook_secret=secret, set_global=False)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "configured")

        assert provider.force_flush(10_000)
        provider.shutdown()

        events = all_events(deliveries_by_id(receiver.requests, secret))
        names = [event["event_name"] for event in events]
        assert names.count("node_started") == 1
        assert names.count("node_completed") == 1

    def test_environment_fills_webhook_and_breaker(
        self, receiver: WebhookReceiver, secret: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_WEBHOOK_URL", receiver.url)
        monkeypatch.setenv("KAYGRAPH_OTEL_WEBHOOK_SECRET", secret)
        monkeypatch.setenv("KAYGRAPH_OTEL_BREAKER_FAILURES", "7")
        monkeypatch.setenv("KAYGRAPH_OTEL_BREAKER_RESET_SECONDS", "2.5")

        provider = configure(set_global=False)
        [exporter] = self.webhook_exporters(provider)
        provider.shutdown()

        assert exporter.target == receiver.url
        assert exporter.breaker.failure_threshold == 7
        assert exporter.breaker.reset_seconds == 2.5

    def test_arguments_win_over_environment(
        self, receiver: WebhookReceiver, secret: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("KAYGRAPH_OTEL_WEBHOOK_URL", "http://127.0.0.1:9/env")
        monkeypatch.setenv("KAYGRAPH_OTEL_WEBHOOK_SECRET", new_secret())
        monkeypatch.setenv("KAYGRAPH_OTEL_BREAKER_FAILURES", "7")

        provider = configure(
            webhook_url=receiver.url,
            webhook_secret=secret,
            breaker_failures=2,
            breaker_reset_seconds=4.0,
            set_global=False,
        )
        [exporter] = self.webhook_exporters(provider)
        run_node(provider.get_tracer("kaygraph-otel-tests"), "argued")
        assert provider.force_flush(10_000)
        provider.shutdown()

        assert exporter.target == receiver.url
        assert exporter.breaker.failure_threshold == 2
        assert exporter.breaker.reset_seconds == 4.0
        # The argument's secret signed the requests, not the environment's.
        assert all_events(deliveries_by_id(receiver.requests, secret))

    def test_url_without_secret_rejected(self, monkeypatch: pytest.MonkeyPatch) -> None:
        with pytest.raises(ValueError, match="KAYGRAPH_OTEL_WEBHOOK_SECRET"):
            configure(webhook_url="http://127.0.0.1:9/hook", set_global=False)

    @pytest.mark.parametrize(
        ("name", "value"),
        [
            ("KAYGRAPH_OTEL_BREAKER_FAILURES", "0"),
            ("KAYGRAPH_OTEL_BREAKER_FAILURES", "many"),
            ("KAYGRAPH_OTEL_BREAKER_RESET_SECONDS", "-1"),
            ("KAYGRAPH_OTEL_BREAKER_RESET_SECONDS", "inf"),
        ],
    )
    def test_invalid_breaker_environment_rejected(
        self, name: str, value: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv(name, value)

        with pytest.raises(ValueError, match=f"invalid {name} '{value}'"):
            configure(set_global=False)

    def test_secret_not_logged_by_configure(
        self, receiver: WebhookReceiver, secret: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)

        provider = configure(webhook_url=receiver.url, webhook_secret=secret, set_global=False)
        provider.shutdown()

        assert f"webhook {receiver.url}" in caplog.text
        assert secret.removeprefix("whsec_") not in caplog.text
