"""Class patching: wrap lifecycle methods across a class hierarchy, including later subclasses.

Only methods that a class defines itself are wrapped, so a subclass that
inherits a method shares its parent's wrapper. Every wrap is recorded and
undone by ``unpatch``, which also removes the hook that patches subclasses
created while instrumented.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry import context as otel_context

from kaygraph_otel._runs import CURRENT_ITEM, CURRENT_RUN

logger = logging.getLogger(__name__)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
WrapperFactory = Callable[[type, str, bool], "Wrapper | None"]


class _PicklableBoundWrapper(wrapt.BoundFunctionWrapper):  # type: ignore[misc]
    """A wrapped bound method that pickles like a plain one, as ``getattr(instance, name)``.

    Code that hands ``self.exec`` to a process pool pickles the bound method.
    """

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return getattr, (self.__self__, self.__name__)


class _FunctionWrapper(wrapt.FunctionWrapper):  # type: ignore[misc]
    __bound_function_wrapper__ = _PicklableBoundWrapper


def _remove_wrapper(owner: Any, name: str, wrapper: Any) -> bool:
    """Put back what ``wrapper`` wraps if ``wrapper`` is still outermost; return whether it was.

    Another library may have wrapped the same method after us. Unwrapping by
    name would then remove its wrapper and keep ours, so ours stays in place.
    """
    if owner.__dict__.get(name) is not wrapper:
        return False
    setattr(owner, name, wrapper.__wrapped__)
    return True


class ClassPatcher:
    """Wraps the named methods of ``base`` and every subclass of it, present and future.

    Args:
        base: the root of the hierarchy.
        names: the method names to wrap where a class defines them.
        wrapper_for: returns the wrapper for (class, method name, is coroutine
            function), or None to leave that method alone.
    """

    def __init__(self, base: type, names: tuple[str, ...], wrapper_for: WrapperFactory) -> None:
        self._base = base
        self._names = names
        self._wrapper_for = wrapper_for
        self._patched: list[tuple[type, str, Any]] = []
        self._lock = threading.Lock()
        self._had_init_subclass = False
        self._original_init_subclass: Any = None

    def patch(self) -> None:
        pending = [self._base]
        seen: set[type] = set()
        while pending:
            cls = pending.pop()
            # A class with several patched bases is a subclass of each of them.
            if cls in seen:
                continue
            seen.add(cls)
            self.patch_class(cls)
            pending.extend(cls.__subclasses__())
        self._hook_subclass_creation()

    def unpatch(self) -> None:
        base = self._base
        if self._had_init_subclass:
            base.__init_subclass__ = self._original_init_subclass  # type: ignore[method-assign]
        elif "__init_subclass__" in base.__dict__:
            delattr(base, "__init_subclass__")
        with self._lock:
            patched, self._patched = self._patched, []
        for cls, name, wrapper in reversed(patched):
            if not _remove_wrapper(cls, name, wrapper):
                logger.debug(
                    "kaygraph-otel left its wrapper of %s.%s in place because another wrapper "
                    "now wraps it; the wrapper passes calls straight through",
                    cls.__qualname__,
                    name,
                )

    def patch_class(self, cls: type) -> None:
        for name in self._names:
            function = cls.__dict__.get(name)
            # A method that another library wrapped first passes this check too, because
            # a wrapt proxy reports the class of the function it wraps.
            if not inspect.isfunction(function):
                continue
            wrapper = self._wrapper_for(cls, name, inspect.iscoroutinefunction(function))
            if wrapper is None:
                continue
            installed = _FunctionWrapper(function, wrapper)
            setattr(cls, name, installed)
            with self._lock:
                self._patched.append((cls, name, installed))

    def _hook_subclass_creation(self) -> None:
        base = self._base
        patcher = self
        self._had_init_subclass = "__init_subclass__" in base.__dict__
        self._original_init_subclass = base.__dict__.get("__init_subclass__")
        original = self._original_init_subclass

        def init_subclass(cls: type, **kwargs: Any) -> None:
            if original is not None:
                original.__get__(None, cls)(**kwargs)
            else:
                super(base, cls).__init_subclass__(**kwargs)  # type: ignore[misc]
            try:
                patcher.patch_class(cls)
            except Exception:  # noqa: BLE001 - a class that cannot be patched is left untraced
                logger.debug("kaygraph-otel could not patch %r", cls, exc_info=True)

        base.__init_subclass__ = classmethod(init_subclass)  # type: ignore[assignment,method-assign]


# Context propagation into thread pools, shared by every instrumentor.

_submit_lock = threading.Lock()
_submit_users = 0
_submit_wrapper: Any = None


def _submit_with_context(
    wrapped: Callable[..., Any], instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    # Worker threads do not inherit contextvars, so a span that is current in
    # a node would not be current in the items that the node hands to a pool.
    # Only submissions made while a node runs are changed, and only the
    # OpenTelemetry context and the run state travel: other context variables
    # (the decimal context, the application's own) stay as the pool gives them.
    run = CURRENT_RUN.get()
    if run is None or not args:
        return wrapped(*args, **kwargs)
    task = _ContextCarrier(args[0], otel_context.get_current(), run, CURRENT_ITEM.get())
    return wrapped(task, *args[1:], **kwargs)


class _ContextCarrier:
    """A pool task that runs with the submitter's span and run state made current."""

    __slots__ = ("function", "context", "run", "item")

    def __init__(self, function: Callable[..., Any], context: Any, run: Any, item: Any) -> None:
        self.function = function
        self.context = context
        self.run = run
        self.item = item

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        context_token = otel_context.attach(self.context)
        run_token = CURRENT_RUN.set(self.run)
        item_token = CURRENT_ITEM.set(self.item)
        try:
            return self.function(*args, **kwargs)
        finally:
            CURRENT_ITEM.reset(item_token)
            CURRENT_RUN.reset(run_token)
            otel_context.detach(context_token)


def acquire_submit_patch() -> None:
    """Start carrying the caller's context into ThreadPoolExecutor tasks (reference counted)."""
    global _submit_users, _submit_wrapper
    with _submit_lock:
        if _submit_users == 0:
            pool = concurrent.futures.ThreadPoolExecutor
            _submit_wrapper = wrapt.FunctionWrapper(pool.__dict__["submit"], _submit_with_context)
            pool.submit = _submit_wrapper  # type: ignore[method-assign]
        _submit_users += 1


def release_submit_patch() -> None:
    """Undo one ``acquire_submit_patch``; the last release restores ``submit``."""
    global _submit_users, _submit_wrapper
    with _submit_lock:
        _submit_users -= 1
        if _submit_users == 0:
            # Left in place when another library wrapped submit after us; it then
            # passes every call through, because no node is running.
            _remove_wrapper(concurrent.futures.ThreadPoolExecutor, "submit", _submit_wrapper)
            _submit_wrapper = None
