"""The dashboard's page and JSON endpoints, except for the event stream and the OTLP receiver.

- ``GET /``: the page.
- ``GET /api/state?limit=N``: the N most recent events, oldest first.
- ``GET /api/runs?limit=N``: run summaries, the most recently started first.
- ``GET /api/runs/{correlation_id}``: one run's summary, events and spans.
- ``GET /api/runs/{correlation_id}/graph``: its graph with node states and edge counts.
  NOTE: a run whose id itself ends in ``/graph`` can only be read through this route.
- ``GET /api/metrics?window=S``: per node type latency, errors, retries and throughput.
- ``GET /healthz``: status, mode and counters.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response

from kaygraph_otel_dashboard.runs import RunRecord

if TYPE_CHECKING:
    from kaygraph_otel_dashboard.app import DashboardState

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_STATE_LIMIT = 2000
MAX_STATE_LIMIT = 10_000
DEFAULT_RUNS_LIMIT = 200
MAX_RUNS_LIMIT = 1000
NO_STORE = {"cache-control": "no-store"}


class _BadParameterError(ValueError):
    pass


def _dashboard(request: Request) -> DashboardState:
    return request.app.state.dashboard  # type: ignore[no-any-return]


def _whole_number(request: Request, name: str, default: int, maximum: int, minimum: int = 1) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
        raise _BadParameterError(
            f"invalid {name} {raw[:40]!r}: expected a whole number from {minimum} to {maximum}"
        )
    return int(raw)


def _bad_request(error: Exception) -> Response:
    return JSONResponse({"error": str(error)}, status_code=400, headers=NO_STORE)


async def page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"cache-control": "no-cache"})


async def favicon(request: Request) -> Response:
    return Response(status_code=204, headers={"cache-control": "max-age=86400"})


async def recent_state(request: Request) -> Response:
    try:
        limit = _whole_number(request, "limit", DEFAULT_STATE_LIMIT, MAX_STATE_LIMIT)
    except _BadParameterError as error:
        return _bad_request(error)
    events = _dashboard(request).bus.recent(limit)
    return JSONResponse({"events": events}, headers=NO_STORE)


async def health(request: Request) -> Response:
    state = _dashboard(request)
    body: dict[str, Any] = {
        "status": "ok",
        "subscribers": len(state.streams),
        "mode": state.mode,
        "runs": len(state.feed.runs),
        "otlp": state.otlp_stats.to_dict(),
    }
    if state.relay is not None:
        body["relay"] = state.relay.stats()
    return JSONResponse(body, headers=NO_STORE)


async def list_runs(request: Request) -> Response:
    try:
        limit = _whole_number(request, "limit", DEFAULT_RUNS_LIMIT, MAX_RUNS_LIMIT)
    except _BadParameterError as error:
        return _bad_request(error)
    runs = _dashboard(request).feed.runs.summaries(limit)
    return JSONResponse({"runs": runs}, headers=NO_STORE)


async def _find_run(state: DashboardState, correlation_id: str) -> RunRecord | None:
    record = state.feed.runs.get(correlation_id)
    if record is not None or state.history is None:
        return record
    # A run this dashboard never saw, or has forgotten, may still be in its Redis Stream.
    limit = state.feed.runs.max_events_per_run
    try:
        events = await state.history.run_events(correlation_id, limit)
    except (RedisError, OSError) as error:
        logger.warning("Cannot read run %s from Redis: %r", correlation_id, error)
        return None
    if not events:
        return None
    return RunRecord.from_events(correlation_id, events, limit)


def _run_not_found(correlation_id: str) -> Response:
    return JSONResponse(
        {
            "error": f"run {correlation_id[:200]!r} not found; GET /api/runs lists the runs "
            "this dashboard knows"
        },
        status_code=404,
        headers=NO_STORE,
    )


async def run_detail(request: Request) -> Response:
    correlation_id = request.path_params["correlation_id"]
    record = await _find_run(_dashboard(request), correlation_id)
    if record is None:
        return _run_not_found(correlation_id)
    body = {
        "run": record.summary(),
        "events": list(record.events),
        "events_dropped": record.events_dropped,
        "spans": record.spans_view(),
    }
    return JSONResponse(body, headers=NO_STORE)


async def run_graph(request: Request) -> Response:
    correlation_id = request.path_params["correlation_id"]
    record = await _find_run(_dashboard(request), correlation_id)
    if record is None:
        return _run_not_found(correlation_id)
    return JSONResponse(record.graph_view(), headers=NO_STORE)


async def metrics(request: Request) -> Response:
    node_metrics = _dashboard(request).feed.metrics
    maximum = int(node_metrics.window_seconds)
    minimum = int(node_metrics.bucket_seconds)
    try:
        window = _whole_number(request, "window", maximum, maximum, minimum)
        body = node_metrics.snapshot(window)
    except (_BadParameterError, ValueError) as error:
        return _bad_request(error)
    return JSONResponse(body, headers=NO_STORE)
