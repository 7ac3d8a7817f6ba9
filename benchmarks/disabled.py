"""Disabled and sampled-out instrumentation against uninstrumented PocketFlow.

- disabled: ``instrument_pocketflow(enabled=False)``, which patches nothing;
- sampled out: instrumented with a TracerProvider whose sampler is ``ALWAYS_OFF``,
  so every wrapper runs but every span is a non-recording span.

A second uninstrumented case (an A/A control) shows how far two identical
cases differ on this machine, which is the noise that the disabled case is
judged against.
"""

from __future__ import annotations

from collections.abc import Callable

import pocketflow
import wrapt
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from benchmarks._common import (
    Finding,
    Options,
    Result,
    Table,
    instrumented,
    interleaved,
    median,
    noop_flow,
    profile_call,
    profile_tables,
    relative_spread,
    round_ratios,
    sdk_provider,
    timed,
    verdict,
)

NAME = "disabled"
NODES = 100
# The disabled case holds its target when it is within the measured noise, and
# never needs to be closer than this to 1.00.
MIN_NOISE_BAND = 0.02
SAMPLED_OUT_CASE = "sampled out (ALWAYS_OFF sampler)"


def _is_patched() -> bool:
    return isinstance(pocketflow.BaseNode.__dict__["_run"], wrapt.FunctionWrapper)


def _runner(flow: pocketflow.Flow, runs: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(runs):
            flow.run({})

    return run


def _disabled_case(run: Callable[[], None]) -> Callable[[], float]:
    def case() -> float:
        with instrumented(None, enabled=False):
            if _is_patched():
                raise RuntimeError(
                    "instrument_pocketflow(enabled=False) patched BaseNode._run; "
                    "the disabled case would measure the instrumentation"
                )
            return timed(run)

    return case


def _sampled_out_case(run: Callable[[], None], provider: TracerProvider) -> Callable[[], float]:
    def case() -> float:
        with instrumented(provider):
            return timed(run)

    return case


def run(options: Options) -> Result:
    runs, rounds = (20, 5) if options.quick else (20, 61)
    flow = noop_flow(NODES)
    run_flow = _runner(flow, runs)
    sampled_out = sdk_provider(ALWAYS_OFF)
    cases = {
        "uninstrumented": lambda: timed(run_flow),
        "uninstrumented again (A/A control)": lambda: timed(run_flow),
        "disabled (enabled=False)": _disabled_case(run_flow),
        SAMPLED_OUT_CASE: _sampled_out_case(run_flow, sampled_out),
    }
    samples = interleaved(cases, rounds)
    result = _report(samples, runs, rounds)
    if options.profile:
        cost = median(samples[SAMPLED_OUT_CASE]) / (runs * NODES) * 1e6
        with instrumented(sampled_out):
            profile = profile_call(_runner(flow, runs * 5))
        if profile is None:
            result.texts.append("pyinstrument is not installed, so --profile printed nothing.")
        else:
            title = f"{SAMPLED_OUT_CASE}, {runs * 5} runs of {NODES} nodes"
            result.tables.extend(profile_tables(title, profile, cost, "node"))
            result.texts.append(f"pyinstrument call tree, {title}\n{profile.tree}")
    sampled_out.shutdown()
    return result


def _report(samples: dict[str, list[float]], runs: int, rounds: int) -> Result:
    per_node = {name: median(values) / (runs * NODES) * 1e6 for name, values in samples.items()}
    base = per_node["uninstrumented"]
    table = Table(
        f"Disabled and sampled out: {NODES} no-op nodes in a Flow, {runs} runs per round, "
        f"{rounds} rounds",
        ["case", "us/node (median)", "added us/node", "ratio vs uninstrumented",
         "spread (IQR/median)"],
    )  # fmt: skip
    ratios = {
        name: median(round_ratios(values, samples["uninstrumented"]))
        for name, values in samples.items()
    }
    for name, value in per_node.items():
        table.add_row(
            name,
            f"{value:.3f}",
            f"{value - base:+.3f}",
            f"{ratios[name]:.3f}",
            f"{relative_spread(samples[name]) * 100:.1f}%",
        )

    control = abs(ratios["uninstrumented again (A/A control)"] - 1)
    band = max(MIN_NOISE_BAND, control)
    disabled = ratios["disabled (enabled=False)"]
    holds = abs(disabled - 1) <= band
    table.notes.append(
        "Ratios are medians over rounds of each round's ratio to the uninstrumented case. "
        f"Noise band: +/-{band * 100:.1f}% (the larger of the A/A control's distance from "
        f"1.00 and {MIN_NOISE_BAND * 100:.0f}%). Target: disabled = 1.00 within noise: "
        f"{verdict(holds)}."
    )
    findings = [
        Finding(
            NAME,
            "disabled / uninstrumented",
            f"{disabled:.3f}",
            f"1.00 +/- {band * 100:.1f}% (noise)",
            holds,
        ),
        Finding(
            NAME,
            "sampled out (ALWAYS_OFF) / uninstrumented",
            f"{ratios['sampled out (ALWAYS_OFF sampler)']:.2f} "
            f"(+{per_node['sampled out (ALWAYS_OFF sampler)'] - base:.2f} us/node)",
        ),
    ]
    return Result([table], findings)
