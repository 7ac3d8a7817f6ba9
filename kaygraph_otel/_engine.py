"""The engine behind both instrumentors: class patching and the span logic of each wrapper.

Every class of the framework's node hierarchy that defines one of the
lifecycle methods in ``WRAPPED_METHODS`` gets that method wrapped, and classes
defined later are patched as they are created. Because a subclass that
overrides ``_run`` and calls ``super()._run`` reaches two wrappers for one
execution, each wrapper first checks whether the current run already belongs
to the same instance and then passes straight through: one execution, one span.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from kaygraph_otel import attributes as attr
from kaygraph_otel._execution import ExecutionWrappers
from kaygraph_otel._framework import Framework
from kaygraph_otel._metrics import Metrics
from kaygraph_otel._patching import (
    ClassPatcher,
    Wrapper,
    acquire_submit_patch,
    release_submit_patch,
)
from kaygraph_otel._runs import (
    CURRENT_RUN,
    RUN_OPTIONS,
    Emitter,
    NodeRun,
    Workflow,
    debug_failure,
    error_attributes,
    record_exception,
)
from kaygraph_otel._snapshot import safe_str, snapshot_json
from kaygraph_otel._structure import (
    StructureCache,
    node_key,
    unique_id,
    user_node_id,
    walk_graph,
)
from kaygraph_otel.config import Settings

WRAPPED_METHODS = (
    "_run",
    "_run_async",
    "prep",
    "prep_async",
    "_exec",
    "exec",
    "exec_async",
    "exec_fallback",
    "exec_fallback_async",
    "on_error",
    "validate_input",
    "validate_output",
    "post",
    "post_async",
)

_SPAN_NAME_PREFIX = {"workflow": "invoke_workflow", "graph": "graph", "node": "node"}
MAX_TRANSITIONS_RECORDED = 200


def _count_metrics(run: NodeRun) -> dict[str, AttributeValue]:
    """Return the retry, fallback and batch counts of a run as metric event attributes."""
    metrics: dict[str, AttributeValue] = {}
    prefix = attr.EVENT_METRIC_PREFIX
    if run.retries:
        metrics[prefix + "retries"] = run.retries
    if run.fallbacks:
        metrics[prefix + "fallbacks"] = run.fallbacks
    if run.is_batch:
        metrics[prefix + "items_succeeded"] = run.items_succeeded
        metrics[prefix + "items_failed"] = run.items_failed
        if run.batch_size is not None:
            metrics[prefix + "batch_size"] = run.batch_size
    return metrics


class Engine(ExecutionWrappers):
    """Patches one framework and turns its executions into spans, events and metrics."""

    def __init__(
        self,
        framework: Framework,
        tracer: Tracer,
        settings: Settings,
        emitter: Emitter,
        metrics: Metrics,
    ) -> None:
        self.framework = framework
        self.tracer = tracer
        self.settings = settings
        self.emitter = emitter
        self.metrics = metrics
        self._patcher = ClassPatcher(framework.base_node, WRAPPED_METHODS, self._wrapper_for)
        self._structures = StructureCache()
        self.active = False

    def patch(self) -> None:
        self.active = True
        self._patcher.patch()
        acquire_submit_patch()

    def unpatch(self) -> None:
        # A wrapper that another library wrapped in turn stays in place. With the
        # engine inactive it starts no run, so every other wrapper passes through too.
        self.active = False
        self._patcher.unpatch()
        release_submit_patch()

    def _wrapper_for(self, cls: type, name: str, is_async: bool) -> Wrapper | None:
        framework = self.framework
        if name == "_run":
            return self._run_async if is_async else self._run
        if name == "_run_async":
            return self._run_async if is_async else None
        if name in ("prep", "prep_async"):
            return self._prep_async if is_async else self._prep
        if name == "_exec":
            item_loop = cls in framework.item_loops
            if is_async:
                return lambda w, i, a, k: self._exec_async(w, i, a, k, item_loop)
            return lambda w, i, a, k: self._exec(w, i, a, k, item_loop)
        if name in ("exec", "exec_async"):
            return self._attempt_async if is_async else self._attempt
        if name in ("exec_fallback", "exec_fallback_async"):
            if cls in framework.item_loops:
                return None  # the framework's default fallback only re-raises
            return self._fallback_async if is_async else self._fallback
        if name == "on_error":
            return None if is_async else self._on_error
        if name in ("validate_input", "validate_output"):
            return None if is_async else lambda w, i, a, k: self._phase(w, i, a, k, name)
        if name in ("post", "post_async") and self.settings.phase_spans:
            return self._post_async if is_async else self._post
        return None

    # Node and graph runs

    def _run(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        parent = CURRENT_RUN.get()
        if not self.active or (parent is not None and parent.instance is instance):
            return wrapped(*args, **kwargs)
        run = self._begin(instance, parent)
        if run is None:
            return wrapped(*args, **kwargs)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            self._end_failed(run, exc)
            raise
        self._end(run, result)
        return result

    async def _run_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        parent = CURRENT_RUN.get()
        if not self.active or (parent is not None and parent.instance is instance):
            return await wrapped(*args, **kwargs)
        run = self._begin(instance, parent)
        if run is None:
            return await wrapped(*args, **kwargs)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            self._end_failed(run, exc)
            raise
        self._end(run, result)
        return result

    def _begin(self, instance: Any, parent: NodeRun | None) -> NodeRun | None:
        try:
            return self._start_run(instance, parent)
        except Exception:  # noqa: BLE001
            debug_failure("starting a span")
            return None

    def _start_run(self, instance: Any, parent: NodeRun | None) -> NodeRun:
        framework = self.framework
        is_graph = isinstance(instance, framework.graph)
        node_type = type(instance).__name__
        structure_json: str | None = None
        if parent is None:
            workflow, structure_json = self._new_workflow(instance, is_graph)
            kind = "workflow" if is_graph else "node"
        else:
            workflow = parent.workflow
            kind = "graph" if is_graph else "node"
            if is_graph:
                structure_json = self._extend_structure(workflow, instance)
        node_id = self._node_id(workflow, instance, kind)

        attributes: dict[str, AttributeValue] = {
            attr.NODE_ID: node_id,
            attr.NODE_TYPE: node_type,
            attr.NODE_KIND: kind,
            attr.WORKFLOW_ID: workflow.workflow_id,
            attr.FRAMEWORK: framework.name,
            attr.OPENINFERENCE_SPAN_KIND: "CHAIN",
            attr.GRAPH_NODE_ID: node_id,
            attr.GRAPH_NODE_NAME: node_type,
        }
        if workflow.correlation_id is not None:
            attributes[attr.CORRELATION_ID] = workflow.correlation_id
        if parent is not None:
            attributes[attr.PARENT_NODE_ID] = parent.node_id
            attributes[attr.GRAPH_NODE_PARENT_ID] = parent.node_id
        if structure_json is not None:
            attributes[attr.GRAPH_STRUCTURE] = structure_json
        if kind == "workflow":
            attributes[attr.GEN_AI_OPERATION_NAME] = attr.GEN_AI_OPERATION_INVOKE_WORKFLOW
            attributes[attr.GEN_AI_WORKFLOW_NAME] = workflow.name
            attributes[attr.WORKFLOW_NAME] = workflow.name
            span_name = f"invoke_workflow {workflow.name}"
        else:
            span_name = f"{_SPAN_NAME_PREFIX[kind]} {node_type}"
        max_retries = getattr(instance, "max_retries", None)
        # Async graphs inherit max_retries from AsyncNode but never retry.
        if type(max_retries) is int and not is_graph:
            attributes[attr.MAX_RETRIES] = max_retries

        span = self.tracer.start_span(span_name, kind=SpanKind.INTERNAL, attributes=attributes)
        run = NodeRun(instance, span, kind, node_id, node_type, workflow)
        if workflow.correlation_id is None and run.recording:
            workflow.correlation_id = trace.format_trace_id(span.get_span_context().trace_id)
            span.set_attribute(attr.CORRELATION_ID, workflow.correlation_id)
        run.is_batch = isinstance(instance, framework.batch_nodes)
        run.started_ns = time.perf_counter_ns()
        run.metric_attributes = self.metrics.node_attributes(node_type, kind, framework.name)
        self.metrics.active.add(1, run.metric_attributes.base)
        run.context_token = otel_context.attach(trace.set_span_in_context(span))
        run.run_token = CURRENT_RUN.set(run)
        if run.recording:
            started = "workflow_started" if kind == "workflow" else "node_started"
            self.emitter.emit(span, started, {attr.EVENT_STATE: "running"})
        return run

    def _new_workflow(self, instance: Any, is_graph: bool) -> tuple[Workflow, str | None]:
        options = RUN_OPTIONS.get()
        correlation_id = options.correlation_id if options else None
        if not is_graph:
            name = user_node_id(instance) or type(instance).__name__
            return Workflow({}, f"node:{type(instance).__name__}", name, correlation_id), None
        name = (
            (options.workflow_name if options else None)
            or user_node_id(instance)
            or type(instance).__name__
        )
        max_nodes = self.settings.max_graph_nodes
        structure = self._structures.get(
            instance,
            name,
            max_nodes,
            lambda: walk_graph(
                instance, is_graph=self._is_graph, max_nodes=max_nodes, graph_id=name
            ),
        )
        ids = dict(structure.ids)
        ids[node_key(instance)] = name
        return Workflow(ids, structure.workflow_id, name, correlation_id), structure.to_json()

    def _extend_structure(self, workflow: Workflow, graph: Any) -> str | None:
        start = getattr(graph, "start_node", None)
        if start is None or node_key(start) in workflow.ids:
            return None
        graph_id = workflow.ids.get(node_key(graph))
        if graph_id is None:
            # A graph that the workflow's structure does not contain, for example one
            # that a node runs inside exec, gets an id that no other node of the run has.
            base = user_node_id(graph) or type(graph).__name__
            graph_id = unique_id(base, set(workflow.ids.values()) | {workflow.name})
            workflow.ids[node_key(graph)] = graph_id
        structure = walk_graph(
            graph,
            is_graph=self._is_graph,
            max_nodes=self.settings.max_graph_nodes,
            known_ids=workflow.ids,
            graph_id=graph_id,
        )
        workflow.ids.update(structure.ids)
        return structure.to_json()

    def _is_graph(self, value: Any) -> bool:
        return isinstance(value, self.framework.graph)

    def _node_id(self, workflow: Workflow, instance: Any, kind: str) -> str:
        if kind == "workflow":
            return workflow.name
        node_id = workflow.ids.get(node_key(instance))
        if node_id is not None:
            return node_id
        own = getattr(instance, "node_id", None)
        return own if isinstance(own, str) and own else type(instance).__name__

    def _end(self, run: NodeRun, result: Any) -> None:
        try:
            next_id = self._record_transition(run, result)
            if run.recording:
                self._record_outcome(run, result, next_id)
        except Exception:  # noqa: BLE001
            debug_failure("recording a node's outcome")
        try:
            run.span.end()
            handled = run.handled_error
            seconds = (time.perf_counter_ns() - run.started_ns) / 1e9
            outcome = "handled" if handled is not None else "completed"
            self.metrics.record_end(run.metric_attributes, seconds, outcome, handled)
        except Exception:  # noqa: BLE001
            debug_failure("ending a span")
        finally:
            self._restore_context(run)

    def _record_transition(self, run: NodeRun, result: Any) -> str | None:
        if run.kind == "workflow":
            return None
        next_id = self._next_node_id(run, result)
        if next_id is not None:
            label = result if isinstance(result, str) and result else "default"
            run.workflow.count_transition(run.node_id, label, next_id)
            self.metrics.count_transition(run.workflow.name, run.node_id, label, next_id)
        return next_id

    def _next_node_id(self, run: NodeRun, action: Any) -> str | None:
        """Return the id of the successor that ``action`` selects, as the graph looks it up."""
        successors = getattr(run.instance, "successors", None)
        if not isinstance(successors, dict) or not successors:
            return None
        try:
            target = successors.get(action or "default")
        except Exception:  # noqa: BLE001 - an unhashable action selects no successor
            return None
        if target is None:
            return None
        return self._node_id(run.workflow, target, "node")

    def _record_outcome(self, run: NodeRun, result: Any, next_id: str | None) -> None:
        span = run.span
        self._record_counts(run)
        outcome: dict[str, AttributeValue] = {}
        if run.kind != "workflow":
            if isinstance(result, str):
                outcome[attr.ACTION] = result
            if next_id is not None:
                outcome[attr.NEXT_NODE_ID] = next_id
        if run.handled_error is not None:
            error = run.handled_error
            record_exception(span, error)
            outcome[attr.ERROR_HANDLED] = True
            outcome[attr.ERROR_PHASE] = run.phase
            outcome[attr.STATE] = "handled"
            span.set_attributes(outcome)
            self.emitter.emit(
                span,
                "node_failed",
                {
                    attr.EVENT_STATE: "handled",
                    attr.ERROR_HANDLED: True,
                    attr.ERROR_PHASE: run.phase,
                    **error_attributes(error),
                },
            )
            return
        outcome[attr.STATE] = "completed"
        span.set_attributes(outcome)
        completed = "workflow_completed" if run.kind == "workflow" else "node_completed"
        self.emitter.emit(span, completed, {attr.EVENT_STATE: "completed", **_count_metrics(run)})

    @staticmethod
    def _transitions_json(workflow: Workflow) -> str:
        with workflow.lock:
            counted = sorted(workflow.transitions.items(), key=lambda item: -item[1])
        entries = [
            {"from": source, "action": action, "to": target, "count": count}
            for (source, action, target), count in counted[:MAX_TRANSITIONS_RECORDED]
        ]
        return json.dumps(entries, ensure_ascii=False, separators=(",", ":"))

    def _record_counts(self, run: NodeRun) -> None:
        span = run.span
        if run.events_dropped:
            span.set_attribute(attr.EVENTS_DROPPED, run.events_dropped)
        if run.kind == "workflow" and run.workflow.transitions:
            span.set_attribute(attr.TRANSITIONS, self._transitions_json(run.workflow))
        if run.retries:
            span.set_attribute(attr.RETRY_COUNT, run.retries)
        if run.fallbacks:
            span.set_attribute(attr.FALLBACK_COUNT, run.fallbacks)
        if run.is_batch:
            span.set_attribute(attr.BATCH_SUCCEEDED, run.items_succeeded)
            span.set_attribute(attr.BATCH_FAILED, run.items_failed)
            if run.item_spans_dropped:
                span.set_attribute(attr.BATCH_SPANS_DROPPED, run.item_spans_dropped)

    def _end_failed(self, run: NodeRun, exc: BaseException) -> None:
        try:
            if run.recording:
                span = run.span
                self._record_counts(run)
                record_exception(span, exc)
                span.set_status(
                    Status(StatusCode.ERROR, f"{type(exc).__name__}: {safe_str(exc, 200)}")
                )
                span.set_attribute(attr.STATE, "failed")
                span.set_attribute(attr.ERROR_PHASE, run.phase)
                failed = "workflow_failed" if run.kind == "workflow" else "node_failed"
                event = {
                    **_count_metrics(run),
                    attr.EVENT_STATE: "failed",
                    attr.ERROR_PHASE: run.phase,
                    **error_attributes(exc),
                }
                if run.attempts:
                    event[attr.EVENT_ATTEMPT] = run.attempts
                self.emitter.emit(span, failed, event)
        except Exception:  # noqa: BLE001
            debug_failure("recording a failure")
        try:
            run.span.end()
            seconds = (time.perf_counter_ns() - run.started_ns) / 1e9
            self.metrics.record_end(run.metric_attributes, seconds, "failed", exc)
        except Exception:  # noqa: BLE001
            debug_failure("ending a failed span")
        finally:
            self._restore_context(run)

    @staticmethod
    def _restore_context(run: NodeRun) -> None:
        try:
            if run.run_token is not None:
                CURRENT_RUN.reset(run.run_token)
        except ValueError:
            # The token belongs to another context when a framework resumes a
            # run in a copied context; the copy is discarded with its values.
            pass
        if run.context_token is not None:
            otel_context.detach(run.context_token)  # type: ignore[arg-type]

    # Phases

    def _prep(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance or run.in_prep:
            return wrapped(*args, **kwargs)
        self._enter_prep(run)
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            run.in_prep = False
            self.end_phase_span(run, exc)
            raise
        run.in_prep = False
        if run.phase_span is not None:
            self.end_phase_span(run, None)
        self._leave_prep(run, result)
        return result

    async def _prep_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance or run.in_prep:
            return await wrapped(*args, **kwargs)
        self._enter_prep(run)
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            run.in_prep = False
            self.end_phase_span(run, exc)
            raise
        run.in_prep = False
        if run.phase_span is not None:
            self.end_phase_span(run, None)
        self._leave_prep(run, result)
        return result

    def _enter_prep(self, run: NodeRun) -> None:
        run.in_prep = True
        run.phase = "prep"
        if run.recording:
            try:
                if self.settings.phase_spans:
                    self.start_phase_span(run, "prep")
                else:
                    self.emitter.emit(run.span, "node_preparing", {attr.EVENT_STATE: "preparing"})
            except Exception:  # noqa: BLE001
                debug_failure("prep")

    def start_phase_span(self, run: NodeRun, phase: str) -> None:
        """Open a child span for one lifecycle step and make it current until ``end_phase_span``."""
        try:
            self._open_phase_span(run, phase)
        except Exception:  # noqa: BLE001
            debug_failure(f"starting the {phase} span")

    def _open_phase_span(self, run: NodeRun, phase: str) -> None:
        span = self.tracer.start_span(
            f"{phase} {run.node_type}",
            context=trace.set_span_in_context(run.span),
            attributes={
                attr.NODE_ID: run.node_id,
                attr.NODE_TYPE: run.node_type,
                attr.NODE_KIND: "phase",
                attr.PHASE: phase,
                attr.WORKFLOW_ID: run.workflow.workflow_id,
                attr.CORRELATION_ID: run.workflow.correlation_id or "",
                attr.FRAMEWORK: self.framework.name,
                attr.PARENT_NODE_ID: run.node_id,
            },
        )
        run.phase_span = span
        run.phase_token = otel_context.attach(trace.set_span_in_context(span))

    def end_phase_span(self, run: NodeRun, error: BaseException | None) -> None:
        span, run.phase_span = run.phase_span, None
        if span is None:
            return
        try:
            if error is not None:
                record_exception(span, error)
                span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}"))
            span.end()
        except Exception:  # noqa: BLE001
            debug_failure("ending a phase span")
        finally:
            if run.phase_token is not None:
                otel_context.detach(run.phase_token)  # type: ignore[arg-type]
                run.phase_token = None

    def _post(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance or run.phase_span is not None:
            return wrapped(*args, **kwargs)
        if run.recording:
            self.start_phase_span(run, "post")
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            self.end_phase_span(run, exc)
            raise
        if run.phase_span is not None:
            self.end_phase_span(run, None)
        return result

    async def _post_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance or run.phase_span is not None:
            return await wrapped(*args, **kwargs)
        if run.recording:
            self.start_phase_span(run, "post")
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            self.end_phase_span(run, exc)
            raise
        if run.phase_span is not None:
            self.end_phase_span(run, None)
        return result

    def _leave_prep(self, run: NodeRun, result: Any) -> None:
        # A graph runs its nodes in _orch after prep, so a failure there is an _orch failure.
        run.phase = "after_prep" if run.kind == "node" else "orch"
        if run.recording and self.settings.capture_snapshots:
            self._emit_snapshot(
                run.span, "data_input", attr.EVENT_INPUT_SNAPSHOT, "preparing", result
            )

    def _emit_snapshot(self, span: Span, event: str, key: str, state: str, value: Any) -> None:
        if not self.settings.emits(event):
            return
        try:
            settings = self.settings
            text, scrubbed = snapshot_json(
                value,
                max_bytes=settings.max_snapshot_bytes,
                scrub=settings.scrub_snapshots,
                extra_patterns=settings.scrub_patterns,
            )
            attributes: dict[str, AttributeValue] = {attr.EVENT_STATE: state, key: text}
            if scrubbed:
                attributes[attr.EVENT_SCRUBBED] = scrubbed[:50]
            self.emitter.emit(span, event, attributes)
        except Exception:  # noqa: BLE001
            debug_failure("taking a snapshot")
