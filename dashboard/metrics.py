"""Per node type latency percentiles, error rate, retries and throughput over a sliding window.

Durations come from ``execution_time`` events (``data.metrics.duration_ms``)
and go into DDSketch quantile sketches, one per node type, kind and time
bucket. A query merges the buckets inside the window, so a percentile's
relative error stays within ``relative_accuracy`` (1 % by default) however many
values were recorded, and memory stays bounded by the number of buckets and keys.

Events are bucketed by their own timestamp, not by arrival, so a batch that
arrives late still lands in the right bucket and old history loaded at
startup does not count as recent traffic.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass, field
from typing import Any

from ddsketch import DDSketch

from kaygraph_otel_dashboard.runs import Event, parse_timestamp

DEFAULT_WINDOW_SECONDS = 300.0
DEFAULT_BUCKET_SECONDS = 10.0
DEFAULT_RELATIVE_ACCURACY = 0.01
DEFAULT_MAX_KEYS = 1000
OTHER_NODE_TYPE = "(other node types)"
QUANTILES = (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99))

Key = tuple[str, str]


@dataclass
class _Tally:
    sketch: DDSketch
    count: int = 0
    failed: int = 0
    handled: int = 0
    retries: int = 0
    total_ms: float = 0.0
    max_ms: float = 0.0
    min_ms: float = math.inf


@dataclass
class _Bucket:
    tallies: dict[Key, _Tally] = field(default_factory=dict)


class NodeMetrics:
    """Sliding-window latency and error statistics per (node type, kind).

    ``kind`` is "workflow" for whole runs, "node" for node and nested-graph
    executions, and "item" for batch items.

    Args:
        window_seconds: the maximum window a query may request.
        bucket_seconds: the width of one time bucket; a window is a whole number
            of buckets, so its edge moves in steps of this size.
        relative_accuracy: the DDSketch relative accuracy of the percentiles.
        max_keys: distinct (node type, kind) pairs per bucket; more are counted
            under ``OTHER_NODE_TYPE`` so that a flood of generated type names
            cannot exhaust memory.

    Raises:
        ValueError: a number is out of range.
    """

    def __init__(
        self,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        bucket_seconds: float = DEFAULT_BUCKET_SECONDS,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not bucket_seconds > 0:
            raise ValueError(f"bucket_seconds must be positive, got {bucket_seconds!r}")
        if not window_seconds >= bucket_seconds:
            raise ValueError(
                f"window_seconds must be at least bucket_seconds ({bucket_seconds}), "
                f"got {window_seconds!r}"
            )
        if not 0 < relative_accuracy < 1:
            raise ValueError(
                f"relative_accuracy must be between 0 and 1, got {relative_accuracy!r}"
            )
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys!r}")
        self.window_seconds = float(window_seconds)
        self.bucket_seconds = float(bucket_seconds)
        self.relative_accuracy = relative_accuracy
        self.max_keys = max_keys
        self._buckets: dict[int, _Bucket] = {}
        self.recorded = 0

    def record(self, event: Event, kind: str, now: float | None = None) -> None:
        """Count one event; only ``execution_time`` and ``retry_attempted`` events matter."""
        name = event.get("event_name")
        if name not in ("execution_time", "retry_attempted"):
            return
        now = time.time() if now is None else now
        when = parse_timestamp(event.get("timestamp"))
        when = now if when is None or when > now else when
        if when < now - self.window_seconds:
            return

        tally = self._tally(int(when // self.bucket_seconds), str(event.get("node_type", "")), kind)
        data = event.get("data") if isinstance(event.get("data"), dict) else {}
        if name == "retry_attempted":
            tally.retries += 1
            return

        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        duration = metrics.get("duration_ms")
        if isinstance(duration, bool) or not isinstance(duration, (int, float)):
            return
        if not math.isfinite(duration) or duration < 0:
            return
        tally.sketch.add(float(duration))
        tally.count += 1
        tally.total_ms += duration
        tally.max_ms = max(tally.max_ms, float(duration))
        tally.min_ms = min(tally.min_ms, float(duration))
        if data.get("state") == "failed":
            tally.failed += 1
        elif data.get("state") == "handled":
            tally.handled += 1
        self.recorded += 1
        self._prune(now)

    def _tally(self, bucket_index: int, node_type: str, kind: str) -> _Tally:
        bucket = self._buckets.setdefault(bucket_index, _Bucket())
        key = (node_type, kind)
        if key not in bucket.tallies and len(bucket.tallies) >= self.max_keys:
            key = (OTHER_NODE_TYPE, kind)
        tally = bucket.tallies.get(key)
        if tally is None:
            tally = bucket.tallies[key] = _Tally(DDSketch(self.relative_accuracy))
        return tally

    def _prune(self, now: float) -> None:
        oldest = int((now - self.window_seconds) // self.bucket_seconds)
        for index in [index for index in self._buckets if index < oldest]:
            del self._buckets[index]

    def snapshot(
        self, window_seconds: float | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """Return the statistics of the last ``window_seconds`` (default: the whole window).

        Raises:
            ValueError: ``window_seconds`` is shorter than one bucket or longer than
                the window this object keeps.
        """
        now = time.time() if now is None else now
        window = self.window_seconds if window_seconds is None else float(window_seconds)
        if not self.bucket_seconds <= window <= self.window_seconds:
            raise ValueError(
                f"window {window_seconds!r} s is out of range; use {self.bucket_seconds:g} "
                f"to {self.window_seconds:g} seconds"
            )
        self._prune(now)
        first = int((now - window) // self.bucket_seconds) + 1
        merged: dict[Key, _Tally] = {}
        earliest = None
        for index, bucket in self._buckets.items():
            if index < first:
                continue
            earliest = index if earliest is None else min(earliest, index)
            for key, tally in bucket.tallies.items():
                total = merged.get(key)
                if total is None:
                    total = merged[key] = _Tally(DDSketch(self.relative_accuracy))
                total.sketch.merge(tally.sketch)
                total.count += tally.count
                total.failed += tally.failed
                total.handled += tally.handled
                total.retries += tally.retries
                total.total_ms += tally.total_ms
                total.max_ms = max(total.max_ms, tally.max_ms)
                total.min_ms = min(total.min_ms, tally.min_ms)
        # Until the window has filled, throughput is taken over the time that has data.
        covered = window
        if earliest is not None:
            covered = min(window, max(self.bucket_seconds, now - earliest * self.bucket_seconds))
        rows = [self._row(key, tally, covered) for key, tally in merged.items()]
        rows.sort(key=lambda row: (row["kind"] != "workflow", row["node_type"], row["kind"]))
        return {
            "window_seconds": window,
            "bucket_seconds": self.bucket_seconds,
            "relative_accuracy": self.relative_accuracy,
            "generated_at": datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "node_types": rows,
        }

    @staticmethod
    def _row(key: Key, tally: _Tally, covered_seconds: float) -> dict[str, Any]:
        node_type, kind = key
        row: dict[str, Any] = {"node_type": node_type, "kind": kind, "count": tally.count}
        for name, quantile in QUANTILES:
            value = tally.sketch.get_quantile_value(quantile) if tally.count else None
            if value is not None:
                # A sketch value is within the relative accuracy of a recorded one, so
                # it can land just outside the recorded range; the exact bounds win.
                value = round(min(tally.max_ms, max(tally.min_ms, value)), 3)
            row[name] = value
        row["max_ms"] = round(tally.max_ms, 3) if tally.count else None
        row["mean_ms"] = round(tally.total_ms / tally.count, 3) if tally.count else None
        row["errors"] = tally.failed
        row["handled"] = tally.handled
        row["error_rate"] = round(tally.failed / tally.count, 4) if tally.count else None
        row["retries"] = tally.retries
        row["throughput_per_min"] = round(tally.count * 60.0 / covered_seconds, 3)
        return row
