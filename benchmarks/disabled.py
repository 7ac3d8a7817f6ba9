"""Disabled and sampled-out instrumentation against uninstrumented PocketFlow.

- disabled: ``instrument_pocketflow(enabled=False)``, which patches nothing;
- sampled out: instrumented with a TracerProvider whose sampler is ``ALWAYS_OFF``,
  so every wrapper runs but every span is a non-recording span.

A second uninstrumented case (an A/A control) shows how far two identical
cases differ on this machine, which is the noise that the disabled case is
judged against.
"""

from __future__ import annotations

import math
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
# The disabled case meets its target when its ratio is within the measured noise of
# 1.00, and a band narrower than this fraction is never required.
MIN_NOISE_BAND = 0.02
BASE = "uninstrumented"
CONTROL = "uninstrumented again (A/A control)"
DISABLED = "disabled (enabled=False)"
SAMPLED_OUT_CASE = "sampled out (ALWAYS_OFF sampler)"


def _is_patched() -> bool:
    return isinstance(pocketflow.BaseNode.__dict__["_run"], wrapt.FunctionWrapper)


def _runner(flow: pocketflow.Flow, runs: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(runs):
            flow.run({})

    return run


def _disabled_case(run: Callable[[], None], warmup: Callable[[], None]) -> Callable[[], float]:
    def case() -> float:
        with instrumented(None, enabled=False):
            if _is_patched():
                raise RuntimeError(
                    "instrument_pocketflow(enabled=False) patched BaseNode._run; "
                    "the disabled case would measure the instrumentation"
                )
            return timed(run, warmup)

    return case


def _sampled_out_case(
    run: Callable[[], None], warmup: Callable[[], None], provider: TracerProvider
) -> Callable[[], float]:
    def case() -> float:
        with instrumented(provider):
            return timed(run, warmup)

    return case


def run(options: Options) -> Result:
    runs, rounds = (20, 5) if options.quick else (20, 61)
    flow = noop_flow(NODES)
    run_flow = _runner(flow, runs)
    # Every measurement follows one untimed run, because the first run after
    # patching or unpatching is slower.
    warmup = _runner(flow, 1)
    sampled_out = sdk_provider(ALWAYS_OFF)
    cases = {
        BASE: lambda: timed(run_flow, warmup),
        CONTROL: lambda: timed(run_flow, warmup),
        DISABLED: _disabled_case(run_flow, warmup),
        SAMPLED_OUT_CASE: _sampled_out_case(run_flow, warmup, sampled_out),
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
            result.tables.extend(profile_tables(title, profile, cost, "us/node"))
            result.texts.append(f"pyinstrument call tree, {title}\n{profile.tree}")
    sampled_out.shutdown()
    return result


def median_ratio_interval(spread: float, rounds: int) -> float:
    """Estimate the half-width of a 95% interval for the ratio of two medians, as a fraction.

    ``spread`` is the samples' IQR divided by their median. For normal noise the
    standard deviation is IQR / 1.35, and the standard error of a median is 1.25
    standard deviations over the square root of the sample count. A ratio of two
    independent medians has sqrt(2) times that relative error, and 95% is about
    two errors. The noise here is not normal, so the result is an estimate.
    """
    return 2 * math.sqrt(2) * 1.25 * (spread / 1.35) / math.sqrt(rounds)


def _report(samples: dict[str, list[float]], runs: int, rounds: int) -> Result:
    per_node = {name: median(values) / (runs * NODES) * 1e6 for name, values in samples.items()}
    base = per_node[BASE]
    table = Table(
        f"Disabled and sampled out: {NODES} no-op nodes in a Flow, {runs} runs per round, "
        f"{rounds} rounds",
        ["case", "us/node (median)", "added us/node", "ratio vs uninstrumented",
         "same, median of per-round ratios", "spread (IQR/median)"],
    )  # fmt: skip
    ratios = {name: value / base for name, value in per_node.items()}
    for name, value in per_node.items():
        table.add_row(
            name,
            f"{value:.3f}",
            f"{value - base:+.3f}",
            f"{ratios[name]:.3f}",
            f"{median(round_ratios(samples[name], samples[BASE])):.3f}",
            f"{relative_spread(samples[name]) * 100:.1f}%",
        )

    spread = max(relative_spread(samples[BASE]), relative_spread(samples[DISABLED]))
    interval = median_ratio_interval(spread, rounds)
    band = max(MIN_NOISE_BAND, abs(ratios[CONTROL] - 1), interval)
    disabled = ratios[DISABLED]
    holds = abs(disabled - 1) <= band
    table.notes.append(
        "Ratios use the medians; every measurement follows one untimed warm-up run. Noise "
        f"band: +/-{band * 100:.1f}%, the largest of the A/A control's distance from 1.00, "
        f"an estimated 95% interval for a ratio of two medians (+/-{interval * 100:.1f}%) "
        f"and {MIN_NOISE_BAND * 100:.0f}%. Target: disabled = 1.00 within noise: "
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
            f"{ratios[SAMPLED_OUT_CASE]:.2f} (+{per_node[SAMPLED_OUT_CASE] - base:.2f} us/node)",
        ),
    ]
    return Result([table], findings)
