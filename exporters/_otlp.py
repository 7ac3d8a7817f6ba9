"""The OTLP/HTTP span exporter that ``configure()`` adds, with bounded export and shutdown times.

The exporter gets a timeout of ``DEFAULT_OTLP_TIMEOUT_SECONDS`` for each export,
retries included, unless ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` or
``OTEL_EXPORTER_OTLP_TIMEOUT`` is set: the exporter then reads those itself, as
seconds (opentelemetry-exporter-otlp-proto-http 1.x). Its processor's
``shutdown`` returns within ``OTLP_SHUTDOWN_TIMEOUT_MILLIS``, even when the
endpoint refuses connections or never responds. Spans still queued then are lost.
"""

from __future__ import annotations

import logging
from urllib.parse import SplitResult, urlsplit, urlunsplit

from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from kaygraph_otel_exporters._settings import env_text
from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.live import _call_with_timeout

logger = logging.getLogger(__name__)

OTLP_ENV_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_TIMEOUT_ENV_VARS = ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")
OTLP_TRACES_PATH = "/v1/traces"
OTLP_EXTRA = "kaygraph-otel[dashboard]"
DEFAULT_OTLP_TIMEOUT_SECONDS = 5.0
OTLP_SHUTDOWN_TIMEOUT_MILLIS = 6000
_ENDPOINT_EXAMPLE = "such as 'http://127.0.0.1:4318'"


class BoundedBatchSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` whose ``shutdown`` returns within ``shutdown_timeout_millis``.

    The SDK's own shutdown (opentelemetry-sdk 1.45) waits up to 30 s for the export
    thread and then for the exporter. After the timeout here it keeps running on a
    daemon thread, which does not keep the interpreter from exiting.
    """

    def __init__(self, exporter: SpanExporter, shutdown_timeout_millis: int) -> None:
        super().__init__(exporter)
        self._exporter_name = type(exporter).__name__
        self._shutdown_timeout_millis = shutdown_timeout_millis

    def shutdown(self) -> None:
        finished, _ = _call_with_timeout(super().shutdown, self._shutdown_timeout_millis)
        if not finished:
            logger.warning(
                "The %s did not shut down within %d ms, so spans still queued for it are lost",
                self._exporter_name,
                self._shutdown_timeout_millis,
            )


def otlp_exporter(otlp_endpoint: object) -> SpanExporter | None:
    """Return the OTLP/HTTP span exporter for ``otlp_endpoint`` or the environment, or None.

    Raises:
        TypeError: ``otlp_endpoint`` is neither None nor a string.
        ValueError: the endpoint, from the argument or the environment, is not an
            http:// or https:// URL.
        ImportError: the OTLP exporter package is missing.
    """
    if otlp_endpoint is not None and not isinstance(otlp_endpoint, str):
        raise TypeError(
            f"otlp_endpoint must be a URL string such as 'http://127.0.0.1:4318', got "
            f"{type(otlp_endpoint).__name__} {otlp_endpoint!r}"
        )
    if otlp_endpoint is None:
        from_env = [(name, env_text(name)) for name in OTLP_ENV_VARS]
        if not any(value for _, value in from_env):
            return None
        for name, value in from_env:
            if value is not None:
                _check_url(value, name)
        endpoint = None
    else:
        endpoint = otlp_traces_url(otlp_endpoint)
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(
            "OTLP export needs the opentelemetry-exporter-otlp-proto-http package, which "
            f"failed to import ({exc}). Install it with `pip install '{OTLP_EXTRA}'`"
        ) from exc
    timeout = None
    if not any(env_text(name) for name in OTLP_TIMEOUT_ENV_VARS):
        timeout = DEFAULT_OTLP_TIMEOUT_SECONDS
    # With endpoint None the exporter reads the standard environment variables itself.
    return OTLPSpanExporter(endpoint=endpoint, timeout=timeout)


def otlp_traces_url(endpoint: str) -> str:
    """Return ``endpoint`` with ``/v1/traces`` appended when it has no path.

    Raises:
        ValueError: ``endpoint`` is not an http:// or https:// URL.
    """
    parts = _check_url(endpoint, "otlp_endpoint")
    if parts.path in ("", "/"):
        parts = parts._replace(path=OTLP_TRACES_PATH)
    return urlunsplit(parts)


def _check_url(url: str, name: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as error:
        raise ValueError(
            f"invalid {name} {_masked(url)!r}: {error}; expected an http:// or https:// URL "
            f"{_ENDPOINT_EXAMPLE}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"invalid {name} {redact_url(url)!r}: expected an http:// or https:// URL "
            f"{_ENDPOINT_EXAMPLE}"
        )
    return parts


def _masked(url: str) -> str:
    # redact_url cannot parse this URL, so everything between the scheme and the
    # last "@" of the authority, where a password would be, is hidden.
    scheme, separator, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if "@" in authority:
        authority = "***@" + authority.rsplit("@", 1)[1]
    return f"{scheme}{separator}{authority}{slash}{path}"
