"""Graphs that run in a loop until an exit flag is set (test fake of KayGraph 0.3.1)."""

from __future__ import annotations

from typing import Any

from kaygraph import AsyncGraph, Graph, Node


class InteractiveNode(Node):
    """Node meant for interactive graphs.

    NOTE: KayGraph 0.3.1 exports this class, but its API beyond Node's is not known,
    so the fake adds nothing to Node.
    """


class UserInputNode(Node):
    """Node that reads one line from standard input into ``shared[output_key]``.

    The ``prompt`` and ``output_key`` parameters are the fake's own names.
    """

    def __init__(self, prompt: str = "> ", output_key: str = "user_input", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompt = prompt
        self.output_key = output_key

    def prep(self, shared: dict[str, Any]) -> str:
        return self.prompt

    def exec(self, prep_res: str) -> str:
        return input(prep_res)

    def post(self, shared: dict[str, Any], prep_res: Any, exec_res: str) -> Any:
        shared[self.output_key] = exec_res
        return None


def _clear_transient_keys(shared: dict[str, Any], exit_key: str) -> None:
    for key in [key for key in shared if key.startswith("_") and key != exit_key]:
        del shared[key]


def _loop_may_continue(iteration: int, max_iterations: int | None) -> bool:
    return max_iterations is None or iteration < max_iterations


class InteractiveGraph(Graph):
    """Graph that reruns itself until ``shared[exit_key]`` is true."""

    def run_interactive(
        self,
        shared: dict[str, Any] | None = None,
        max_iterations: int | None = None,
        exit_key: str = "_exit",
        clear_transient: bool = True,
    ) -> dict[str, Any]:
        """Run the graph repeatedly and return ``shared``.

        Between iterations, keys that start with an underscore are removed when
        ``clear_transient`` is set, except ``exit_key``.
        """
        shared = {} if shared is None else shared
        iteration = 0
        while _loop_may_continue(iteration, max_iterations):
            self.run(shared)
            iteration += 1
            if shared.get(exit_key):
                break
            if clear_transient:
                _clear_transient_keys(shared, exit_key)
        return shared


class AsyncInteractiveGraph(AsyncGraph):
    """AsyncGraph that reruns itself until ``shared[exit_key]`` is true."""

    async def run_interactive_async(
        self,
        shared: dict[str, Any] | None = None,
        max_iterations: int | None = None,
        exit_key: str = "_exit",
        clear_transient: bool = True,
    ) -> dict[str, Any]:
        """Async twin of ``InteractiveGraph.run_interactive``."""
        shared = {} if shared is None else shared
        iteration = 0
        while _loop_may_continue(iteration, max_iterations):
            await self.run_async(shared)
            iteration += 1
            if shared.get(exit_key):
                break
            if clear_transient:
                _clear_transient_keys(shared, exit_key)
        return shared
