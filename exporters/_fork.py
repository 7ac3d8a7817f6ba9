"""Reset of exporter state in the child process after ``os.fork()``.

A forked child inherits copies of the parent's sockets, locks and thread
objects, but only the thread that called ``fork`` keeps running. Sending on an
inherited socket interleaves the child's requests with the parent's on one
connection, and a lock that another parent thread held at fork time stays held
forever in the child. Every exporter registers itself here, and one
``os.register_at_fork(after_in_child=...)`` hook calls each live exporter's
``_after_fork_in_child()``, which drops inherited connections without closing
them (closing could shut down the parent's connection) and recreates its locks,
queues and threads.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    """An object that rebuilds its connections, locks and threads in a forked child."""

    def _after_fork_in_child(self) -> None: ...


# A WeakSet, so that registering an exporter does not keep it alive.
_instances: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register_fork_reset(instance: ForkAware) -> None:
    """Call ``instance._after_fork_in_child()`` in every child forked from now on."""
    _instances.add(instance)


def _reset_all_in_child() -> None:
    for instance in list(_instances):
        try:
            instance._after_fork_in_child()
        except Exception:  # noqa: BLE001 - a fork hook must not break the child process
            logger.warning(
                "Resetting %r after fork failed; it may share state with the parent",
                instance,
                exc_info=True,
            )


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_all_in_child)
