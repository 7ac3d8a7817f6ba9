"""One call that builds an OpenTelemetry ``TracerProvider`` wired to the kaygraph-otel exporters.

Usage::

    from kaygraph_otel import instrument_kaygraph
    from kaygraph_otel_exporters import configure

    configure(redis_url="redis://127.0.0.1:6379/0")
    instrument_kaygraph()

Configuration
-------------
Keyword arguments win. An argument left at None or at its default is filled
from these environment variables when they are set:

- ``KAYGRAPH_OTEL_REDIS_URL``: the Redis URL. Setting it turns the Redis exporter on.
- ``KAYGRAPH_OTEL_REDIS_CHANNEL``: the Pub/Sub channel.
- ``KAYGRAPH_OTEL_FLUSH_INTERVAL_MS``: the live path's schedule delay in milliseconds.

The standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables turn on OTLP/HTTP export of
the spans themselves, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
fill the resource, and ``OTEL_TRACES_SAMPLER`` chooses the sampler, as in any
OpenTelemetry SDK setup.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlsplit, urlunsplit

from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.bus import EventBus, get_default_bus
from kaygraph_otel_exporters.bus_exporter import BusEventExporter
from kaygraph_otel_exporters.live import LiveSpanProcessor
from kaygraph_otel_exporters.redis import DEFAULT_CHANNEL, RedisEventExporter
from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "kaygraph-workflow"
DEFAULT_SCHEDULE_DELAY_MILLIS = 200

ENV_REDIS_URL = "KAYGRAPH_OTEL_REDIS_URL"
ENV_REDIS_CHANNEL = "KAYGRAPH_OTEL_REDIS_CHANNEL"
ENV_FLUSH_INTERVAL_MS = "KAYGRAPH_OTEL_FLUSH_INTERVAL_MS"
OTLP_ENV_VARS = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
OTLP_TRACES_PATH = "/v1/traces"
OTLP_EXTRA = "kaygraph-otel[dashboard]"


def configure(
    *,
    service_name: str = DEFAULT_SERVICE_NAME,
    redis_url: str | None = None,
    channel: str = DEFAULT_CHANNEL,
    bus: EventBus | None = None,
    use_bus: bool = False,
    otlp_endpoint: str | None = None,
    console: bool = False,
    schedule_delay_millis: int = DEFAULT_SCHEDULE_DELAY_MILLIS,
    set_global: bool = True,
) -> TracerProvider:
    """Build a ``TracerProvider`` that sends kaygraph-otel spans to the chosen backends.

    OpenTelemetry lets a process set the global tracer provider only once. When one
    is already set, this function logs a warning, leaves the global one in place and
    still returns the new provider, which the caller can pass to the instrumentor
    explicitly.

    Args:
        service_name: the ``service.name`` resource attribute. Left at its default, it
            yields to ``OTEL_SERVICE_NAME`` when that is set.
        redis_url: publish schema events to this Redis server through a live processor.
        channel: the Redis Pub/Sub channel.
        bus: publish schema events to this in-process bus through a live processor.
        use_bus: publish to the process-wide default bus when ``bus`` is None.
        otlp_endpoint: export the spans over OTLP/HTTP to this URL. A URL without a
            path, such as ``http://127.0.0.1:4318``, gets ``/v1/traces`` appended.
        console: also print every span to standard output, for debugging.
        schedule_delay_millis: how long the live processors wait, in milliseconds,
            before exporting queued spans.
        set_global: make the provider the global OpenTelemetry tracer provider.

    Returns:
        The configured provider. Call its ``shutdown()`` to flush and stop the exporters.
        The SDK also does so when the interpreter exits.

    Raises:
        ValueError: when an argument or environment variable has an invalid value.
        TypeError: when ``bus`` is not an ``EventBus``.
        ImportError: when OTLP export is requested but its exporter package is missing.
    """
    redis_url = redis_url if redis_url is not None else _env(ENV_REDIS_URL)
    if channel == DEFAULT_CHANNEL:
        channel = _env(ENV_REDIS_CHANNEL) or channel
    if schedule_delay_millis == DEFAULT_SCHEDULE_DELAY_MILLIS:
        schedule_delay_millis = _env_millis(ENV_FLUSH_INTERVAL_MS) or schedule_delay_millis

    if not isinstance(schedule_delay_millis, int) or schedule_delay_millis <= 0:
        raise ValueError(
            f"schedule_delay_millis must be a positive whole number of milliseconds, "
            f"got {schedule_delay_millis!r}. The default is {DEFAULT_SCHEDULE_DELAY_MILLIS}"
        )

    # Every exporter is built, and every argument checked, before the first processor
    # starts its worker thread, so an invalid argument leaves no thread behind.
    resource = _resource(service_name)
    span_exporters = _span_exporters(otlp_endpoint, console)
    live_exporters = _event_exporters(redis_url, channel, bus, use_bus)

    provider = TracerProvider(resource=resource)
    for _, exporter in live_exporters:
        provider.add_span_processor(
            LiveSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis)
        )
    for _, exporter in span_exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    destinations = [name for name, _ in live_exporters + span_exporters]

    if destinations:
        logger.info("kaygraph-otel spans go to %s", ", ".join(destinations))
    else:
        logger.warning(
            "configure() added no exporter, so spans are recorded but sent nowhere. Pass "
            "redis_url, use_bus, otlp_endpoint or console=True, or set %s",
            ENV_REDIS_URL,
        )

    if set_global:
        _set_global_provider(provider)
    return provider


def _event_exporters(
    redis_url: str | None, channel: str, bus: EventBus | None, use_bus: bool
) -> list[tuple[str, SpanExporter]]:
    exporters: list[tuple[str, SpanExporter]] = []
    if redis_url:
        redis_exporter = RedisEventExporter(redis_url, channel)
        exporters.append((f"Redis {redis_exporter.target} channel {channel}", redis_exporter))
    if bus is not None or use_bus:
        bus_exporter = BusEventExporter(bus if bus is not None else get_default_bus())
        exporters.append(("the in-process event bus", bus_exporter))
    return exporters


def _span_exporters(otlp_endpoint: str | None, console: bool) -> list[tuple[str, SpanExporter]]:
    exporters: list[tuple[str, SpanExporter]] = []
    otlp_exporter = _otlp_exporter(otlp_endpoint)
    if otlp_exporter is not None:
        exporters.append(("OTLP/HTTP", otlp_exporter))
    if console:
        exporters.append(("the console", ConsoleSpanExporter()))
    return exporters


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def _env_millis(name: str) -> int | None:
    text = _env(name)
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(
            f"invalid {name} {text!r}: expected a positive whole number of milliseconds, "
            "such as 200"
        )
    return value


def _resource(service_name: str) -> Resource:
    if not isinstance(service_name, str) or not service_name:
        raise ValueError(
            f"service_name must be a non-empty string, got {service_name!r}; "
            f"the default is {DEFAULT_SERVICE_NAME!r}"
        )
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES, and the
    # attributes passed to it win, so the default name is passed only when neither
    # environment variable names the service.
    if service_name == DEFAULT_SERVICE_NAME and _env_names_service():
        return Resource.create({})
    return Resource.create({SERVICE_NAME: service_name})


def _env_names_service() -> bool:
    if _env("OTEL_SERVICE_NAME"):
        return True
    resource_attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return any(
        pair.split("=", 1)[0].strip() == SERVICE_NAME for pair in resource_attributes.split(",")
    )


def _otlp_exporter(otlp_endpoint: str | None) -> SpanExporter | None:
    if otlp_endpoint is None and not any(_env(name) for name in OTLP_ENV_VARS):
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ImportError(
            "OTLP export needs the opentelemetry-exporter-otlp-proto-http package, which "
            f"failed to import ({exc}). Install it with `pip install '{OTLP_EXTRA}'`"
        ) from exc
    if otlp_endpoint is None:
        # The exporter reads the standard environment variables itself.
        return OTLPSpanExporter()
    return OTLPSpanExporter(endpoint=_otlp_traces_url(otlp_endpoint))


def _otlp_traces_url(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"invalid otlp_endpoint {redact_url(endpoint)!r}: expected an http:// or https:// URL "
            "such as 'http://127.0.0.1:4318'"
        )
    if parts.path in ("", "/"):
        parts = parts._replace(path=OTLP_TRACES_PATH)
    return urlunsplit(parts)


def _set_global_provider(provider: TracerProvider) -> None:
    current = trace.get_tracer_provider()
    if not isinstance(current, trace.ProxyTracerProvider):
        logger.warning(
            "A global tracer provider (%s) is already set and OpenTelemetry allows only one "
            "per process, so it stays in place. Pass the provider that configure() returned "
            "to the instrumentor, or call configure(set_global=False).",
            type(current).__name__,
        )
        return
    trace.set_tracer_provider(provider)
