"""Wrappers for the execution step of a node: ``_exec``, batch items, attempts and fallbacks.

Retries, fallbacks and batch items all happen inside ``_exec``. The outermost
``_exec`` of a run marks the executing phase. For a batch node, each call of
the framework's per-item retry loop (``Node._exec`` or ``AsyncNode._exec``)
is one item, which gets a child span up to the configured cap. Attempts are
counted per item, or per node outside batches, by wrapping ``exec``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from kaygraph_otel import attributes as attr
from kaygraph_otel._runs import (
    CURRENT_ITEM,
    CURRENT_RUN,
    ItemRun,
    NodeRun,
    debug_failure,
    error_attributes,
    record_exception,
)
from kaygraph_otel._snapshot import safe_str

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from kaygraph_otel._engine import Engine
    from kaygraph_otel._framework import Framework
    from kaygraph_otel._metrics import Metrics
    from kaygraph_otel._runs import Emitter
    from kaygraph_otel.config import Settings

# Per run, at most this many retry, fallback or item-failure events of each
# name are added to spans; the rest are counted in kaygraph.events_dropped.
# It keeps a node span under the SDK's default limit of 128 events.
MAX_REPEATED_EVENTS = 16


class ExecutionWrappers:
    """The ``_exec``, ``exec``, ``exec_fallback`` and ``on_error`` wrappers of the Engine."""

    settings: Settings
    tracer: Tracer
    framework: Framework
    emitter: Emitter
    metrics: Metrics

    def start_phase_span(self, run: NodeRun, phase: str) -> None:
        raise NotImplementedError  # provided by Engine

    def end_phase_span(self, run: NodeRun, error: BaseException | None) -> None:
        raise NotImplementedError  # provided by Engine

    def _emit_snapshot(self, span: Span, event: str, key: str, state: str, value: Any) -> None:
        raise NotImplementedError  # provided by Engine

    def _emit_repeated(
        self, run: NodeRun, span: Span | None, name: str, attributes: dict[str, AttributeValue]
    ) -> None:
        """Emit an event that can repeat many times per run, up to MAX_REPEATED_EVENTS."""
        if not run.recording or not run.claim_event(name, MAX_REPEATED_EVENTS):
            return
        self.emitter.emit(span if span is not None else run.span, name, attributes)

    def _phase(
        self: Engine,
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
            except BaseException as exc:
                run.in_exec = False
                self.end_phase_span(run, exc)
                raise
            run.in_exec = False
            if run.phase_span is not None:
                self.end_phase_span(run, None)
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
            except BaseException as exc:
                run.in_exec = False
                self.end_phase_span(run, exc)
                raise
            run.in_exec = False
            if run.phase_span is not None:
                self.end_phase_span(run, None)
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
            if self.settings.phase_spans:
                self.start_phase_span(run, "exec")
            else:
                self.emitter.emit(run.span, "node_executing", {attr.EVENT_STATE: "executing"})
            if run.is_batch and args:
                items = args[0]
                run.batch_size = len(items) if hasattr(items, "__len__") else None
                if run.batch_size is not None:
                    self.metrics.batch_size.record(run.batch_size, run.metric_attributes.base)
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
            debug_failure("exec")

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
                debug_failure("batch throughput")

    def _start_item(self, run: NodeRun) -> ItemRun:
        # NOTE: the index counts items as they start. In a thread pool that order can
        # differ from the items' positions in the list that prep returned.
        index = next(run.item_counter)
        span = None
        try:
            if run.recording and index < self.settings.max_item_spans:
                parent = run.phase_span if run.phase_span is not None else run.span
                span = self.tracer.start_span(
                    f"item {run.node_type}",
                    context=trace.set_span_in_context(parent),
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
            debug_failure("starting an item span")
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
            if exc is not None:
                self._emit_item_failure(run, item, exc)
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
            debug_failure("ending an item span")

    def _emit_item_failure(self, run: NodeRun, item: ItemRun, exc: BaseException) -> None:
        # Items past the span cap have no span of their own, so their failure is an
        # event on the node span, within the repeated-event budget.
        try:
            self._emit_repeated(
                run,
                None,
                "node_failed",
                {
                    attr.EVENT_STATE: "failed",
                    attr.ERROR_PHASE: "exec",
                    attr.BATCH_ITEM_INDEX: item.index,
                    attr.EVENT_ATTEMPT: max(item.attempts, 1),
                    **error_attributes(exc),
                },
            )
        except Exception:  # noqa: BLE001
            debug_failure("recording an item failure")

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
            self.metrics.retries.add(1, run.metric_attributes.base)
            if not run.recording:
                return
            event: dict[str, AttributeValue] = {
                attr.EVENT_STATE: "retrying",
                attr.EVENT_ATTEMPT: scope.attempts,
                attr.EVENT_MAX_ATTEMPTS: max_attempts,
                **error_attributes(exc),
            }
            if isinstance(scope, ItemRun):
                event[attr.BATCH_ITEM_INDEX] = scope.index
            self._emit_repeated(run, scope.span, "retry_attempted", event)
        except Exception:  # noqa: BLE001
            debug_failure("recording a retry")

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
            self.metrics.fallbacks.add(1, run.metric_attributes.base)
            if not run.recording:
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
            self._emit_repeated(run, scope.span, "fallback_triggered", event)
        except Exception:  # noqa: BLE001
            debug_failure("recording a fallback")

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
