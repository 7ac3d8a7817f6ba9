"""Class patching: wrap lifecycle methods across a class hierarchy, including later subclasses.

Only methods that a class defines itself are wrapped, so a subclass that
inherits a method shares its parent's wrapper. Every wrap is recorded and
undone by ``unpatch``, which also removes the hook that patches subclasses
created while instrumented.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import inspect
import logging
import threading
from collections.abc import Callable
from typing import Any

import wrapt
from opentelemetry.instrumentation.utils import unwrap

from kaygraph_otel._runs import CURRENT_RUN

logger = logging.getLogger(__name__)

Wrapper = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]
WrapperFactory = Callable[[type, str, bool], "Wrapper | None"]


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
        self._patched: list[tuple[type, str]] = []
        self._lock = threading.Lock()
        self._had_init_subclass = False
        self._original_init_subclass: Any = None

    def patch(self) -> None:
        pending = [self._base]
        while pending:
            cls = pending.pop()
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
        for cls, name in patched:
            if isinstance(cls.__dict__.get(name), wrapt.FunctionWrapper):
                unwrap(cls, name)

    def patch_class(self, cls: type) -> None:
        for name in self._names:
            function = cls.__dict__.get(name)
            if not inspect.isfunction(function):
                continue
            wrapper = self._wrapper_for(cls, name, inspect.iscoroutinefunction(function))
            if wrapper is None:
                continue
            wrapt.wrap_function_wrapper(cls, name, wrapper)
            with self._lock:
                self._patched.append((cls, name))

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


def acquire_submit_patch() -> None:
    """Start carrying the caller's context into ThreadPoolExecutor tasks (reference counted)."""
    global _submit_users
    with _submit_lock:
        if _submit_users == 0:
            wrapt.wrap_function_wrapper(
                concurrent.futures.ThreadPoolExecutor, "submit", _submit_with_context
            )
        _submit_users += 1


def release_submit_patch() -> None:
    """Undo one ``acquire_submit_patch``; the last release restores ``submit``."""
    global _submit_users
    with _submit_lock:
        _submit_users -= 1
        if _submit_users == 0:
            unwrap(concurrent.futures.ThreadPoolExecutor, "submit")
