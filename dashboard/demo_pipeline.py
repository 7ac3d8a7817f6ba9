"""The demo workflow: a census of the Python standard library's source files.

Four nodes in a row:
``DataSourceNode >> ProcessingNode >> ValidationNode >> OutputNode``.
The data source lists ``.py`` files of this interpreter's standard library,
processing parses each one with ``ast`` in a parallel batch node and counts
functions, classes and lines, validation checks the totals, and the output
node writes a JSON report. Some standard-library files are test data with
deliberate syntax or encoding errors. Those raise real errors, are retried,
and are then recorded by the fallback.

The same nodes are built on KayGraph (a thread-pool ``ParallelBatchNode``) or
on PocketFlow (an ``AsyncParallelBatchNode`` handing each parse to a thread).
"""

from __future__ import annotations

import ast
import asyncio
import datetime
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

PARSE_WORKERS = 4
PARSE_ATTEMPTS = 2


def standard_library_dir() -> Path:
    """Return the directory of this interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_source_files(root: Path) -> list[Path]:
    """Return every ``.py`` file under ``root``, sorted, skipping installed third-party packages."""
    files = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(
            d for d in subdirectories if d not in ("site-packages", "__pycache__")
        )
        files.extend(Path(directory, name) for name in names if name.endswith(".py"))
    return sorted(files)


def analyse_source(path: Path) -> dict[str, Any]:
    """Parse one file and count its functions, classes and lines.

    Raises:
        SyntaxError, ValueError or UnicodeDecodeError: the file is not valid Python source.
    """
    source = path.read_bytes()
    tree = ast.parse(source, filename=str(path))
    functions = classes = 0
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            functions += 1
        elif isinstance(node, ast.ClassDef):
            classes += 1
    return {
        "path": str(path),
        "lines": source.count(b"\n") + (0 if source.endswith(b"\n") or not source else 1),
        "functions": functions,
        "classes": classes,
    }


def failed_analysis(path: Path, error: BaseException) -> dict[str, Any]:
    return {"path": str(path), "error": f"{type(error).__name__}: {error}"}


def analyse_or_record_failure(path: Path) -> dict[str, Any]:
    try:
        return analyse_source(path)
    except (SyntaxError, ValueError) as error:
        return failed_analysis(path, error)


def choose_files(files: list[Path], run_number: int, count: int) -> list[Path]:
    """Return the run_number-th window of count files, wrapping around; 0 means all files."""
    if not files or count <= 0 or count >= len(files):
        return list(files)
    start = (run_number * count) % len(files)
    window = files[start : start + count]
    if len(window) < count:
        window += files[: count - len(window)]
    return window


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    parsed = [r for r in results if "error" not in r]
    return {
        "files": len(results),
        "parsed": len(parsed),
        "failed": len(results) - len(parsed),
        "lines": sum(r["lines"] for r in parsed),
        "functions": sum(r["functions"] for r in parsed),
        "classes": sum(r["classes"] for r in parsed),
    }


def write_report(report_dir: Path, summary: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    report_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = report_dir / f"stdlib-census-{stamp}.json"
    failures = [r for r in results if "error" in r]
    path.write_text(json.dumps({"summary": summary, "failures": failures}, indent=2) + "\n")
    return path


@dataclass
class Pipeline:
    """A built workflow and how to run it once on a shared store."""

    framework: str
    graph: Any
    is_async: bool

    def run(self, shared: dict[str, Any]) -> Any:
        if self.is_async:
            return asyncio.run(self.graph.run_async(shared))
        return self.graph.run(shared)


def build_pipeline(framework: str, module: ModuleType) -> Pipeline:
    """Build the four-node workflow on ``module`` (``kaygraph`` or ``pocketflow``)."""
    base = module.Node

    def node_kwargs(node_id: str) -> dict[str, Any]:
        return {"node_id": node_id} if framework == "kaygraph" else {}

    class DataSourceNode(base):  # type: ignore[misc, valid-type]
        def prep(self, shared: dict[str, Any]) -> tuple[Path, int, int]:
            return Path(shared["source_dir"]), shared["run_number"], shared["files_per_run"]

        def exec(self, prep_res: tuple[Path, int, int]) -> list[Path]:
            root, run_number, count = prep_res
            return choose_files(list_source_files(root), run_number, count)

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: list[Path]) -> str:
            shared["files"] = exec_res
            return "default"

    class ValidationNode(base):  # type: ignore[misc, valid-type]
        def prep(self, shared: dict[str, Any]) -> list[dict[str, Any]]:
            return shared["results"]

        def exec(self, results: list[dict[str, Any]]) -> dict[str, Any]:
            summary = summarise(results)
            for result in results:
                if (
                    "error" not in result
                    and min(result["lines"], result["functions"], result["classes"]) < 0
                ):
                    raise ValueError(f"negative count in the analysis of {result['path']}")
            if summary["parsed"] + summary["failed"] != len(results):
                raise ValueError(f"summary {summary} does not add up to {len(results)} files")
            return summary

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: dict[str, Any]) -> str:
            shared["summary"] = exec_res
            return "default"

    class OutputNode(base):  # type: ignore[misc, valid-type]
        def prep(self, shared: dict[str, Any]) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
            return Path(shared["report_dir"]), shared["summary"], shared["results"]

        def exec(self, prep_res: tuple[Path, dict[str, Any], list[dict[str, Any]]]) -> Path:
            return write_report(*prep_res)

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Path) -> None:
            shared["report_path"] = str(exec_res)

    processing = _processing_node(framework, module)
    source = DataSourceNode(**node_kwargs("source"))
    process = processing(**node_kwargs("process"))
    validate = ValidationNode(**node_kwargs("validate"))
    output = OutputNode(**node_kwargs("output"))
    source >> process >> validate >> output

    if framework == "kaygraph":
        return Pipeline(framework, module.Graph(start=source), is_async=False)
    return Pipeline(framework, module.AsyncFlow(start=source), is_async=True)


def _processing_node(framework: str, module: ModuleType) -> type:
    if framework == "kaygraph":

        class ProcessingNode(module.ParallelBatchNode):  # type: ignore[misc, name-defined]
            def __init__(self, node_id: str) -> None:
                super().__init__(PARSE_WORKERS, max_retries=PARSE_ATTEMPTS, node_id=node_id)

            def prep(self, shared: dict[str, Any]) -> list[Path]:
                return shared["files"]

            def exec(self, path: Path) -> dict[str, Any]:
                return analyse_source(path)

            def exec_fallback(self, path: Path, exc: Exception) -> dict[str, Any]:
                return failed_analysis(path, exc)

            def post(
                self, shared: dict[str, Any], prep_res: list[Path], exec_res: list[Any]
            ) -> str:
                # KayGraph keeps the attempt number in self.cur_retry, which the pool's
                # threads share, so an item whose last attempt fails while another thread
                # restarts the count can come back as None. Those files are analysed again.
                shared["results"] = [
                    result if result is not None else analyse_or_record_failure(path)
                    for path, result in zip(prep_res, exec_res, strict=True)
                ]
                return "default"

        return ProcessingNode

    class ProcessingNode(module.AsyncParallelBatchNode):  # type: ignore[misc, name-defined, no-redef]
        def __init__(self) -> None:
            super().__init__(max_retries=PARSE_ATTEMPTS)
            self._workers: asyncio.Semaphore | None = None

        async def prep_async(self, shared: dict[str, Any]) -> list[Path]:
            return shared["files"]

        async def exec_async(self, path: Path) -> dict[str, Any]:
            if self._workers is None:
                self._workers = asyncio.Semaphore(PARSE_WORKERS)
            async with self._workers:
                return await asyncio.to_thread(analyse_source, path)

        async def exec_fallback_async(self, path: Path, exc: Exception) -> dict[str, Any]:
            return failed_analysis(path, exc)

        async def post_async(
            self, shared: dict[str, Any], prep_res: Any, exec_res: list[dict[str, Any]]
        ) -> str:
            shared["results"] = exec_res
            return "default"

    return ProcessingNode
