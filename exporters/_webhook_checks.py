"""Checks of ``WebhookSpanExporter``'s arguments, each raising ValueError that names the value."""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import urlsplit

from kaygraph_otel_exporters._urls import redact_url

_RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "webhook-id", "webhook-timestamp", "webhook-signature"}
)


def validate_url(url: str) -> str:
    """Return the redacted form of ``url`` after checking that it is an http(s) URL."""
    example = "http://127.0.0.1:8000/webhook"
    if not isinstance(url, str) or not url:
        raise ValueError(
            f"webhook url must be a non-empty http:// or https:// URL, got {url!r}; "
            f"pass a URL such as {example!r}"
        )
    target = redact_url(url)
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is invalid
    except ValueError as exc:
        raise ValueError(
            f"invalid webhook URL {target!r}: {exc}; pass a URL such as {example!r}"
        ) from None
    if parts.scheme not in ("http", "https"):
        raise ValueError(
            f"unsupported webhook URL scheme {parts.scheme!r} in {target!r}: webhooks are "
            f"sent over http:// or https:// only; pass a URL such as {example!r}"
        )
    if not hostname:
        raise ValueError(
            f"invalid webhook URL {target!r}: it has no host; pass a URL such as {example!r}"
        )
    return target


def require_positive_seconds(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
        raise ValueError(
            f"{name} must be a positive, finite number of seconds, got {value!r}; "
            "a missing timeout would let a hanging endpoint stall delivery"
        )


def validate_sizes(
    max_attempts: int, max_body_bytes: int, max_queue_bytes: int, shutdown_timeout_millis: int
) -> None:
    for name, value, minimum in (
        ("max_attempts", max_attempts, 1),
        ("max_body_bytes", max_body_bytes, 64),
        ("max_queue_bytes", max_queue_bytes, 1),
        ("shutdown_timeout_millis", shutdown_timeout_millis, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    if max_queue_bytes < max_body_bytes:
        raise ValueError(
            f"max_queue_bytes ({max_queue_bytes}) must be at least max_body_bytes "
            f"({max_body_bytes}), or no full body would fit in the queue"
        )


def validate_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    result: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(
                f"headers must map strings to strings, got a {type(value).__name__} value "
                f"for {name!r}"
            )
        if name.lower() in _RESERVED_HEADERS:
            raise ValueError(
                f"header {name!r} is set by the exporter and cannot be replaced; remove it "
                "from headers"
            )
        result[name] = value
    return result
