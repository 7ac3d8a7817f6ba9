"""Smoke test of ``python -m benchmarks --quick``: the benchmarks run and print ratios.

The test checks the shape of the output only. Timings depend on the machine,
so no figure is compared with a limit.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
# A quick run of these two benchmarks takes about 5 s on a 2-core machine.
RUN_TIMEOUT_SECONDS = 60
COLUMN_SEPARATOR = re.compile(r"\s{2,}")


@pytest.fixture(scope="module")
def quick_output() -> str:
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--only", "per_node,disabled"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        check=False,
    )
    assert completed.returncode == 0, f"benchmarks failed:\n{completed.stderr[-3000:]}"
    return completed.stdout


def row_cells(output: str, *labels: str) -> list[str]:
    """Return the cells of the first table row whose leading cells are ``labels``."""
    for line in output.splitlines():
        cells = COLUMN_SEPARATOR.split(line.strip())
        if tuple(cells[: len(labels)]) == labels:
            return cells
    raise AssertionError(f"no row {labels!r} in the output:\n{output}")


def is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


PER_NODE_GROUPS = ("SDK without export", "Redis live")


@pytest.mark.parametrize("group", PER_NODE_GROUPS)
@pytest.mark.parametrize("case", ["uninstrumented", "floor: hand-made spans", "instrumented"])
def test_per_node_row_has_timings(quick_output: str, group: str, case: str) -> None:
    cells = row_cells(quick_output, group, case)
    assert len(cells) == 8, cells
    assert is_number(cells[3]), f"us/node of {group}, {case} is {cells[3]!r}"
    assert is_number(cells[4]), f"added us/node of {group}, {case} is {cells[4]!r}"


@pytest.mark.parametrize("group", PER_NODE_GROUPS)
def test_per_node_floor_ratio_numeric(quick_output: str, group: str) -> None:
    cells = row_cells(quick_output, group, "instrumented")
    assert is_number(cells[5]), f"added / floor added of {group} is {cells[5]!r}"
    assert is_number(cells[6]), f"per-round ratio of {group} is {cells[6]!r}"


@pytest.mark.parametrize(
    "label",
    [
        "uninstrumented again (A/A control)",
        "disabled (enabled=False)",
        "sampled out (ALWAYS_OFF sampler)",
    ],
)
def test_disabled_row_has_ratio(quick_output: str, label: str) -> None:
    cells = row_cells(quick_output, label)
    assert len(cells) == 6, cells
    assert is_number(cells[3]), f"ratio of {label!r} is {cells[3]!r}"
    assert float(cells[3]) > 0


@pytest.mark.parametrize(
    "figure",
    [
        "instrumentation / hand-made span, SDK without export",
        "disabled / uninstrumented",
    ],
)
def test_summary_lists_figure(quick_output: str, figure: str) -> None:
    parts = quick_output.split("\nSummary\n", 1)
    assert len(parts) == 2, "the output has no Summary table"
    rows = [COLUMN_SEPARATOR.split(line.strip()) for line in parts[1].splitlines()]
    matching = [cells for cells in rows if len(cells) > 2 and cells[1] == figure]
    assert matching, f"no summary row {figure!r} in:\n{parts[1]}"
    value = matching[0][2]
    assert is_number(value), f"summary value of {figure!r} is {value!r}"
