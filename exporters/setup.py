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
- ``KAYGRAPH_OTEL_REDIS_STREAM_MAXLEN``: approximate entries per run stream; 0
  turns the streams off (default 10000).
- ``KAYGRAPH_OTEL_WEBHOOK_URL``: an http:// or https:// endpoint. Setting it turns
  the webhook exporter on.
- ``KAYGRAPH_OTEL_WEBHOOK_SECRET``: the webhook signing secret, ``whsec_`` followed
  by base64. It is never logged.
- ``KAYGRAPH_OTEL_BREAKER_FAILURES``: consecutive failures that open an exporter's
  circuit (default 5).
- ``KAYGRAPH_OTEL_BREAKER_RESET_SECONDS``: seconds an open circuit waits before a
  trial call (default 10).
- ``KAYGRAPH_OTEL_FLUSH_INTERVAL_MS``: the live path's schedule delay in milliseconds,
  from 1 to 60000.

The standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` and
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` variables turn on OTLP/HTTP export of
the spans themselves, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``
fill the resource, and ``OTEL_TRACES_SAMPLER`` chooses the sampler, as in any
OpenTelemetry SDK setup. Each OTLP export, retries included, times out after 5 s
unless ``OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`` or ``OTEL_EXPORTER_OTLP_TIMEOUT``
sets another number of seconds, and ``shutdown()`` waits at most 6 s for the
OTLP exporter.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)

from kaygraph_otel_exporters._breaker import (
    DEFAULT_FAILURE_THRESHOLD,
    DEFAULT_RESET_SECONDS,
    validate_breaker_settings,
)
from kaygraph_otel_exporters._otlp import (
    OTLP_SHUTDOWN_TIMEOUT_MILLIS,
    BoundedBatchSpanProcessor,
    otlp_exporter,
)
from kaygraph_otel_exporters._settings import (
    ENV_BREAKER_FAILURES,
    ENV_BREAKER_RESET_SECONDS,
    ENV_FLUSH_INTERVAL_MS,
    ENV_REDIS_CHANNEL,
    ENV_REDIS_STREAM_MAXLEN,
    ENV_REDIS_URL,
    ENV_WEBHOOK_SECRET,
    ENV_WEBHOOK_URL,
    env_int,
    env_seconds,
    env_text,
)
from kaygraph_otel_exporters._urls import redact_url
from kaygraph_otel_exporters.bus import EventBus, get_default_bus
from kaygraph_otel_exporters.bus_exporter import BusEventExporter
from kaygraph_otel_exporters.live import LiveSpanProcessor, validate_schedule_delay
from kaygraph_otel_exporters.redis import (
    DEFAULT_CHANNEL,
    DEFAULT_STREAM_MAXLEN,
    RedisEventExporter,
)
from kaygraph_otel_exporters.webhook import WebhookSpanExporter

logger = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "kaygraph-workflow"
DEFAULT_SCHEDULE_DELAY_MILLIS = 200
_OTLP_NAME = "OTLP/HTTP"


@dataclass(frozen=True)
class _EventOptions:
    """The settings of the schema-event exporters, after arguments and environment are merged."""

    redis_url: str | None
    channel: str
    redis_stream_maxlen: int
    webhook_url: str | None
    webhook_secret: str | bytes | None = field(repr=False)
    breaker_failures: int
    breaker_reset_seconds: float


def configure(
    *,
    service_name: str = DEFAULT_SERVICE_NAME,
    redis_url: str | None = None,
    channel: str = DEFAULT_CHANNEL,
    redis_stream_maxlen: int | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | bytes | None = None,
    breaker_failures: int | None = None,
    breaker_reset_seconds: float | None = None,
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
        redis_stream_maxlen: approximate entries kept per run stream in Redis; 0 turns
            the streams off.
        webhook_url: post schema events to this http:// or https:// endpoint through a
            live processor.
        webhook_secret: the secret that signs webhook requests, ``whsec_`` followed by
            base64. Required with ``webhook_url``.
        breaker_failures: consecutive failures that open the circuit of the Redis and
            webhook exporters.
        breaker_reset_seconds: seconds an open circuit waits before a trial call.
        bus: publish schema events to this in-process bus through a live processor.
        use_bus: publish to the process-wide default bus when ``bus`` is None.
        otlp_endpoint: export the spans over OTLP/HTTP to this URL. A URL without a
            path, such as ``http://127.0.0.1:4318``, gets ``/v1/traces`` appended.
        console: also print every span to standard output, for debugging.
        schedule_delay_millis: how long the live processors wait, in milliseconds,
            before exporting queued spans, from 1 to 60000.
        set_global: make the provider the global OpenTelemetry tracer provider.

    Returns:
        The configured provider. Call its ``shutdown()`` to flush and stop the exporters.
        The SDK also does so when the interpreter exits.

    Raises:
        ValueError: when an argument or environment variable has an invalid value, or
            a webhook URL is given without a secret.
        TypeError: when ``bus`` is not an ``EventBus``, a flag is not a bool, or
            ``otlp_endpoint`` is not a string.
        ImportError: when OTLP export is requested but its exporter package is missing.
    """
    options = _event_options(
        redis_url,
        channel,
        redis_stream_maxlen,
        webhook_url,
        webhook_secret,
        breaker_failures,
        breaker_reset_seconds,
    )
    for name, flag in (("use_bus", use_bus), ("console", console), ("set_global", set_global)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {type(flag).__name__} {flag!r}")
    validate_schedule_delay(schedule_delay_millis, "schedule_delay_millis")
    if schedule_delay_millis == DEFAULT_SCHEDULE_DELAY_MILLIS:
        from_env = env_int(ENV_FLUSH_INTERVAL_MS, 1, "200 (milliseconds)")
        if from_env is not None:
            validate_schedule_delay(from_env, ENV_FLUSH_INTERVAL_MS)
            schedule_delay_millis = from_env

    # Every exporter is built, and every argument checked, before the first processor
    # starts its worker thread, so an invalid argument leaves no thread behind.
    resource = _resource(service_name)
    span_exporters = _span_exporters(otlp_endpoint, console)
    live_exporters = _event_exporters(options, bus, use_bus)

    provider = TracerProvider(resource=resource)
    for _, exporter in live_exporters:
        provider.add_span_processor(
            LiveSpanProcessor(exporter, schedule_delay_millis=schedule_delay_millis)
        )
    for name, exporter in span_exporters:
        if name == _OTLP_NAME:
            provider.add_span_processor(
                BoundedBatchSpanProcessor(exporter, OTLP_SHUTDOWN_TIMEOUT_MILLIS)
            )
        else:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    destinations = [name for name, _ in live_exporters + span_exporters]

    if destinations:
        logger.info("kaygraph-otel spans go to %s", ", ".join(destinations))
    else:
        logger.warning(
            "configure() added no exporter, so spans are recorded but sent nowhere. Pass "
            "redis_url, webhook_url, use_bus, otlp_endpoint or console=True, or set %s or %s",
            ENV_REDIS_URL,
            ENV_WEBHOOK_URL,
        )

    if set_global:
        _set_global_provider(provider)
    return provider


def _event_options(
    redis_url: str | None,
    channel: str,
    redis_stream_maxlen: int | None,
    webhook_url: str | None,
    webhook_secret: str | bytes | None,
    breaker_failures: int | None,
    breaker_reset_seconds: float | None,
) -> _EventOptions:
    if channel == DEFAULT_CHANNEL:
        channel = env_text(ENV_REDIS_CHANNEL) or channel
    if redis_stream_maxlen is None:
        redis_stream_maxlen = env_int(ENV_REDIS_STREAM_MAXLEN, 0, "10000")
    if breaker_failures is None:
        breaker_failures = env_int(ENV_BREAKER_FAILURES, 1, "5")
    if breaker_reset_seconds is None:
        breaker_reset_seconds = env_seconds(ENV_BREAKER_RESET_SECONDS, "10")
    options = _EventOptions(
        redis_url=redis_url if redis_url is not None else env_text(ENV_REDIS_URL),
        channel=channel,
        redis_stream_maxlen=(
            DEFAULT_STREAM_MAXLEN if redis_stream_maxlen is None else redis_stream_maxlen
        ),
        webhook_url=webhook_url if webhook_url is not None else env_text(ENV_WEBHOOK_URL),
        webhook_secret=(
            webhook_secret if webhook_secret is not None else env_text(ENV_WEBHOOK_SECRET)
        ),
        breaker_failures=(
            DEFAULT_FAILURE_THRESHOLD if breaker_failures is None else breaker_failures
        ),
        breaker_reset_seconds=(
            DEFAULT_RESET_SECONDS if breaker_reset_seconds is None else breaker_reset_seconds
        ),
    )
    validate_breaker_settings(options.breaker_failures, options.breaker_reset_seconds)
    if options.webhook_url and not options.webhook_secret:
        raise ValueError(
            f"webhook URL {redact_url(options.webhook_url)!r} is set but no signing secret "
            f"is; pass webhook_secret or set {ENV_WEBHOOK_SECRET} to the receiver's "
            "'whsec_...' secret"
        )
    return options


def _event_exporters(
    options: _EventOptions, bus: EventBus | None, use_bus: bool
) -> list[tuple[str, SpanExporter]]:
    exporters: list[tuple[str, SpanExporter]] = []
    if options.redis_url:
        redis_exporter = RedisEventExporter(
            options.redis_url,
            options.channel,
            stream_maxlen=options.redis_stream_maxlen,
            breaker_failures=options.breaker_failures,
            breaker_reset_seconds=options.breaker_reset_seconds,
        )
        exporters.append(
            (f"Redis {redis_exporter.target} channel {options.channel}", redis_exporter)
        )
    if options.webhook_url and options.webhook_secret:
        webhook_exporter = WebhookSpanExporter(
            options.webhook_url,
            options.webhook_secret,
            breaker_failures=options.breaker_failures,
            breaker_reset_seconds=options.breaker_reset_seconds,
        )
        exporters.append((f"webhook {webhook_exporter.target}", webhook_exporter))
    if bus is not None or use_bus:
        bus_exporter = BusEventExporter(bus if bus is not None else get_default_bus())
        exporters.append(("the in-process event bus", bus_exporter))
    return exporters


def _span_exporters(otlp_endpoint: str | None, console: bool) -> list[tuple[str, SpanExporter]]:
    exporters: list[tuple[str, SpanExporter]] = []
    otlp = otlp_exporter(otlp_endpoint)
    if otlp is not None:
        exporters.append((_OTLP_NAME, otlp))
    if console:
        exporters.append(("the console", ConsoleSpanExporter()))
    return exporters


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
    if env_text("OTEL_SERVICE_NAME"):
        return True
    resource_attributes = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    return any(
        pair.split("=", 1)[0].strip() == SERVICE_NAME for pair in resource_attributes.split(",")
    )


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
