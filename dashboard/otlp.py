"""``POST /v1/traces``: an OTLP/HTTP trace receiver that turns kaygraph-otel spans into events.

Point any OTLP/HTTP span exporter at the dashboard, for example with
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://127.0.0.1:8080/v1/traces``. The
receiver accepts ``application/x-protobuf`` and ``application/json`` bodies,
optionally with ``Content-Encoding: gzip``, encodes each kaygraph-otel span
into schema events with the exporters' encoder, and publishes them on the
dashboard's bus. Spans of other instrumentations are accepted and ignored.

A body larger than ``max_body_bytes``, before or after gzip decompression, is
rejected with 413. An error response carries a ``google.rpc.Status`` message in
the request's encoding, as OTLP/HTTP specifies.
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import Message
from google.rpc.status_pb2 import Status as RpcStatus
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from kaygraph_otel_dashboard.otlp_spans import (
    JSON,
    PROTOBUF,
    InvalidRequestError,
    parse_request,
    readable_spans,
)
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.encoder import encode_spans

if TYPE_CHECKING:
    from kaygraph_otel_dashboard.app import DashboardState

logger = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# google.rpc.Code values used in error replies.
_INVALID_ARGUMENT = 3
_RESOURCE_EXHAUSTED = 8


class BodyTooLargeError(ValueError):
    """A request body, compressed or decompressed, exceeds the configured limit."""


@dataclass
class ReceiverStats:
    """Counters of the OTLP receiver for the health endpoint."""

    requests: int = 0
    spans: int = 0
    events: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "requests": self.requests,
            "spans": self.spans,
            "events": self.events,
            "rejected": self.rejected,
        }


async def read_body(request: Request, limit: int) -> bytes:
    """Read the request body, stopping as soon as it exceeds ``limit`` bytes.

    Raises:
        BodyTooLargeError: ``Content-Length`` or the bytes received exceed ``limit``.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLargeError(f"request body of {declared} bytes exceeds the limit of {limit}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip(body: bytes, limit: int) -> bytes:
    """Decompress a gzip body, refusing output larger than ``limit`` bytes.

    Raises:
        BodyTooLargeError: the decompressed body exceeds ``limit``.
        InvalidRequestError: the body is not complete gzip data.
    """
    decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        output = decompressor.decompress(body, limit + 1)
    except zlib.error as error:
        raise InvalidRequestError(f"invalid gzip body: {error}") from None
    if len(output) > limit or decompressor.unconsumed_tail:
        raise BodyTooLargeError(f"decompressed request body exceeds the limit of {limit} bytes")
    if not decompressor.eof:
        raise InvalidRequestError("invalid gzip body: the data ends before the gzip stream does")
    return output


def _json_reply(status_code: int, body: dict[str, Any]) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code, media_type=JSON)


def _protobuf_reply(status_code: int, message: Message) -> Response:
    return Response(message.SerializeToString(), status_code, media_type=PROTOBUF)


def _error(content_type: str, status_code: int, code: int, text: str) -> Response:
    if content_type == JSON:
        return _json_reply(status_code, {"code": code, "message": text})
    return _protobuf_reply(status_code, RpcStatus(code=code, message=text))


def _decode_and_publish(body: bytes, content_type: str, bus: EventBus) -> tuple[int, int]:
    # Runs in a worker thread: a large request takes seconds to decode, and the bus
    # accepts events from any thread, so the event loop keeps serving meanwhile.
    spans = readable_spans(parse_request(body, content_type))
    events = encode_spans(spans, include_started=True)
    bus.publish_many(events)
    return len(spans), len(events)


async def traces_endpoint(request: Request) -> Response:
    state: DashboardState = request.app.state.dashboard
    stats = state.otlp_stats
    stats.requests += 1
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type not in (PROTOBUF, JSON):
        stats.rejected += 1
        return _error(
            JSON,
            415,
            _INVALID_ARGUMENT,
            f"unsupported Content-Type {content_type[:80]!r}; send {PROTOBUF} or {JSON}",
        )
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        stats.rejected += 1
        return _error(
            content_type,
            415,
            _INVALID_ARGUMENT,
            f"unsupported Content-Encoding {encoding[:40]!r}; send gzip or no encoding",
        )

    try:
        body = await read_body(request, state.max_body_bytes)
        if encoding == "gzip":
            body = gunzip(body, state.max_body_bytes)
        span_count, event_count = await run_in_threadpool(
            _decode_and_publish, body, content_type, state.bus
        )
    except BodyTooLargeError as error:
        stats.rejected += 1
        logger.warning("Rejected an OTLP trace request: %s", error)
        return _error(content_type, 413, _RESOURCE_EXHAUSTED, str(error))
    except InvalidRequestError as error:
        stats.rejected += 1
        logger.warning("Rejected an OTLP trace request: %s", error)
        return _error(content_type, 400, _INVALID_ARGUMENT, str(error))

    stats.spans += span_count
    stats.events += event_count
    if content_type == JSON:
        return _json_reply(200, {})
    return _protobuf_reply(200, ExportTraceServiceResponse())
