"""Instrumenting, instrumenting twice, uninstrumenting and disabling KayGraph and PocketFlow."""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import kaygraph
import pocketflow
import pytest
import wrapt
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from kaygraph_otel import (
    KayGraphInstrumentor,
    PocketFlowInstrumentor,
    instrument_kaygraph,
    instrument_pocketflow,
    uninstrument_kaygraph,
    uninstrument_pocketflow,
)
from kaygraph_otel import attributes as attr
from kaygraph_otel._engine import WRAPPED_METHODS

INSTRUMENTOR_LOGGER = "opentelemetry.instrumentation.instrumentor"


class Framework:
    """One instrumented framework: its module, graph class and instrument functions."""

    def __init__(
        self,
        module: ModuleType,
        graph: type,
        instrumentor: type,
        instrument: Callable[..., Any],
        uninstrument: Callable[[], None],
    ) -> None:
        self.module = module
        self.graph = graph
        self.instrumentor = instrumentor
        self.instrument = instrument
        self.uninstrument = uninstrument
        self.name = module.__name__

    def build(self) -> Any:
        """Return a graph of two plain nodes that store a value in ``shared``."""
        module = self.module

        class Store(module.Node):  # type: ignore[name-defined,misc]
            def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
                shared["stored"] = shared.get("stored", 0) + 1

        first = Store()
        first >> Store()
        return self.graph(start=first)


FRAMEWORKS = {
    "kaygraph": Framework(
        kaygraph, kaygraph.Graph, KayGraphInstrumentor, instrument_kaygraph, uninstrument_kaygraph
    ),
    "pocketflow": Framework(
        pocketflow,
        pocketflow.Flow,
        PocketFlowInstrumentor,
        instrument_pocketflow,
        uninstrument_pocketflow,
    ),
}


@pytest.fixture(params=sorted(FRAMEWORKS))
def framework(request: pytest.FixtureRequest) -> Iterator[Framework]:
    """Each framework in turn, uninstrumented again after the test."""
    chosen = FRAMEWORKS[request.param]
    assert not chosen.instrumentor().is_instrumented_by_opentelemetry, "a test leaked a patch"
    try:
        yield chosen
    finally:
        chosen.uninstrument()


def node_classes(module: ModuleType) -> list[type]:
    """Return the framework's BaseNode and every subclass defined so far."""
    found: list[type] = []
    pending = [module.BaseNode]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def wrapped_methods(module: ModuleType) -> list[str]:
    """Return ``Class.method`` for every lifecycle method that is currently wrapped."""
    return [
        f"{cls.__qualname__}.{name}"
        for cls in node_classes(module)
        for name in WRAPPED_METHODS
        if isinstance(cls.__dict__.get(name), wrapt.FunctionWrapper)
    ]


def run_and_collect(framework: Framework, exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    exporter.clear()
    framework.build().run({})
    return list(exporter.get_finished_spans())


def test_instrument_patches_lifecycle_methods(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    instrumentor = framework.instrument(tracer_provider=tracer_provider)

    assert instrumentor.is_patched is True
    assert isinstance(framework.module.Node.__dict__["_exec"], wrapt.FunctionWrapper)
    assert isinstance(framework.module.BaseNode.__dict__["_run"], wrapt.FunctionWrapper)
    assert isinstance(
        concurrent.futures.ThreadPoolExecutor.__dict__["submit"], wrapt.FunctionWrapper
    )
    assert len(run_and_collect(framework, span_exporter)) == 3


def test_instrument_twice_warns_without_double_spans(
    framework: Framework,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = framework.instrument(tracer_provider=tracer_provider)

    with caplog.at_level(logging.WARNING, logger=INSTRUMENTOR_LOGGER):
        second = framework.instrument(tracer_provider=tracer_provider)

    assert second is first
    warnings = [r for r in caplog.records if r.name == INSTRUMENTOR_LOGGER]
    assert len(warnings) == 1
    assert "already instrumented" in warnings[0].getMessage()
    exec_wrapper = framework.module.Node.__dict__["_exec"]
    assert inspect.isfunction(exec_wrapper.__wrapped__)
    spans = run_and_collect(framework, span_exporter)
    assert len(spans) == 3
    assert len({span.get_span_context().span_id for span in spans}) == 3


def test_uninstrument_restores_methods(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    original_exec = framework.module.Node.__dict__["_exec"]
    original_submit = concurrent.futures.ThreadPoolExecutor.__dict__["submit"]
    framework.instrument(tracer_provider=tracer_provider)

    framework.uninstrument()

    assert framework.module.Node.__dict__["_exec"] is original_exec
    assert inspect.isfunction(framework.module.Node.__dict__["_exec"])
    assert wrapped_methods(framework.module) == []
    assert "__init_subclass__" not in framework.module.BaseNode.__dict__
    assert concurrent.futures.ThreadPoolExecutor.__dict__["submit"] is original_submit
    assert framework.instrumentor().is_patched is False
    assert run_and_collect(framework, span_exporter) == []


def test_instrument_again_after_uninstrument(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    framework.instrument(tracer_provider=tracer_provider)
    framework.uninstrument()

    framework.instrument(tracer_provider=tracer_provider)

    assert len(run_and_collect(framework, span_exporter)) == 3


def test_instances_from_instrumented_time_untraced_after(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    framework.instrument(tracer_provider=tracer_provider)
    graph = framework.build()

    framework.uninstrument()
    shared: dict[str, Any] = {}
    span_exporter.clear()
    graph.run(shared)

    assert shared == {"stored": 2}
    assert list(span_exporter.get_finished_spans()) == []


def test_subclass_defined_while_instrumented_is_unwrapped(
    framework: Framework, tracer_provider: TracerProvider
) -> None:
    framework.instrument(tracer_provider=tracer_provider)

    class Defined(framework.module.Node):  # type: ignore[name-defined,misc]
        def exec(self, prep_res: Any) -> str:
            return "value"

    assert isinstance(Defined.__dict__["exec"], wrapt.FunctionWrapper)
    framework.uninstrument()
    assert inspect.isfunction(Defined.__dict__["exec"])


def test_enabled_false_patches_nothing(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    instrumentor = framework.instrument(tracer_provider=tracer_provider, enabled=False)

    assert instrumentor.is_patched is False
    assert wrapped_methods(framework.module) == []
    assert not isinstance(
        concurrent.futures.ThreadPoolExecutor.__dict__["submit"], wrapt.FunctionWrapper
    )
    assert run_and_collect(framework, span_exporter) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "{name}"),
        ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", "redis, {name} ,requests"),
        ("OTEL_SDK_DISABLED", "true"),
        ("KAYGRAPH_OTEL_ENABLED", "false"),
    ],
)
def test_environment_disables_patching(
    variable: str,
    value: str,
    framework: Framework,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(variable, value.format(name=framework.name))

    instrumentor = framework.instrument(tracer_provider=tracer_provider)

    assert instrumentor.is_patched is False
    assert wrapped_methods(framework.module) == []
    assert run_and_collect(framework, span_exporter) == []


def test_disabling_other_framework_keeps_this_one(
    framework: Framework, tracer_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = "pocketflow" if framework.name == "kaygraph" else "kaygraph"
    monkeypatch.setenv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS", other)

    instrumentor = framework.instrument(tracer_provider=tracer_provider)

    assert instrumentor.is_patched is True


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_item_spans": -1}, "max_item_spans=-1"),
        ({"event_signal": "x"}, "event_signal='x'"),
        ({"unknown_option": 1}, "unknown_option"),
    ],
)
def test_invalid_option_raises_and_patches_nothing(
    options: dict[str, Any], named: str, framework: Framework, tracer_provider: TracerProvider
) -> None:
    with pytest.raises(ValueError, match=named):
        framework.instrument(tracer_provider=tracer_provider, **options)

    assert framework.instrumentor().is_instrumented_by_opentelemetry is False
    assert wrapped_methods(framework.module) == []
    assert framework.instrument(tracer_provider=tracer_provider).is_patched is True


def test_invalid_environment_variable_raises(
    framework: Framework, tracer_provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES", "abc")

    with pytest.raises(ValueError, match="KAYGRAPH_OTEL_MAX_SNAPSHOT_BYTES='abc'"):
        framework.instrument(tracer_provider=tracer_provider)

    assert wrapped_methods(framework.module) == []


def test_both_frameworks_share_thread_pool_patch(tracer_provider: TracerProvider) -> None:
    submit = concurrent.futures.ThreadPoolExecutor.__dict__["submit"]
    instrument_kaygraph(tracer_provider=tracer_provider)
    instrument_pocketflow(tracer_provider=tracer_provider)
    try:
        uninstrument_kaygraph()

        patched = concurrent.futures.ThreadPoolExecutor.__dict__["submit"]
        assert isinstance(patched, wrapt.FunctionWrapper)
        assert wrapped_methods(kaygraph) == []
        assert wrapped_methods(pocketflow) != []
    finally:
        uninstrument_kaygraph()
        uninstrument_pocketflow()

    assert concurrent.futures.ThreadPoolExecutor.__dict__["submit"] is submit


def test_unsampled_runs_record_nothing(framework: Framework) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    framework.instrument(tracer_provider=provider)

    graph = framework.build()
    shared: dict[str, Any] = {}
    graph.run(shared)

    assert shared == {"stored": 2}
    assert list(exporter.get_finished_spans()) == []


def test_event_filter_keeps_selected_events(
    framework: Framework, tracer_provider: TracerProvider, span_exporter: InMemorySpanExporter
) -> None:
    framework.instrument(tracer_provider=tracer_provider, events="node_started,workflow_started")

    spans = run_and_collect(framework, span_exporter)

    names = {event.name for span in spans for event in span.events}
    assert names == {"node_started", "workflow_started"}


@pytest.mark.parametrize(("signal", "span_events"), [("log", False), ("both", True)])
def test_event_signal_emits_log_records(
    signal: str,
    span_events: bool,
    framework: Framework,
    tracer_provider: TracerProvider,
    span_exporter: InMemorySpanExporter,
) -> None:
    log_exporter = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    framework.instrument(
        tracer_provider=tracer_provider, logger_provider=logger_provider, event_signal=signal
    )

    spans = run_and_collect(framework, span_exporter)
    records = [item.log_record for item in log_exporter.get_finished_logs()]

    assert len(spans) == 3
    has_span_events = any(span.events for span in spans)
    assert has_span_events is span_events
    started = [record for record in records if record.event_name == "kaygraph.node_started"]
    assert len(started) == 2
    node_span_ids = {
        span.get_span_context().span_id
        for span in spans
        if span.attributes[attr.NODE_KIND] == "node"
    }
    assert {record.span_id for record in started} == node_span_ids
    for record in started:
        assert record.attributes["kaygraph.event_name"] == "node_started"
        assert record.attributes[attr.NODE_KIND] == "node"
    workflow_done = [r for r in records if r.event_name == "kaygraph.workflow_completed"]
    assert len(workflow_done) == 1


def test_missing_framework_error_names_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from kaygraph_otel import instrument_kaygraph

    # A None entry in sys.modules makes the import fail as if kaygraph were not installed.
    monkeypatch.setitem(sys.modules, "kaygraph", None)
    with pytest.raises(ModuleNotFoundError) as raised:
        instrument_kaygraph()
    message = str(raised.value)
    assert "pip install kaygraph" in message
    assert "instrument_pocketflow()" in message
