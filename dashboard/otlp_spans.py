"""Decoding of OTLP/HTTP trace requests into OpenTelemetry SDK ``ReadableSpan`` objects.

Both OTLP/HTTP encodings are read into the ``ExportTraceServiceRequest``
protobuf message of ``opentelemetry-proto``: binary protobuf directly, and
OTLP/JSON through protobuf's JSON mapping after the one change that OTLP/JSON
makes to it, trace and span ids written as hex instead of base64. The spans
are then rebuilt as SDK ``ReadableSpan`` objects, so the encoder that turns
live spans into schema events turns received spans into the same events.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event as SpanEvent
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_STATUS_CODES = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}
_TOO_DEEP = (
    "invalid JSON trace request: arrays or objects are nested deeper than Python's "
    "recursion limit; send spans with flatter attribute values"
)


class InvalidRequestError(ValueError):
    """The body is not a valid OTLP trace request in the declared encoding."""


def parse_request(body: bytes, content_type: str) -> ExportTraceServiceRequest:
    """Parse an OTLP trace request body.

    Raises:
        InvalidRequestError: the body does not decode as ``content_type``.
        ValueError: ``content_type`` is neither protobuf nor JSON.
    """
    request = ExportTraceServiceRequest()
    if content_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as error:
            raise InvalidRequestError(f"invalid protobuf trace request: {error}") from None
        return request
    if content_type != JSON:
        raise ValueError(f"unsupported content type {content_type!r}")
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidRequestError(f"invalid JSON trace request: {error}") from None
    except RecursionError:
        raise InvalidRequestError(_TOO_DEEP) from None
    if not isinstance(document, dict):
        raise InvalidRequestError(
            f"invalid JSON trace request: expected an object, got {type(document).__name__}"
        )
    _hex_ids_to_base64(document)
    try:
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except json_format.ParseError as error:
        raise InvalidRequestError(f"invalid JSON trace request: {error}") from None
    except RecursionError:
        raise InvalidRequestError(_TOO_DEEP) from None
    return request


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    # OTLP/JSON writes ids as hex, while protobuf's JSON mapping expects base64 bytes.
    for resource_spans in _objects(document, "resourceSpans", "resource_spans"):
        for scope_spans in _objects(resource_spans, "scopeSpans", "scope_spans"):
            for span in _objects(scope_spans, "spans"):
                _convert_ids(span)
                for link in _objects(span, "links"):
                    _convert_ids(link)


def _objects(parent: dict[str, Any], *names: str) -> list[dict[str, Any]]:
    for name in names:
        value = parent.get(name)
        if isinstance(value, list):
            return [item for item in value if isinstance(item, dict)]
    return []


def _convert_ids(item: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = item.get(name)
        if not isinstance(value, str) or not value:
            continue
        try:
            item[name] = base64.b64encode(bytes.fromhex(value)).decode()
        except ValueError:
            raise InvalidRequestError(
                f"invalid JSON trace request: {name} {value[:40]!r} is not hex"
            ) from None


def _any_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_any_value(item) for item in value.array_value.values)
    if kind == "kvlist_value":
        return {item.key: _any_value(item.value) for item in value.kvlist_value.values}
    if kind is None:
        return None
    return getattr(value, kind)


def _attributes(items: Any) -> dict[str, Any]:
    attributes = {}
    for item in items:
        value = _any_value(item.value)
        if value is not None:
            attributes[item.key] = value
    return attributes


def _resource_attributes(items: Any) -> dict[str, Any]:
    # OpenTelemetry attribute values are primitives or flat sequences of them, so
    # kvlist values and nested arrays, which the SDK would reject with a warning, are left out.
    return {
        key: value
        for key, value in _attributes(items).items()
        if not isinstance(value, dict)
        and not (isinstance(value, tuple) and any(isinstance(v, (dict, tuple)) for v in value))
    }


def _span_id(raw: bytes, width: int, name: str) -> int:
    if len(raw) != width:
        raise InvalidRequestError(
            f"span has a {name} of {len(raw)} bytes ({binascii.hexlify(raw)[:40]!r}), "
            f"expected {width} bytes"
        )
    return int.from_bytes(raw, "big")


def _readable_span(
    span: ProtoSpan, resource: Resource, scope: InstrumentationScope | None
) -> ReadableSpan:
    trace_id = _span_id(span.trace_id, 16, "trace_id")
    context = SpanContext(
        trace_id, _span_id(span.span_id, 8, "span_id"), is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )  # fmt: skip
    parent = None
    if span.parent_span_id:
        parent = SpanContext(trace_id, _span_id(span.parent_span_id, 8, "parent_span_id"), False)
    events = [
        SpanEvent(event.name, _attributes(event.attributes), event.time_unix_nano)
        for event in span.events
    ]
    code = _STATUS_CODES.get(span.status.code, StatusCode.UNSET)
    # The SDK accepts a status description only together with ERROR.
    status = Status(code, span.status.message or None) if code is StatusCode.ERROR else Status(code)
    return ReadableSpan(
        name=span.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=_attributes(span.attributes),
        events=events,
        kind=SpanKind.INTERNAL,
        status=status,
        start_time=span.start_time_unix_nano or None,
        end_time=span.end_time_unix_nano or None,
        instrumentation_scope=scope,
    )


def readable_spans(request: ExportTraceServiceRequest) -> list[ReadableSpan]:
    """Return every span of a request as a ``ReadableSpan``, in request order.

    Raises:
        InvalidRequestError: a span's trace or span id has the wrong length.
    """
    spans = []
    for resource_spans in request.resource_spans:
        # Without a resource, ReadableSpan runs the SDK's resource detectors once per span.
        resource = Resource(
            _resource_attributes(resource_spans.resource.attributes),
            resource_spans.schema_url or None,
        )
        for scope_spans in resource_spans.scope_spans:
            scope = None
            if scope_spans.scope.name:
                scope = InstrumentationScope(
                    scope_spans.scope.name, scope_spans.scope.version or None
                )
            spans.extend(_readable_span(span, resource, scope) for span in scope_spans.spans)
    return spans
