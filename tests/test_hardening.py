"""Regression tests for ways the instrumentation could change or hold on to a workflow."""

from __future__ import annotations

import contextvars
import decimal
import gc
import pickle
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pocketflow
import pytest
import wrapt
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaygraph_otel import attributes as attr
from kaygraph_otel import instrument_pocketflow, uninstrument_pocketflow
from kaygraph_otel._snapshot import snapshot_json
from kaygraph_otel.config import resolve_settings

VARIABLE: contextvars.ContextVar[int] = contextvars.ContextVar("hardening_variable", default=0)


@pytest.fixture
def memory() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    instrument_pocketflow(tracer_provider=provider)
    try:
        yield exporter
    finally:
        uninstrument_pocketflow()


class PoolUser(pocketflow.Node):
    """Uses thread pools the way application code does inside exec."""

    pool = ThreadPoolExecutor(1)

    def exec(self, prep_res: Any) -> tuple[str, int]:
        decimal.getcontext().prec = 5
        with ThreadPoolExecutor(1) as pool:
            third = pool.submit(lambda: str(decimal.Decimal(1) / 3)).result()
        self.pool.submit(VARIABLE.set, 7).result()
        return third, self.pool.submit(VARIABLE.get).result()

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["result"] = exec_res


def run_pool_user() -> Any:
    decimal.setcontext(decimal.Context())
    shared: dict[str, Any] = {}
    pocketflow.Flow(start=PoolUser()).run(shared)
    return shared["result"]


def test_thread_pool_tasks_keep_their_own_context() -> None:
    expected = run_pool_user()
    instrument_pocketflow(tracer_provider=TracerProvider())
    try:
        assert run_pool_user() == expected
    finally:
        uninstrument_pocketflow()


class Square(pocketflow.Node):
    def exec(self, value: int) -> int:
        return value * value


def test_bound_methods_of_patched_classes_pickle(memory: InMemorySpanExporter) -> None:
    node = Square()
    restored = pickle.loads(pickle.dumps(node.exec))
    assert restored(4) == 16


class Holder(pocketflow.Node):
    pass


def test_structure_cache_frees_dropped_graphs(memory: InMemorySpanExporter) -> None:
    refs = []
    for _ in range(5):
        node = Holder()
        refs.append(weakref.ref(node))
        pocketflow.Flow(start=node).run({})
        del node
    gc.collect()
    assert [ref() for ref in refs] == [None] * 5


def test_uninstrument_keeps_foreign_wrapper() -> None:
    calls: list[str] = []

    def foreign(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
        calls.append("foreign")
        return wrapped(*args, **kwargs)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    original = pocketflow.Node.__dict__["_exec"]
    instrument_pocketflow(tracer_provider=provider)
    wrapt.wrap_function_wrapper(pocketflow.Node, "_exec", foreign)
    foreign_wrapper = pocketflow.Node.__dict__["_exec"]
    try:
        uninstrument_pocketflow()
        pocketflow.Flow(start=Holder()).run({})
        assert calls == ["foreign"]
        assert pocketflow.Node.__dict__["_exec"] is foreign_wrapper
        assert exporter.get_finished_spans() == ()
    finally:
        pocketflow.Node._exec = original  # type: ignore[method-assign]


class NumberAction(pocketflow.Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> int:
        return 5


class Never(pocketflow.Node):
    def exec(self, prep_res: Any) -> None:
        raise AssertionError("the flow ends before this node")


def test_non_string_action_records_no_transition(memory: InMemorySpanExporter) -> None:
    first = NumberAction()
    first >> Never()
    with pytest.warns(UserWarning, match="Flow ends"):
        pocketflow.Flow(start=first).run({})
    spans: list[ReadableSpan] = list(memory.get_finished_spans())
    node = next(s for s in spans if s.name == "node NumberAction")
    assert attr.NEXT_NODE_ID not in node.attributes
    assert attr.ACTION not in node.attributes
    assert all("Never" not in s.name for s in spans)


class RaisingOnEnd(SpanProcessor):
    """A span processor with a bug: its on_end raises for every phase span."""

    def on_end(self, span: ReadableSpan) -> None:
        if span.attributes.get(attr.NODE_KIND) == "phase":
            raise RuntimeError("processor bug")


class Finisher(pocketflow.Node):
    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> None:
        shared["done"] = True


def test_phase_span_processor_failure_stays_out_of_workflow() -> None:
    provider = TracerProvider()
    provider.add_span_processor(RaisingOnEnd())
    instrument_pocketflow(tracer_provider=provider, phase_spans=True)
    try:
        shared: dict[str, Any] = {}
        pocketflow.Flow(start=Finisher()).run(shared)
    finally:
        uninstrument_pocketflow()
    assert shared == {"done": True}


def test_nested_failure_stack_traces_are_bounded(memory: InMemorySpanExporter) -> None:
    class Deep(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            raise ValueError("x" * 100_000)

    flow: pocketflow.BaseNode = Deep()
    for _ in range(20):
        flow = pocketflow.Flow(start=flow)
    with pytest.raises(ValueError):
        flow.run({})
    for span in memory.get_finished_spans():
        for event in span.events:
            if event.name == "exception":
                assert len(event.attributes["exception.stacktrace"]) <= 16_384 + 30
                assert len(event.attributes["exception.message"]) < 5_000


@pytest.mark.parametrize(
    "secret",
    [
        "sk-proj-abcdefghijklmnopqrstuvwxyz12",
        "sk-ant-api03-abcdefghijklmnopqrstuv",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.abcdefgh",
        "postgres://user:pass@db.internal/app",
        "AIza" + "A" * 35,
        "hf_" + "a" * 34,
    ],
)
def test_common_secret_values_scrubbed(secret: str) -> None:
    text, scrubbed = snapshot_json({"note": secret}, max_bytes=4096)
    assert secret not in text
    assert scrubbed == ["$.note"]


@pytest.mark.parametrize("key", ["jwt", "bearer", "otp", "signature", "hmac", "salt", "dsn", "key"])
def test_secret_keys_scrubbed(key: str) -> None:
    text, scrubbed = snapshot_json({key: "value-1234"}, max_bytes=4096)
    assert "value-1234" not in text
    assert scrubbed == [f"$.{key}"]


def test_ordinary_keys_kept() -> None:
    value = {"cache_key": 1, "max_tokens": 2, "primary": 3, "pinned": 4}
    text, scrubbed = snapshot_json(value, max_bytes=4096)
    assert scrubbed == []


def test_huge_values_snapshot_cheaply() -> None:
    value = {"text": "a" * 20_000_000, "many": dict.fromkeys(range(1_000_000), 0)}
    text, _ = snapshot_json(value, max_bytes=8192)
    assert len(text.encode()) <= 8192
    assert "999800 more entries" in text


def test_scrub_patterns_json_array_keeps_commas() -> None:
    settings = resolve_settings({}, {"KAYGRAPH_OTEL_SCRUB_PATTERNS": '["^acct-\\\\d{6,8}$"]'})
    assert settings.scrub_patterns == ("^acct-\\d{6,8}$",)
    text, scrubbed = snapshot_json(
        {"account": "acct-1234567"}, max_bytes=4096, extra_patterns=settings.scrub_patterns
    )
    assert "acct-1234567" not in text
    with pytest.raises(ValueError, match="JSON array"):
        resolve_settings({}, {"KAYGRAPH_OTEL_SCRUB_PATTERNS": '["unclosed'})


def test_invalid_provider_names_argument() -> None:
    with pytest.raises(TypeError, match="tracer_provider='x'"):
        instrument_pocketflow(tracer_provider="x")
    with pytest.raises(TypeError, match="meter_provider=5"):
        instrument_pocketflow(meter_provider=5)
