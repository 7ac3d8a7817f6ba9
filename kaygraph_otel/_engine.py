"""The engine behind both instrumentors: class patching and the span logic of each wrapper.

Every class of the framework's node hierarchy that defines one of the
lifecycle methods in ``WRAPPED_METHODS`` gets that method wrapped, and classes
defined later are patched as they are created. Because a subclass that
overrides ``_run`` and calls ``super()._run`` reaches two wrappers for one
execution, each wrapper first checks whether the current run already belongs
to the same instance and then passes straight through: one execution, one span.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.instrumentation.utils import unwrap
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from kaygraph_otel import attributes as attr
from kaygraph_otel._framework import Framework
from kaygraph_otel._runs import (
    CURRENT_ITEM,
    CURRENT_RUN,
    RUN_OPTIONS,
    Emitter,
    ItemRun,
    NodeRun,
    Workflow,
    error_attributes,
    record_exception,
)
from kaygraph_otel._snapshot import safe_str, snapshot_json
from kaygraph_otel._structure import node_key, unique_id, user_node_id, walk_graph
from kaygraph_otel.config import Settings

logger = logging.getLogger(__name__)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]

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
)

_SPAN_NAME_PREFIX = {"workflow": "invoke_workflow", "graph": "graph", "node": "node"}


def _debug_failure(where: str) -> None:
    logger.debug(
        "kaygraph-otel instrumentation failed in %s; the workflow is unaffected",
        where,
        exc_info=True,
    )


class Engine:
    """Patches one framework and turns its executions into spans and events."""

    def __init__(
        self, framework: Framework, tracer: Tracer, settings: Settings, emitter: Emitter
    ) -> None:
        self.framework = framework
        self.tracer = tracer
        self.settings = settings
        self.emitter = emitter
        self._patched: list[tuple[type, str]] = []
        self._original_init_subclass: Any = None
        self._had_init_subclass = False
        self._lock = threading.Lock()

    # Patching

    def patch(self) -> None:
        base = self.framework.base_node
        pending = [base]
        while pending:
            cls = pending.pop()
            self.patch_class(cls)
            pending.extend(cls.__subclasses__())
        self._hook_subclass_creation(base)
        _acquire_submit_patch()

    def unpatch(self) -> None:
        base = self.framework.base_node
        if self._had_init_subclass:
            base.__init_subclass__ = self._original_init_subclass  # type: ignore[method-assign]
        elif "__init_subclass__" in base.__dict__:
            delattr(base, "__init_subclass__")
        with self._lock:
            patched, self._patched = self._patched, []
        for cls, name in patched:
            if isinstance(cls.__dict__.get(name), wrapt.FunctionWrapper):
                unwrap(cls, name)
        _release_submit_patch()

    def _hook_subclass_creation(self, base: type) -> None:
        engine = self
        self._had_init_subclass = "__init_subclass__" in base.__dict__
        self._original_init_subclass = base.__dict__.get("__init_subclass__")
        original = self._original_init_subclass

        def init_subclass(cls: type, **kwargs: Any) -> None:
            if original is not None:
                original.__get__(None, cls)(**kwargs)
            else:
                super(base, cls).__init_subclass__(**kwargs)  # type: ignore[misc]
            try:
                engine.patch_class(cls)
            except Exception:  # noqa: BLE001
                _debug_failure("patching a new subclass")

        base.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment,method-assign]

    def patch_class(self, cls: type) -> None:
        for name in WRAPPED_METHODS:
            function = cls.__dict__.get(name)
            if not inspect.isfunction(function):
                continue
            wrapper = self._wrapper_for(cls, name, inspect.iscoroutinefunction(function))
            if wrapper is None:
                continue
            wrapt.wrap_function_wrapper(cls, name, wrapper)
            with self._lock:
                self._patched.append((cls, name))

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
        if parent is not None and parent.instance is instance:
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
        if parent is not None and parent.instance is instance:
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
            _debug_failure("starting a span")
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
        structure = walk_graph(
            instance,
            is_graph=self._is_graph,
            max_nodes=self.settings.max_graph_nodes,
            graph_id=name,
        )
        structure.ids[node_key(instance)] = name
        return Workflow(
            structure.ids, structure.workflow_id, name, correlation_id
        ), structure.to_json()

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
            if run.recording:
                self._record_outcome(run, result)
            run.span.end()
        except Exception:  # noqa: BLE001
            _debug_failure("ending a span")
        finally:
            self._restore_context(run)

    def _record_outcome(self, run: NodeRun, result: Any) -> None:
        span = run.span
        self._record_counts(run)
        if run.kind != "workflow":
            action = result if isinstance(result, str) else None
            if action is not None:
                span.set_attribute(attr.ACTION, action)
            next_id = self._next_node_id(run, action)
            if next_id is not None:
                span.set_attribute(attr.NEXT_NODE_ID, next_id)
        if run.handled_error is not None:
            error = run.handled_error
            record_exception(span, error)
            span.set_attribute(attr.ERROR_HANDLED, True)
            span.set_attribute(attr.ERROR_PHASE, run.phase)
            span.set_attribute(attr.STATE, "handled")
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
        span.set_attribute(attr.STATE, "completed")
        completed = "workflow_completed" if run.kind == "workflow" else "node_completed"
        self.emitter.emit(span, completed, {attr.EVENT_STATE: "completed"})

    def _next_node_id(self, run: NodeRun, action: str | None) -> str | None:
        successors = getattr(run.instance, "successors", None)
        if not isinstance(successors, dict) or not successors:
            return None
        target = successors.get(action or "default")
        if target is None:
            return None
        return self._node_id(run.workflow, target, "node")

    def _record_counts(self, run: NodeRun) -> None:
        span = run.span
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
                    attr.EVENT_STATE: "failed",
                    attr.ERROR_PHASE: run.phase,
                    **error_attributes(exc),
                }
                if run.attempts:
                    event[attr.EVENT_ATTEMPT] = run.attempts
                self.emitter.emit(span, failed, event)
            run.span.end()
        except Exception:  # noqa: BLE001
            _debug_failure("recording a failure")
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
        finally:
            run.in_prep = False
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
        finally:
            run.in_prep = False
        self._leave_prep(run, result)
        return result

    def _enter_prep(self, run: NodeRun) -> None:
        run.in_prep = True
        run.phase = "prep"
        if run.recording:
            try:
                self.emitter.emit(run.span, "node_preparing", {attr.EVENT_STATE: "preparing"})
            except Exception:  # noqa: BLE001
                _debug_failure("prep")

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
            _debug_failure("taking a snapshot")

    def _phase(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        name: str,
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance:
            return wrapped(*args, **kwargs)
        previous, run.phase = run.phase, name
        result = wrapped(*args, **kwargs)
        run.phase = previous
        return result

    # Execution, batches and attempts

    def _exec(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        item_loop: bool,
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance:
            return wrapped(*args, **kwargs)
        if not run.in_exec:
            self._enter_exec(run, args)
            try:
                result = wrapped(*args, **kwargs)
            finally:
                run.in_exec = False
            self._leave_exec(run, result)
            return result
        if not (item_loop and run.is_batch):
            return wrapped(*args, **kwargs)
        item = self._start_item(run)
        token = CURRENT_ITEM.set(item)
        context_token = (
            otel_context.attach(trace.set_span_in_context(item.span)) if item.span else None
        )
        try:
            result = wrapped(*args, **kwargs)
        except BaseException as exc:
            self._end_item(item, exc)
            raise
        finally:
            CURRENT_ITEM.reset(token)
            if context_token is not None:
                otel_context.detach(context_token)
        self._end_item(item, None)
        return result

    async def _exec_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        item_loop: bool,
    ) -> Any:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance:
            return await wrapped(*args, **kwargs)
        if not run.in_exec:
            self._enter_exec(run, args)
            try:
                result = await wrapped(*args, **kwargs)
            finally:
                run.in_exec = False
            self._leave_exec(run, result)
            return result
        if not (item_loop and run.is_batch):
            return await wrapped(*args, **kwargs)
        item = self._start_item(run)
        token = CURRENT_ITEM.set(item)
        context_token = (
            otel_context.attach(trace.set_span_in_context(item.span)) if item.span else None
        )
        try:
            result = await wrapped(*args, **kwargs)
        except BaseException as exc:
            self._end_item(item, exc)
            raise
        finally:
            CURRENT_ITEM.reset(token)
            if context_token is not None:
                otel_context.detach(context_token)
        self._end_item(item, None)
        return result

    def _enter_exec(self, run: NodeRun, args: tuple[Any, ...]) -> None:
        run.in_exec = True
        run.phase = "exec"
        if not run.recording:
            return
        try:
            run.exec_started_ns = time.perf_counter_ns()
            self.emitter.emit(run.span, "node_executing", {attr.EVENT_STATE: "executing"})
            if run.is_batch and args:
                items = args[0]
                run.batch_size = len(items) if hasattr(items, "__len__") else None
                if run.batch_size is not None:
                    run.span.set_attribute(attr.BATCH_SIZE, run.batch_size)
                    self.emitter.emit(
                        run.span,
                        "queue_depth",
                        {
                            attr.EVENT_STATE: "executing",
                            attr.EVENT_METRIC_PREFIX + "queue_depth": run.batch_size,
                        },
                    )
        except Exception:  # noqa: BLE001
            _debug_failure("exec")

    def _leave_exec(self, run: NodeRun, result: Any) -> None:
        run.phase = "post"
        if not run.recording:
            return
        if self.settings.capture_snapshots:
            self._emit_snapshot(
                run.span, "data_output", attr.EVENT_OUTPUT_SNAPSHOT, "executing", result
            )
        if run.is_batch:
            try:
                elapsed = (time.perf_counter_ns() - run.exec_started_ns) / 1e9
                done = run.items_succeeded
                self.emitter.emit(
                    run.span,
                    "throughput_metric",
                    {
                        attr.EVENT_STATE: "executing",
                        attr.EVENT_METRIC_PREFIX + "items": done,
                        attr.EVENT_METRIC_PREFIX + "items_per_second": done / elapsed
                        if elapsed > 0
                        else 0.0,
                    },
                )
            except Exception:  # noqa: BLE001
                _debug_failure("batch throughput")

    def _start_item(self, run: NodeRun) -> ItemRun:
        # NOTE: the index counts items as they start. In a thread pool that order can
        # differ from the items' positions in the list that prep returned.
        index = next(run.item_counter)
        span = None
        try:
            if run.recording and index < self.settings.max_item_spans:
                span = self.tracer.start_span(
                    f"item {run.node_type}",
                    context=trace.set_span_in_context(run.span),
                    attributes={
                        attr.NODE_ID: run.node_id,
                        attr.NODE_TYPE: run.node_type,
                        attr.NODE_KIND: "batch_item",
                        attr.WORKFLOW_ID: run.workflow.workflow_id,
                        attr.CORRELATION_ID: run.workflow.correlation_id or "",
                        attr.FRAMEWORK: self.framework.name,
                        attr.BATCH_ITEM_INDEX: index,
                        attr.PARENT_NODE_ID: run.node_id,
                    },
                )
            elif run.recording:
                with run.lock:
                    run.item_spans_dropped += 1
        except Exception:  # noqa: BLE001
            _debug_failure("starting an item span")
        return ItemRun(run, index, span)

    def _end_item(self, item: ItemRun, exc: BaseException | None) -> None:
        run = item.run
        with run.lock:
            if exc is None:
                run.items_succeeded += 1
            else:
                run.items_failed += 1
        span = item.span
        if span is None:
            return
        try:
            if exc is None:
                self.emitter.emit(span, "node_completed", {attr.EVENT_STATE: "completed"})
            else:
                record_exception(span, exc)
                span.set_status(
                    Status(StatusCode.ERROR, f"{type(exc).__name__}: {safe_str(exc, 200)}")
                )
                self.emitter.emit(
                    span,
                    "node_failed",
                    {
                        attr.EVENT_STATE: "failed",
                        attr.ERROR_PHASE: "exec",
                        attr.EVENT_ATTEMPT: max(item.attempts, 1),
                        **error_attributes(exc),
                    },
                )
            if item.attempts > 1:
                span.set_attribute(attr.RETRY_COUNT, item.attempts - 1)
            span.end()
        except Exception:  # noqa: BLE001
            _debug_failure("ending an item span")

    def _attempt_scope(self, instance: Any) -> tuple[NodeRun, NodeRun | ItemRun] | None:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance:
            return None
        item = CURRENT_ITEM.get()
        scope: NodeRun | ItemRun = item if item is not None and item.run is run else run
        if scope.in_attempt:
            return None
        return run, scope

    def _attempt(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        found = self._attempt_scope(instance)
        if found is None:
            return wrapped(*args, **kwargs)
        run, scope = found
        scope.attempts += 1
        scope.in_attempt = True
        try:
            return wrapped(*args, **kwargs)
        except Exception as exc:
            self._attempt_failed(run, scope, exc)
            raise
        finally:
            scope.in_attempt = False

    async def _attempt_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        found = self._attempt_scope(instance)
        if found is None:
            return await wrapped(*args, **kwargs)
        run, scope = found
        scope.attempts += 1
        scope.in_attempt = True
        try:
            return await wrapped(*args, **kwargs)
        except Exception as exc:
            self._attempt_failed(run, scope, exc)
            raise
        finally:
            scope.in_attempt = False

    def _attempt_failed(self, run: NodeRun, scope: NodeRun | ItemRun, exc: Exception) -> None:
        try:
            max_attempts = getattr(run.instance, "max_retries", 1)
            if type(max_attempts) is not int or scope.attempts >= max_attempts:
                return
            with run.lock:
                run.retries += 1
            span = scope.span
            if span is None or not run.recording:
                return
            event: dict[str, AttributeValue] = {
                attr.EVENT_STATE: "retrying",
                attr.EVENT_ATTEMPT: scope.attempts,
                attr.EVENT_MAX_ATTEMPTS: max_attempts,
                **error_attributes(exc),
            }
            if isinstance(scope, ItemRun):
                event[attr.BATCH_ITEM_INDEX] = scope.index
            self.emitter.emit(span, "retry_attempted", event)
        except Exception:  # noqa: BLE001
            _debug_failure("recording a retry")

    def _fallback(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        found = self._fallback_scope(instance)
        if found is None:
            return wrapped(*args, **kwargs)
        self._record_fallback(*found, args, kwargs)
        try:
            return wrapped(*args, **kwargs)
        finally:
            found[1].in_fallback = False

    async def _fallback_async(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        found = self._fallback_scope(instance)
        if found is None:
            return await wrapped(*args, **kwargs)
        self._record_fallback(*found, args, kwargs)
        try:
            return await wrapped(*args, **kwargs)
        finally:
            found[1].in_fallback = False

    def _fallback_scope(self, instance: Any) -> tuple[NodeRun, NodeRun | ItemRun] | None:
        run = CURRENT_RUN.get()
        if run is None or run.instance is not instance:
            return None
        item = CURRENT_ITEM.get()
        scope: NodeRun | ItemRun = item if item is not None and item.run is run else run
        if scope.in_fallback:
            return None
        scope.in_fallback = True
        return run, scope

    def _record_fallback(
        self, run: NodeRun, scope: NodeRun | ItemRun, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        try:
            with run.lock:
                run.fallbacks += 1
            span = scope.span
            if span is None or not run.recording:
                return
            error = args[1] if len(args) > 1 else kwargs.get("exc")
            event: dict[str, AttributeValue] = {
                attr.EVENT_STATE: "executing",
                attr.EVENT_ATTEMPT: max(scope.attempts, 1),
            }
            if isinstance(error, BaseException):
                event.update(error_attributes(error))
            if isinstance(scope, ItemRun):
                event[attr.BATCH_ITEM_INDEX] = scope.index
            self.emitter.emit(span, "fallback_triggered", event)
        except Exception:  # noqa: BLE001
            _debug_failure("recording a fallback")

    def _on_error(
        self,
        wrapped: Callable[..., Any],
        instance: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        result = wrapped(*args, **kwargs)
        run = CURRENT_RUN.get()
        if result and run is not None and run.instance is instance and run.handled_error is None:
            error = args[1] if len(args) > 1 else kwargs.get("error")
            if isinstance(error, BaseException):
                run.handled_error = error
        return result


# Context propagation into thread pools, shared by every engine.

_submit_lock = threading.Lock()
_submit_users = 0


def _submit_with_context(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # Worker threads do not inherit contextvars, so a span that is current in
    # a node would not be current in the items that the node hands to a pool.
    # Only submissions made while a node runs are changed.
    if CURRENT_RUN.get() is None or not args:
        return wrapped(*args, **kwargs)
    context = contextvars.copy_context()
    return wrapped(context.run, *args, **kwargs)


def _acquire_submit_patch() -> None:
    global _submit_users
    with _submit_lock:
        if _submit_users == 0:
            wrapt.wrap_function_wrapper(
                concurrent.futures.ThreadPoolExecutor, "submit", _submit_with_context
            )
        _submit_users += 1


def _release_submit_patch() -> None:
    global _submit_users
    with _submit_lock:
        _submit_users -= 1
        if _submit_users == 0:
            unwrap(concurrent.futures.ThreadPoolExecutor, "submit")
