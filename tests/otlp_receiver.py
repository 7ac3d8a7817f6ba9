"""A real OTLP/HTTP trace receiver on loopback for tests: decodes and keeps every span.

It serves ``POST /v1/traces`` with a protobuf ``ExportTraceServiceRequest`` body,
plain or gzip-compressed. It replies as an OTLP/HTTP server does, with status 200
and an empty ``ExportTraceServiceResponse``. Other paths get 404 and other media
types 415. It runs ``http.server`` in a background thread; ``stop()`` closes it.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from tests.helpers import wait_for

TRACES_PATH = "/v1/traces"
PROTOBUF_TYPE = "application/x-protobuf"
MAX_BODY_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived, with ids as lowercase hex ("" for no parent)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    event_names: tuple[str, ...]
    status_code: int


@dataclass
class ReceivedRequest:
    """The headers of one accepted export request, with lowercase names."""

    headers: dict[str, str]
    span_count: int


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP ``AnyValue`` to the Python value it carries."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return key_values(value.kvlist_value.values)
    return getattr(value, kind)


def key_values(items: Any) -> dict[str, Any]:
    """Convert repeated OTLP ``KeyValue`` messages to a dict."""
    pairs: list[KeyValue] = list(items)
    return {pair.key: any_value(pair.value) for pair in pairs}


def decode_spans(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten an export request into ``ReceivedSpan`` records, in request order."""
    spans = []
    for resource_spans in request.resource_spans:
        resource = key_values(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=key_values(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        event_names=tuple(event.name for event in span.events),
                        status_code=span.status.code,
                    )
                )
    return spans


@dataclass
class OtlpReceiver:
    """The running receiver: its URL and everything it has accepted so far."""

    server: ThreadingHTTPServer
    thread: threading.Thread
    spans: list[ReceivedSpan] = field(default_factory=list)
    requests: list[ReceivedRequest] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL, as ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes it (no signal path)."""
        return f"http://127.0.0.1:{self.port}"

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def wait_for_spans(
        self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 30.0
    ) -> list[ReceivedSpan]:
        """Wait until ``predicate`` holds for the spans received so far; return them.

        Returns the spans received when the timeout passed if it never held, so the
        caller's asserts report what did arrive.
        """
        wait_for(lambda: predicate(self.snapshot()), timeout=timeout, interval=0.1)
        return self.snapshot()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def _handler_class(receiver_box: list[OtlpReceiver]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the name http.server dispatches to)
            receiver = receiver_box[0]
            if self.path.split("?", 1)[0] != TRACES_PATH:
                self._reply(404, b"", "text/plain")
                return
            media_type = self.headers.get("content-type", "").split(";", 1)[0].strip()
            if media_type != PROTOBUF_TYPE:
                self._reply(415, b"only application/x-protobuf is accepted", "text/plain")
                return
            length = int(self.headers.get("content-length", "0"))
            if length > MAX_BODY_BYTES:
                self._reply(413, b"request body too large", "text/plain")
                return
            body = self.rfile.read(length)
            try:
                if self.headers.get("content-encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest.FromString(body)
            except (OSError, EOFError, DecodeError) as error:
                with receiver.lock:
                    receiver.errors.append(f"undecodable export request: {error}")
                self._reply(400, b"invalid ExportTraceServiceRequest", "text/plain")
                return
            spans = decode_spans(request)
            headers = {name.lower(): value for name, value in self.headers.items()}
            with receiver.lock:
                receiver.spans.extend(spans)
                receiver.requests.append(ReceivedRequest(headers, len(spans)))
            self._reply(200, ExportTraceServiceResponse().SerializeToString(), PROTOBUF_TYPE)

        def _reply(self, status: int, body: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", media_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Keep the test output free of one access-log line per request."""

    return Handler


def start_receiver() -> OtlpReceiver:
    """Start a receiver on a free port of 127.0.0.1."""
    box: list[OtlpReceiver] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(box))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    receiver = OtlpReceiver(server=server, thread=thread)
    box.append(receiver)
    thread.start()
    return receiver


@contextmanager
def running_receiver() -> Iterator[OtlpReceiver]:
    """Run a receiver for the duration of the block and stop it afterwards."""
    receiver = start_receiver()
    try:
        yield receiver
    finally:
        receiver.stop()
