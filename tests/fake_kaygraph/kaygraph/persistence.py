"""Graph that checkpoints the shared dict to JSON (test fake of KayGraph 0.3.1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kaygraph import BaseNode, Graph

logger = logging.getLogger(__name__)


class PersistentGraph(Graph):
    """Graph that runs the user's node objects themselves and returns the shared dict.

    Its ``_run`` does not use ``_orch``: it calls each node's ``_run`` on the original
    object (no copy, no params or config from the graph) and follows ``successors`` by
    action. When ``checkpoint_dir`` is set, it writes the shared dict to a JSON file
    there before each node. The file names are the fake's own.
    """

    def __init__(
        self, start_node: BaseNode | None = None, checkpoint_dir: str | Path | None = None
    ) -> None:
        super().__init__(start=start_node)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self._checkpoint_count = 0

    def save_checkpoint(self, shared: dict[str, Any], node: BaseNode) -> Path:
        """Write ``shared`` as JSON and return the file path.

        Values that JSON cannot encode are written as their ``str()``.
        """
        if self.checkpoint_dir is None:
            raise ValueError(
                f"Graph {self.node_id} has no checkpoint_dir. "
                "Pass checkpoint_dir= to PersistentGraph."
            )
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint_count += 1
        path = self.checkpoint_dir / f"checkpoint_{self._checkpoint_count:04d}_{node.node_id}.json"
        path.write_text(json.dumps(shared, default=str), encoding="utf-8")
        logger.debug("Graph %s wrote checkpoint %s", self.node_id, path)
        return path

    def _run(self, shared: dict[str, Any]) -> dict[str, Any]:
        node = self.start_node
        while node is not None:
            if self.checkpoint_dir is not None:
                self.save_checkpoint(shared, node)
            action = node._run(shared)
            node = node.successors.get(action or "default")
        return shared
