"""YAML workflow loader names of KayGraph 0.3.1, without an implementation.

The test fake does not implement YAML loading: every function here raises
NotImplementedError. The module name is the fake's own choice.
"""

from __future__ import annotations

from typing import Any, NoReturn


def _not_implemented(name: str) -> NoReturn:
    raise NotImplementedError(
        f"kaygraph.{name}() is not implemented: this is the test fake of kaygraph, which does "
        "not implement YAML loading; install the real kaygraph package to use it"
    )


def load_workflow(*args: Any, **kwargs: Any) -> Any:
    _not_implemented("load_workflow")


def validate_workflow(*args: Any, **kwargs: Any) -> Any:
    _not_implemented("validate_workflow")


def yaml_to_graph(*args: Any, **kwargs: Any) -> Any:
    _not_implemented("yaml_to_graph")


def graph_to_yaml(*args: Any, **kwargs: Any) -> Any:
    _not_implemented("graph_to_yaml")


def export_workflow(*args: Any, **kwargs: Any) -> Any:
    _not_implemented("export_workflow")
