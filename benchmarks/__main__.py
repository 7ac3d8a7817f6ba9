"""Command line: ``python -m benchmarks [--quick] [--only a,b] [--markdown PATH] [--profile]``."""

from __future__ import annotations

import argparse
import datetime
import importlib
import logging
import platform
import sys
import time
from pathlib import Path

from benchmarks._common import Finding, Options, Result, Table, verdict

BENCHMARKS = ("per_node", "workflow_overhead", "disabled", "throughput", "fanout", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Measure kaygraph-otel against uninstrumented PocketFlow workflows.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="few repetitions on small inputs: checks that the benchmarks run, not how fast",
    )
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated benchmarks to run, from: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=None,
        help="also write every table and the summary as markdown to this file",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also profile the instrumented case of per_node with pyinstrument (if installed)",
    )
    return parser.parse_args(argv)


def selected(only: str) -> list[str]:
    """Return the benchmark names that ``--only`` selects, in the canonical order.

    Raises:
        SystemExit: a name is not a benchmark.
    """
    if not only.strip():
        return list(BENCHMARKS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(
            f"unknown benchmark(s) {', '.join(unknown)} in --only; "
            f"choose from {', '.join(BENCHMARKS)}"
        )
    return [name for name in BENCHMARKS if name in names]


def summary_table(findings: list[Finding]) -> Table:
    table = Table("Summary", ["benchmark", "figure", "value", "target", "verdict"])
    for finding in findings:
        table.add_row(
            finding.benchmark,
            finding.figure,
            finding.value,
            finding.target or "-",
            verdict(finding.holds),
        )
    return table


def machine_description() -> str:
    return (
        f"Python {platform.python_version()} on {platform.platform()}, "
        f"{platform.processor() or platform.machine()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    options = Options(quick=args.quick, profile=args.profile)
    names = selected(args.only)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    print(f"kaygraph-otel benchmarks, {'quick' if args.quick else 'full'} mode, {started}")
    print(machine_description(), flush=True)

    results: list[tuple[str, Result, float]] = []
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        print(f"\nRunning {name} ...", flush=True)
        began = time.perf_counter()
        result: Result = module.run(options)
        elapsed = time.perf_counter() - began
        results.append((name, result, elapsed))
        for table in result.tables:
            print("\n" + table.to_text(), flush=True)
        for text in result.texts:
            print("\n" + text, flush=True)
        print(f"({name} took {elapsed:.1f} s)", flush=True)

    findings = [finding for _, result, _ in results for finding in result.findings]
    summary = summary_table(findings)
    print("\n" + summary.to_text(), flush=True)

    if args.markdown is not None:
        write_markdown(args.markdown, results, summary, started, args.quick)
        print(f"\nMarkdown written to {args.markdown}")
    return 0


def write_markdown(
    path: Path, results: list[tuple[str, Result, float]], summary: Table, started: str, quick: bool
) -> None:
    parts = [
        f"<!-- python -m benchmarks{' --quick' if quick else ''}, started {started} -->",
        f"Machine: {machine_description()}",
    ]
    for name, result, elapsed in results:
        parts.append(f"## {name} ({elapsed:.0f} s)")
        parts.extend(table.to_markdown() for table in result.tables)
        parts.extend(f"```text\n{text}\n```" for text in result.texts)
    parts.append(summary.to_markdown())
    path.write_text("\n\n".join(parts) + "\n")


if __name__ == "__main__":
    sys.exit(main())
