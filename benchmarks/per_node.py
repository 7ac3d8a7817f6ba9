"""Per-node cost: what instrumentation adds to one no-op node, against a hand-made span.

A Flow of 100 no-op nodes runs repeatedly, so the cost of the workflow span is
spread over 100 nodes. Five cases run interleaved:

- uninstrumented PocketFlow;
- the floor: hand-written ``_run`` overrides that start one SDK span per node
  (and one for the workflow) with the attributes and span events that the
  instrumentation produces, attach and detach its context, and end it;
- the instrumentation, with a TracerProvider that records spans and exports nowhere;
- the floor and the instrumentation again with the live Redis exporter
  (``configure(redis_url=...)``), timed until ``force_flush`` returns, so the
  encoding and publishing of every event is included.

The figure of merit is the instrumentation's added cost divided by the floor's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
SDK_CASE = "instrumented, SDK, no export"
REDIS_CASE = "instrumented, Redis live"
FLOOR_OF = {
    SDK_CASE: "floor: hand-made spans, SDK, no export",
    REDIS_CASE: "floor: hand-made spans, Redis live",
}
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


def _flushing(run: Callable[[], None], provider: TracerProvider) -> Callable[[], None]:
    def run_and_flush() -> None:
        run()
        if not provider.force_flush(30_000):
            raise RuntimeError("force_flush of the Redis exporter timed out after 30 s")

    return run_and_flush


def _instrumented_case(
    flow: pocketflow.Flow, runs: int, provider: TracerProvider, flush: bool
) -> Callable[[], float]:
    run = _runner(flow, runs)
    body = _flushing(run, provider) if flush else run

    def case() -> float:
        with instrumented(provider):
            return timed(body)

    return case


def _floor_case(
    flow: HandTracedFlow, runs: int, provider: TracerProvider, flush: bool
) -> Callable[[], float]:
    tracer = provider.get_tracer("benchmarks.floor")
    run = _runner(flow, runs)
    body = _flushing(run, provider) if flush else run

    def case() -> float:
        set_tracer(flow, tracer)
        return timed(body)

    return case


def run(options: Options) -> Result:
    runs, rounds = (3, 3) if options.quick else (10, 31)
    plain = noop_flow(NODES)
    floor = hand_traced_flow([HandTracedNode() for _ in range(NODES)], noop_flow(NODES))
    sdk = sdk_provider()

    with RedisServer() as server:
        live = redis_provider(server.url)
        published_before = server.publish_calls()
        cases = {
            "uninstrumented": lambda: timed(_runner(plain, runs)),
            FLOOR_OF[SDK_CASE]: _floor_case(floor, runs, sdk, False),
            SDK_CASE: _instrumented_case(plain, runs, sdk, False),
            FLOOR_OF[REDIS_CASE]: _floor_case(floor, runs, live, True),
            REDIS_CASE: _instrumented_case(plain, runs, live, True),
        }
        samples = interleaved(cases, rounds)
        published = server.publish_calls() - published_before
        live.shutdown()
    sdk.shutdown()

    result = _report(samples, runs, rounds, published)
    if options.profile:
        per_node = {name: median(values) / (runs * NODES) * 1e6 for name, values in samples.items()}
        profiled = profile_cases(plain, floor, runs * 5, per_node)
        result.tables.extend(profiled.tables)
        result.texts.extend(profiled.texts)
    return result


def _added_ratio(samples: dict[str, list[float]], case: str, floor: str) -> float:
    """Return the median over rounds of (case - uninstrumented) / (floor - uninstrumented)."""
    base = samples["uninstrumented"]
    added = [value - reference for value, reference in zip(samples[case], base, strict=True)]
    floor_added = [value - reference for value, reference in zip(samples[floor], base, strict=True)]
    return median(round_ratios(added, floor_added))


def _report(samples: dict[str, list[float]], runs: int, rounds: int, published: int) -> Result:
    per_node = {name: median(values) / (runs * NODES) * 1e6 for name, values in samples.items()}
    base = per_node["uninstrumented"]
    table = Table(
        f"Per-node cost: {NODES} no-op nodes in a Flow, {runs} runs per round, {rounds} rounds",
        ["case", "us/node (median)", "added us/node", "x uninstrumented", "added / floor added",
         "spread (IQR/median)"],
    )  # fmt: skip
    ratios = {case: _added_ratio(samples, case, floor) for case, floor in FLOOR_OF.items()}
    for name, value in per_node.items():
        slowdown = median(round_ratios(samples[name], samples["uninstrumented"]))
        table.add_row(
            name,
            f"{value:.2f}",
            f"{value - base:.2f}",
            f"{slowdown:.2f}",
            f"{ratios[name]:.2f}" if name in ratios else "-",
            f"{relative_spread(samples[name]) * 100:.1f}%",
        )
    table.notes.append(
        "Ratios are medians over rounds of each round's ratio; added = case - uninstrumented "
        "in the same round."
    )
    # Both Redis cases publish, in every round including the warm-up round.
    events_per_node = published / (2 * (rounds + 1) * runs * NODES)
    table.notes.append(
        "Redis live rows include force_flush, so they cover encoding and publishing every "
        f"event; Redis received {published} PUBLISH commands, {events_per_node:.2f} per node "
        "(workflow events included)."
    )
    sdk_ratio = ratios[SDK_CASE]
    redis_ratio = ratios[REDIS_CASE]
    findings = [
        Finding(
            NAME,
            "added cost per node, SDK without export",
            f"{per_node[SDK_CASE] - base:.1f} us "
            f"(floor {per_node[FLOOR_OF[SDK_CASE]] - base:.1f} us)",
        ),
        Finding(
            NAME,
            "added cost per node, Redis live incl. flush",
            f"{per_node[REDIS_CASE] - base:.1f} us "
            f"(floor {per_node[FLOOR_OF[REDIS_CASE]] - base:.1f} us)",
        ),
        Finding(
            NAME,
            "instrumentation / hand-made span, SDK without export",
            f"{sdk_ratio:.2f}",
            f"<= {TARGET_RATIO}",
            sdk_ratio <= TARGET_RATIO,
        ),
        Finding(
            NAME,
            "instrumentation / hand-made span, Redis live",
            f"{redis_ratio:.2f}",
            f"<= {TARGET_RATIO}",
            redis_ratio <= TARGET_RATIO,
        ),
    ]
    table.notes.append(
        f"Target: added / floor added <= {TARGET_RATIO}; SDK: {verdict(findings[2].holds)}, "
        f"Redis live: {verdict(findings[3].holds)}."
    )
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
    for case, profile in ((SDK_CASE, instrumented_profile), (FLOOR_OF[SDK_CASE], floor_profile)):
        title = f"{case}, {runs} runs of {NODES} nodes"
        result.tables.extend(profile_tables(title, profile, per_node[case], "node"))
        result.texts.append(f"pyinstrument call tree, {title}\n{profile.tree}")
    return result
