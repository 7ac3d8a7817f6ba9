"""The classes of an instrumented framework (KayGraph or PocketFlow) that the wrappers need."""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Framework:
    """One framework's class roles, looked up by name in its module.

    Attributes:
        name: "kaygraph" or "pocketflow", recorded on every span.
        base_node: the root of the node hierarchy; every subclass is patched.
        graph: the graph class (KayGraph ``Graph``, PocketFlow ``Flow``).
        item_loops: classes whose ``_exec`` is the per-item retry loop.
        batch_nodes: classes whose ``_exec`` runs a list of items.
    """

    name: str
    module: ModuleType
    base_node: type
    graph: type
    item_loops: tuple[type, ...]
    batch_nodes: tuple[type, ...]


def _classes(module: ModuleType, *names: str) -> tuple[type, ...]:
    return tuple(cls for name in names if isinstance(cls := getattr(module, name, None), type))


def describe(name: str, module: ModuleType, graph_class_name: str) -> Framework:
    """Return the Framework of ``module``, raising ImportError when a core class is missing."""
    missing = [
        n for n in ("BaseNode", "Node", "BatchNode", graph_class_name) if not hasattr(module, n)
    ]
    if missing:
        raise ImportError(
            f"{module.__name__} has no {', '.join(missing)}: this version is not supported"
        )
    return Framework(
        name=name,
        module=module,
        base_node=module.BaseNode,
        graph=getattr(module, graph_class_name),
        item_loops=_classes(module, "Node", "AsyncNode"),
        batch_nodes=_classes(module, "BatchNode", "AsyncBatchNode", "AsyncParallelBatchNode"),
    )
