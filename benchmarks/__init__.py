"""Benchmarks of kaygraph-otel against uninstrumented PocketFlow workflows.

Run them with ``python -m benchmarks`` (all), ``--only per_node,disabled`` (a
selection) or ``--quick`` (a short smoke run). Each benchmark measures its
baseline and its instrumented cases in the same process, interleaved round by
round, and prints medians and ratios against the baseline. The numbers depend
on the machine, so no test compares them with a limit.
"""
