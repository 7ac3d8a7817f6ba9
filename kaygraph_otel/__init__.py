"""OpenTelemetry instrumentation for KayGraph and PocketFlow workflows.

Every top-level graph run becomes an ``invoke_workflow {name}`` span, every
node execution a child span (nested graphs nest, batch items get child spans
up to a cap), and lifecycle steps, retries, fallbacks and failures become span
events named after the kaygraph-otel event schema. The package depends on the
OpenTelemetry API only: the application chooses and configures the SDK.

Usage
-----

.. code-block:: python

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    from kaygraph_otel import instrument_kaygraph

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    instrument_kaygraph()  # or instrument_pocketflow()

Programs run under ``opentelemetry-instrument`` are instrumented through the
``kaygraph`` and ``pocketflow`` entry points without a code change.

Configuration
-------------

Keyword arguments of ``instrument_kaygraph()`` override environment
variables, which override defaults:

* ``enabled`` / ``KAYGRAPH_OTEL_ENABLED`` (true): false patches nothing.
* ``capture_snapshots`` / ``KAYGRAPH_OTEL_CAPTURE_SNAPSHOTS`` (false):
  record ``prep`` and ``exec`` results as ``data_input`` / ``data_output`` events.
* ``max_snapshot_bytes`` / ``KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES`` (4096).
* ``scrub_snapshots`` / ``KAYGRAPH_OTEL_SCRUB_SNAPSHOTS`` (true), and
  ``scrub_patterns`` / ``KAYGRAPH_OTEL_SCRUB_PATTERNS`` (comma-separated regular expressions).
* ``max_item_spans`` / ``KAYGRAPH_OTEL_MAX_ITEM_SPANS`` (100): child spans per batch node.
* ``max_graph_nodes`` / ``KAYGRAPH_OTEL_MAX_GRAPH_NODES`` (500): nodes recorded per structure.
* ``events`` / ``KAYGRAPH_OTEL_EVENTS`` (all): event names or event types to emit.
* ``event_signal`` / ``KAYGRAPH_OTEL_EVENT_SIGNAL`` (span): ``span``, ``log`` or ``both``.
* ``phase_spans`` / ``KAYGRAPH_OTEL_PHASE_SPANS`` (false): prep, exec and post as child spans.

``tracer_provider``, ``meter_provider`` and ``logger_provider`` default to the
global providers.

``OTEL_SDK_DISABLED=true`` and ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
(naming ``kaygraph`` or ``pocketflow``) also leave the framework unpatched.
Sampling is the tracer provider's sampler (``OTEL_TRACES_SAMPLER``).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Collection, Iterator
from typing import Any, ClassVar

from opentelemetry import metrics, trace
from opentelemetry._logs import get_logger
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor  # type: ignore[attr-defined]

from kaygraph_otel._engine import Engine
from kaygraph_otel._framework import describe
from kaygraph_otel._metrics import Metrics
from kaygraph_otel._runs import RUN_OPTIONS, Emitter, RunOptions
from kaygraph_otel.config import Settings, resolve_settings
from kaygraph_otel.package import _instruments_kaygraph, _instruments_pocketflow
from kaygraph_otel.version import __version__

__all__ = [
    "KayGraphInstrumentor",
    "PocketFlowInstrumentor",
    "Settings",
    "instrument_kaygraph",
    "instrument_pocketflow",
    "run_context",
    "uninstrument_kaygraph",
    "uninstrument_pocketflow",
    "__version__",
]

logger = logging.getLogger(__name__)

SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"


def _disabled_by_environment(entry_point_name: str) -> bool:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return True
    disabled = os.environ.get("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "")
    return entry_point_name in {name.strip() for name in disabled.split(",")}


def _provider(options: dict[str, Any], name: str, method: str) -> Any:
    provider = options.pop(name, None)
    if provider is not None and not callable(getattr(provider, method, None)):
        raise TypeError(
            f"invalid {name}={provider!r}: expected an OpenTelemetry provider with a {method}() "
            f"method, or None for the global one"
        )
    return provider


class _WorkflowInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Shared instrumentor logic; subclasses name the framework module and its graph class."""

    _framework_name: ClassVar[str]
    _graph_class_name: ClassVar[str]
    _dependencies: ClassVar[Collection[str]]

    _engine: Engine | None = None
    settings: Settings | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return self._dependencies

    def _instrument(self, **kwargs: Any) -> None:
        tracer_provider = _provider(kwargs, "tracer_provider", "get_tracer")
        logger_provider = _provider(kwargs, "logger_provider", "get_logger")
        meter_provider = _provider(kwargs, "meter_provider", "get_meter")
        settings = resolve_settings(kwargs)
        self.settings = settings
        if not settings.enabled or _disabled_by_environment(self._framework_name):
            logger.debug("%s instrumentation is disabled; nothing is patched", self._framework_name)
            self._engine = None
            return
        module = importlib.import_module(self._framework_name)
        framework = describe(self._framework_name, module, self._graph_class_name)
        tracer = trace.get_tracer(__name__, __version__, tracer_provider, schema_url=SCHEMA_URL)
        event_logger = None
        if settings.event_signal != "span":
            event_logger = get_logger(__name__, __version__, logger_provider, schema_url=SCHEMA_URL)
        meter = metrics.get_meter(__name__, __version__, meter_provider, schema_url=SCHEMA_URL)
        emitter = Emitter(settings, event_logger)
        engine = Engine(framework, tracer, settings, emitter, Metrics(meter))
        engine.patch()
        self._engine = engine

    def _uninstrument(self, **kwargs: Any) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.unpatch()

    @property
    def is_patched(self) -> bool:
        """Whether the framework's classes are currently patched."""
        return self._engine is not None


class KayGraphInstrumentor(_WorkflowInstrumentor):
    """Instrumentor for KayGraph (import name ``kaygraph``)."""

    _framework_name = "kaygraph"
    _graph_class_name = "Graph"
    _dependencies = _instruments_kaygraph


class PocketFlowInstrumentor(_WorkflowInstrumentor):
    """Instrumentor for PocketFlow (import name ``pocketflow``), KayGraph's upstream."""

    _framework_name = "pocketflow"
    _graph_class_name = "Flow"
    _dependencies = _instruments_pocketflow


def _instrument(
    instrumentor: _WorkflowInstrumentor, options: dict[str, Any]
) -> _WorkflowInstrumentor:
    name = instrumentor._framework_name
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        other = "instrument_pocketflow()" if name == "kaygraph" else "instrument_kaygraph()"
        raise ModuleNotFoundError(
            f"cannot instrument {name}: the {name} package is not installed. Install it with "
            f"`pip install {name}`, or call {other} if your workflows use the other framework",
            name=name,
        ) from None
    # The dependency check reads installed distribution metadata, which a
    # framework importable from a source tree does not have. For a direct call
    # the import above is the check that matters.
    instrumentor.instrument(skip_dep_check=True, **options)
    return instrumentor


def instrument_kaygraph(**options: Any) -> KayGraphInstrumentor:
    """Patch KayGraph so that every graph and node execution is traced.

    Args:
        **options: ``tracer_provider``, ``meter_provider``, ``logger_provider`` and the settings
            listed in the module documentation.

    Returns:
        The (singleton) instrumentor. Calling again while instrumented logs a
        warning and changes nothing.

    Raises:
        ValueError: an option or ``KAYGRAPH_OTEL_*`` variable is invalid.
        ImportError: ``kaygraph`` is not installed.
    """
    return _instrument(KayGraphInstrumentor(), options)  # type: ignore[return-value]


def uninstrument_kaygraph() -> None:
    """Remove every patch that ``instrument_kaygraph()`` applied."""
    KayGraphInstrumentor().uninstrument()


def instrument_pocketflow(**options: Any) -> PocketFlowInstrumentor:
    """Patch PocketFlow; the same options as ``instrument_kaygraph()``."""
    return _instrument(PocketFlowInstrumentor(), options)  # type: ignore[return-value]


def uninstrument_pocketflow() -> None:
    """Remove every patch that ``instrument_pocketflow()`` applied."""
    PocketFlowInstrumentor().uninstrument()


@contextlib.contextmanager
def run_context(
    correlation_id: str | None = None, workflow_name: str | None = None
) -> Iterator[None]:
    """Set the correlation id and workflow name of the workflow runs started inside the block.

    The correlation id identifies one run (for example a request id); without
    it a run's correlation id is its trace id. The workflow name replaces the
    graph's class name in the span name ``invoke_workflow {name}``.
    """
    for label, value in (("correlation_id", correlation_id), ("workflow_name", workflow_name)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"invalid {label} {value!r}: expected a non-empty string or None")
    token = RUN_OPTIONS.set(RunOptions(correlation_id, workflow_name))
    try:
        yield
    finally:
        RUN_OPTIONS.reset(token)
