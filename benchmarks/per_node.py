"""Per-node cost: what instrumentation adds to one no-op node, against a hand-made span.

A Flow of 100 no-op nodes runs repeatedly, so the cost of the workflow span is
spread over 100 nodes. Each of two groups runs three cases interleaved:

- uninstrumented PocketFlow;
- the floor: hand-written ``_run`` overrides that start one SDK span per node
  (and one for the workflow) with the attributes and span events that the
  instrumentation produces, attach and detach its context, and end it;
- the instrumentation.

In the first group the spans go to a TracerProvider that records them and
exports nowhere. In the second they go to the live Redis exporter
(``configure(redis_url=...)``) and each measurement lasts until
``force_flush`` returns, so the encoding and publishing of every event is
included. The figure of merit is the instrumentation's added cost divided by
the floor's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pocketflow
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from benchmarks._common import (
    Finding,
    Options,
    RedisServer,
    Result,
    Table,
    instrumented,
    interleaved,
    median,
    noop_flow,
    profile_call,
    profile_tables,
    redis_provider,
    relative_spread,
    round_ratios,
    sdk_provider,
    timed,
    verdict,
)
from kaygraph_otel import attributes as attr

NAME = "per_node"
NODES = 100
TARGET_RATIO = 1.2
BASE = "uninstrumented"
FLOOR = "floor: hand-made spans"
INSTRUMENTED = "instrumented"
# Attributes that the instrumentation sets when a span ends rather than when it starts.
_END_ATTRIBUTES = (attr.NEXT_NODE_ID, attr.STATE, attr.ACTION)


class _RunState:
    """The correlation id of the current hand-traced run, shared by the flow and its node copies."""

    correlation_id = ""


class HandTracedNode(pocketflow.Node):  # type: ignore[misc]
    """A no-op node whose ``_run`` makes its span by hand, as the floor of the comparison."""

    tracer: Tracer
    span_name: str
    start_attributes: dict[str, AttributeValue]
    next_node_id: str | None
    run_state: _RunState

    def _run(self, shared: Any) -> Any:
        attributes = dict(self.start_attributes)
        attributes[attr.CORRELATION_ID] = self.run_state.correlation_id
        span = self.tracer.start_span(self.span_name, kind=SpanKind.INTERNAL, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            span.add_event("node_started", {attr.EVENT_STATE: "running"})
            span.add_event("node_preparing", {attr.EVENT_STATE: "preparing"})
            prep_res = self.prep(shared)
            span.add_event("node_executing", {attr.EVENT_STATE: "executing"})
            exec_res = self._exec(prep_res)
            action = self.post(shared, prep_res, exec_res)
            if self.next_node_id is not None:
                span.set_attribute(attr.NEXT_NODE_ID, self.next_node_id)
            span.set_attribute(attr.STATE, "completed")
            span.add_event("node_completed", {attr.EVENT_STATE: "completed"})
            span.end()
            return action
        finally:
            otel_context.detach(token)


class HandTracedFlow(pocketflow.Flow):  # type: ignore[misc]
    """A Flow whose ``_run`` makes the workflow span by hand."""

    tracer: Tracer
    span_name: str
    start_attributes: dict[str, AttributeValue]
    run_state: _RunState

    def _run(self, shared: Any) -> Any:
        span = self.tracer.start_span(
            self.span_name, kind=SpanKind.INTERNAL, attributes=dict(self.start_attributes)
        )
        correlation_id = trace.format_trace_id(span.get_span_context().trace_id)
        self.run_state.correlation_id = correlation_id
        span.set_attribute(attr.CORRELATION_ID, correlation_id)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            span.add_event("workflow_started", {attr.EVENT_STATE: "running"})
            span.add_event("node_preparing", {attr.EVENT_STATE: "preparing"})
            prep_res = self.prep(shared)
            outcome = self._orch(shared)
            result = self.post(shared, prep_res, outcome)
            span.set_attribute(attr.STATE, "completed")
            span.add_event("workflow_completed", {attr.EVENT_STATE: "completed"})
            span.end()
            return result
        finally:
            otel_context.detach(token)


def capture_spans(flow: pocketflow.Flow, instrument: bool) -> list[ReadableSpan]:
    """Run ``flow`` once, instrumented or not, and return the spans it produced, workflow last."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if instrument:
        with instrumented(provider):
            flow.run({})
    else:
        set_tracer(flow, provider.get_tracer("benchmarks.floor"))
        flow.run({})
    provider.shutdown()
    return list(exporter.get_finished_spans())


def set_tracer(flow: pocketflow.Flow, tracer: Tracer) -> None:
    flow.tracer = tracer
    node = flow.start_node
    while node is not None:
        node.tracer = tracer
        node = node.successors.get("default")


def hand_traced_flow(
    nodes: Sequence[HandTracedNode], reference_flow: pocketflow.Flow
) -> HandTracedFlow:
    """Chain ``nodes`` into a floor flow whose spans copy an instrumented run's spans.

    ``reference_flow`` runs once instrumented, and must be a chain of as many nodes
    as ``nodes``; the floor copies the names and attributes of its spans.

    Raises:
        RuntimeError: the floor's spans differ from the instrumented spans in name,
            attribute keys or event names, so the comparison would be unfair.
    """
    reference = capture_spans(reference_flow, instrument=True)
    workflow_span, node_spans = reference[-1], reference[:-1]
    if len(node_spans) != len(nodes):
        raise RuntimeError(
            f"expected {len(nodes)} node spans from the instrumentation, got {len(node_spans)}"
        )

    state = _RunState()
    for node, span in zip(nodes, node_spans, strict=True):
        node.span_name = span.name
        node.start_attributes = _start_attributes(span)
        node.next_node_id = (span.attributes or {}).get(attr.NEXT_NODE_ID)  # type: ignore[assignment]
        node.run_state = state
    for current, following in zip(nodes, nodes[1:], strict=False):
        current >> following
    flow = HandTracedFlow(start=nodes[0])
    flow.span_name = workflow_span.name
    flow.start_attributes = _start_attributes(workflow_span)
    flow.run_state = state

    _check_same_shape(reference, capture_spans(flow, instrument=False))
    return flow


def _start_attributes(span: ReadableSpan) -> dict[str, AttributeValue]:
    skipped = (*_END_ATTRIBUTES, attr.CORRELATION_ID)
    return {key: value for key, value in (span.attributes or {}).items() if key not in skipped}


def _shape(span: ReadableSpan) -> tuple[str, list[str], list[tuple[str, list[str]]]]:
    events = [(event.name, sorted(event.attributes or {})) for event in span.events]
    return span.name, sorted(span.attributes or {}), events


def _check_same_shape(expected: Sequence[ReadableSpan], actual: Sequence[ReadableSpan]) -> None:
    expected_shapes = [_shape(span) for span in expected]
    actual_shapes = [_shape(span) for span in actual]
    if expected_shapes != actual_shapes:
        first = next(
            i
            for i, (a, b) in enumerate(zip(expected_shapes, actual_shapes, strict=False))
            if a != b
        )
        raise RuntimeError(
            f"the hand-made floor spans differ from the instrumented spans at span {first}: "
            f"expected {expected_shapes[first]}, got {actual_shapes[first]}"
        )


def _runner(flow: pocketflow.Flow, runs: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(runs):
            flow.run({})

    return run


@dataclass
class Group:
    """One interleaved group: an uninstrumented baseline, a floor and an instrumented case."""

    label: str
    samples: dict[str, list[float]]
    runs: int
    rounds: int

    def per_node_us(self, name: str) -> float:
        return median(self.samples[name]) / (self.runs * NODES) * 1e6


def _flushing(run: Callable[[], None], provider: TracerProvider) -> Callable[[], None]:
    def run_and_flush() -> None:
        run()
        if not provider.force_flush(30_000):
            raise RuntimeError("force_flush of the Redis exporter timed out after 30 s")

    return run_and_flush


def _timed_runs(
    flow: pocketflow.Flow, runs: int, provider: TracerProvider | None, flush: bool
) -> float:
    """Time ``runs`` runs of ``flow`` after one untimed warm-up run (and its export)."""
    body = _runner(flow, runs)
    warmup = _runner(flow, 1)
    if flush and provider is not None:
        body = _flushing(body, provider)
        warmup = _flushing(warmup, provider)
    return timed(body, warmup)


def _uninstrumented_case(flow: pocketflow.Flow, runs: int) -> Callable[[], float]:
    return lambda: _timed_runs(flow, runs, None, False)


def _instrumented_case(
    flow: pocketflow.Flow, runs: int, provider: TracerProvider, flush: bool
) -> Callable[[], float]:
    def case() -> float:
        with instrumented(provider):
            return _timed_runs(flow, runs, provider, flush)

    return case


def _floor_case(
    flow: HandTracedFlow, runs: int, provider: TracerProvider, flush: bool
) -> Callable[[], float]:
    tracer = provider.get_tracer("benchmarks.floor")

    def case() -> float:
        set_tracer(flow, tracer)
        return _timed_runs(flow, runs, provider, flush)

    return case


def run(options: Options) -> Result:
    sdk_runs, sdk_rounds = (3, 5) if options.quick else (20, 61)
    redis_runs, redis_rounds = (3, 3) if options.quick else (10, 21)
    plain = noop_flow(NODES)
    floor = hand_traced_flow([HandTracedNode() for _ in range(NODES)], noop_flow(NODES))

    # The SDK cases and the Redis cases run as two interleaved groups, each with its
    # own uninstrumented baseline, so that the short SDK cases are paired with each
    # other and not spread between the much longer Redis cases.
    sdk = sdk_provider()
    sdk_cases = {
        BASE: _uninstrumented_case(plain, sdk_runs),
        FLOOR: _floor_case(floor, sdk_runs, sdk, False),
        INSTRUMENTED: _instrumented_case(plain, sdk_runs, sdk, False),
    }
    sdk_samples = interleaved(sdk_cases, sdk_rounds)
    sdk.shutdown()

    with RedisServer() as server:
        live = redis_provider(server.url)
        published_before = server.publish_calls()
        redis_cases = {
            BASE: _uninstrumented_case(plain, redis_runs),
            FLOOR: _floor_case(floor, redis_runs, live, True),
            INSTRUMENTED: _instrumented_case(plain, redis_runs, live, True),
        }
        redis_samples = interleaved(redis_cases, redis_rounds)
        published = server.publish_calls() - published_before
        live.shutdown()

    # Both Redis cases publish in every round, the warm-up round included, and each
    # measurement adds one warm-up run.
    nodes_published = 2 * (redis_rounds + 1) * (redis_runs + 1) * NODES
    groups = [
        Group("SDK without export", sdk_samples, sdk_runs, sdk_rounds),
        Group("Redis live", redis_samples, redis_runs, redis_rounds),
    ]
    result = _report(groups, published / nodes_published)
    if options.profile:
        per_node = {
            name: median(values) / (sdk_runs * NODES) * 1e6 for name, values in sdk_samples.items()
        }
        profiled = profile_cases(plain, floor, sdk_runs * 5, per_node)
        result.tables.extend(profiled.tables)
        result.texts.extend(profiled.texts)
    return result


def _round_added_ratio(samples: dict[str, list[float]]) -> float:
    """Return the median over rounds of the instrumented added cost over the floor's."""
    base = samples[BASE]
    added = [
        value - reference for value, reference in zip(samples[INSTRUMENTED], base, strict=True)
    ]
    floor_added = [value - reference for value, reference in zip(samples[FLOOR], base, strict=True)]
    return median(round_ratios(added, floor_added))


def _report(groups: list[Group], events_per_node: float) -> Result:
    table = Table(
        f"Per-node cost: {NODES} no-op nodes in a Flow",
        ["group", "case", "runs x rounds", "us/node (median)", "added us/node",
         "added / floor added", "same, median of per-round ratios", "spread (IQR/median)"],
    )  # fmt: skip
    findings: list[Finding] = []
    for group in groups:
        base = group.per_node_us(BASE)
        added = group.per_node_us(INSTRUMENTED) - base
        floor_added = group.per_node_us(FLOOR) - base
        ratio = added / floor_added
        for name in (BASE, FLOOR, INSTRUMENTED):
            is_case = name == INSTRUMENTED
            table.add_row(
                group.label,
                name,
                f"{group.runs} x {group.rounds}",
                f"{group.per_node_us(name):.2f}",
                f"{group.per_node_us(name) - base:.2f}",
                f"{ratio:.2f}" if is_case else "-",
                f"{_round_added_ratio(group.samples):.2f}" if is_case else "-",
                f"{relative_spread(group.samples[name]) * 100:.1f}%",
            )
        findings.append(
            Finding(
                NAME,
                f"added cost per node, {group.label}",
                f"{added:.1f} us (floor {floor_added:.1f} us)",
            )
        )
        findings.append(
            Finding(
                NAME,
                f"instrumentation / hand-made span, {group.label}",
                f"{ratio:.2f}",
                f"<= {TARGET_RATIO}",
                ratio <= TARGET_RATIO,
            )
        )
    table.notes.append(
        "added = case - uninstrumented of the same group; added / floor added uses the "
        "medians. Every measurement follows one untimed warm-up run."
    )
    table.notes.append(
        "Redis live cases are timed until force_flush returns, so they include encoding and "
        f"publishing every event; Redis received {events_per_node:.2f} PUBLISH commands per "
        "node (workflow events included)."
    )
    verdicts = ", ".join(
        f"{f.figure.split(', ', 1)[1]}: {verdict(f.holds)}" for f in findings[1::2]
    )
    table.notes.append(f"Target: added / floor added <= {TARGET_RATIO}; {verdicts}.")
    return Result([table], findings)


def profile_cases(
    plain: pocketflow.Flow, floor: HandTracedFlow, runs: int, per_node: dict[str, float]
) -> Result:
    """Profile the instrumented and the floor case, both with the SDK and no export."""
    result = Result()
    provider = sdk_provider()
    with instrumented(provider):
        instrumented_profile = profile_call(_runner(plain, runs))
    set_tracer(floor, provider.get_tracer("benchmarks.floor"))
    floor_profile = profile_call(_runner(floor, runs))
    provider.shutdown()
    if instrumented_profile is None or floor_profile is None:
        result.texts.append("pyinstrument is not installed, so --profile printed nothing.")
        return result
    for case, profile in ((INSTRUMENTED, instrumented_profile), (FLOOR, floor_profile)):
        title = f"{case}, SDK without export, {runs} runs of {NODES} nodes"
        result.tables.extend(profile_tables(title, profile, per_node[case], "us/node"))
        result.texts.append(f"pyinstrument call tree, {title}\n{profile.tree}")
    return result
