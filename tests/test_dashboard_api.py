"""Tests of the dashboard's REST endpoints, metrics, slow clients and shutdown, against uvicorn.

Servers run on free loopback ports, in a thread (``start_in_thread``) or as the
CLI in a child process. Every read has a timeout, so a missing reply fails the test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from kaygraph_otel_dashboard import cli
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.feed import YIELD_EVERY_EVENTS, EventFeed
from kaygraph_otel_dashboard.metrics import NodeMetrics
from kaygraph_otel_dashboard.runs import RunRecord, RunStore
from kaygraph_otel_dashboard.sse import format_event_id, parse_event_id
from kaygraph_otel_exporters.bus import EventBus
from tests.helpers import free_port, wait_for
from tests.test_dashboard import READ_TIMEOUT_S, SSEReader, make_event, running, sse_id

SPAN_WORKFLOW = "a" * 16
SPAN_LOAD = "b" * 16
SPAN_BATCH = "c" * 16


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def finished_run(run: str, *, fail_last: bool = False) -> list[dict[str, Any]]:
    """Return the events of a workflow run: load twice (a loop), then a batch of two items."""
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=2)

    def at(offset_ms: float) -> str:
        return iso(start + dt.timedelta(milliseconds=offset_ms))

    graph = {
        "nodes": [
            {"id": "load", "type": "LoadNode", "parent": "Pipeline", "start": True},
            {"id": "batch", "type": "SummariseBatch", "parent": "Pipeline"},
        ],
        "edges": [
            {"source": "load", "target": "load", "action": "again"},
            {"source": "load", "target": "batch", "action": "default"},
        ],
    }
    events = [
        make_event("workflow_started", "Pipeline", run=run, node_type="Graph",
                   workflow_name="Pipeline", graph=graph, span_id=SPAN_WORKFLOW),
        make_event("node_started", "load", run=run, span_id=SPAN_LOAD,
                   parent_span_id=SPAN_WORKFLOW),
        make_event("node_completed", "load", run=run, state="completed", span_id=SPAN_LOAD),
        make_event("execution_time", "load", run=run, state="completed", span_id=SPAN_LOAD,
                   metrics={"duration_ms": 100.0}),
        make_event("transition", "load", run=run, state="completed", from_node_id="load",
                   action="again", next_node_id="load"),
        make_event("transition", "load", run=run, state="completed", from_node_id="load",
                   action="again", next_node_id="load"),
        make_event("transition", "load", run=run, state="completed", from_node_id="load",
                   action="default", next_node_id="batch"),
        make_event("transition", "load", run=run, state="completed", from_node_id="load",
                   action="skip", next_node_id="elsewhere"),
        make_event("node_started", "batch", run=run, node_type="SummariseBatch",
                   span_id=SPAN_BATCH, parent_span_id=SPAN_WORKFLOW),
    ]  # fmt: skip
    for index in range(2):
        item_span = f"{index + 1:016x}"
        events.append(
            make_event("execution_time", "batch", run=run, node_type="SummariseBatch",
                       state="completed", span_id=item_span, parent_span_id=SPAN_BATCH,
                       item_index=index, metrics={"duration_ms": 40.0 + index})
        )  # fmt: skip
    if fail_last:
        events.append(
            make_event("node_failed", "batch", run=run, node_type="SummariseBatch",
                       state="failed", span_id=SPAN_BATCH,
                       error={"type": "ValueError", "message": "bad batch"})
        )  # fmt: skip
        events.append(make_event("workflow_failed", "Pipeline", run=run, node_type="Graph",
                                 state="failed", span_id=SPAN_WORKFLOW))  # fmt: skip
    else:
        events.append(make_event("node_completed", "batch", run=run, node_type="SummariseBatch",
                                 state="completed", span_id=SPAN_BATCH))  # fmt: skip
        events.append(make_event("workflow_completed", "Pipeline", run=run, node_type="Graph",
                                 state="completed", span_id=SPAN_WORKFLOW))  # fmt: skip
    for index, event in enumerate(events):
        event["timestamp"] = at(index * 50.0)
    return events


@pytest.fixture
def bus() -> EventBus:
    return EventBus(max_buffer=10_000)


@pytest.fixture
def http(bus: EventBus) -> Any:
    with running(create_app(bus=bus)) as server:
        with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as client:
            yield client


def run_known(http: httpx.Client, run: str) -> bool:
    return http.get(f"/api/runs/{run}").status_code == 200


# ---- runs ------------------------------------------------------------------------------


def test_runs_list_summaries(bus: EventBus, http: httpx.Client) -> None:
    bus.publish_many(finished_run("run-ok"))
    bus.publish_many(finished_run("run-bad", fail_last=True))
    assert wait_for(lambda: len(http.get("/api/runs").json()["runs"]) == 2, 10.0)

    runs = {row["correlation_id"]: row for row in http.get("/api/runs").json()["runs"]}
    ok, bad = runs["run-ok"], runs["run-bad"]
    assert ok["status"] == "completed"
    assert ok["workflow_name"] == "Pipeline"
    assert ok["node_count"] == 2
    assert ok["nodes_finished"] == 2
    assert ok["errors"] == 0
    assert ok["duration_ms"] == pytest.approx(len(finished_run("x")) * 50.0 - 50.0, abs=1.0)
    assert bad["status"] == "failed"
    assert bad["errors"] == 1


def test_run_detail_has_events_and_spans(bus: EventBus, http: httpx.Client) -> None:
    events = finished_run("run-1")
    bus.publish_many(events)
    assert wait_for(lambda: run_known(http, "run-1"), 10.0)

    body = http.get("/api/runs/run-1").json()
    spans = {span["span_id"]: span for span in body["spans"]}
    items = [span for span in body["spans"] if span["kind"] == "item"]

    assert [event["event_id"] for event in body["events"]] == [e["event_id"] for e in events]
    assert body["run"]["correlation_id"] == "run-1"
    assert spans[SPAN_WORKFLOW]["kind"] == "workflow"
    assert spans[SPAN_LOAD]["parent_span_id"] == SPAN_WORKFLOW
    assert spans[SPAN_LOAD]["duration_ms"] == 100.0
    assert spans[SPAN_LOAD]["end_ms"] - spans[SPAN_LOAD]["start_ms"] == pytest.approx(100.0)
    assert spans[SPAN_LOAD]["state"] == "completed"
    assert sorted(span["item_index"] for span in items) == [0, 1]
    assert all(span["parent_span_id"] == SPAN_BATCH for span in items)


def test_run_graph_counts_transitions(bus: EventBus, http: httpx.Client) -> None:
    bus.publish_many(finished_run("run-1"))
    assert wait_for(lambda: run_known(http, "run-1"), 10.0)

    graph = http.get("/api/runs/run-1/graph").json()
    edges = {(e["source"], e["action"], e["target"]): e for e in graph["edges"]}
    states = {node["id"]: node["state"] for node in graph["nodes"]}

    assert edges[("load", "again", "load")]["count"] == 2
    assert edges[("load", "default", "batch")]["count"] == 1
    assert edges[("load", "again", "load")]["in_graph"] is True
    assert edges[("load", "skip", "elsewhere")] == {
        "source": "load", "target": "elsewhere", "action": "skip", "count": 1, "in_graph": False,
    }  # fmt: skip
    assert states == {"load": "completed", "batch": "completed"}
    assert graph["root_node_id"] == "Pipeline"


def test_run_unknown_is_404(http: httpx.Client) -> None:
    detail = http.get("/api/runs/no-such-run")
    graph = http.get("/api/runs/no-such-run/graph")
    assert detail.status_code == 404
    assert "no-such-run" in detail.json()["error"]
    assert graph.status_code == 404


@pytest.mark.parametrize("limit", ["0", "-3", "x", str(10**6)])
def test_runs_rejects_bad_limit(http: httpx.Client, limit: str) -> None:
    response = http.get("/api/runs", params={"limit": limit})
    assert response.status_code == 400
    assert "limit" in response.json()["error"]


def test_run_store_forgets_finished_runs_first() -> None:
    store = RunStore(max_runs=2)
    for event in finished_run("finished"):
        store.add(event)
    store.add(make_event("node_started", "a", run="running-1"))
    store.add(make_event("node_started", "b", run="running-2"))

    assert store.get("finished") is None
    assert store.get("running-1") is not None
    assert store.get("running-2") is not None


def test_run_store_drops_duplicate_events() -> None:
    store = RunStore()
    event = make_event("retry_attempted", "a", state="retrying")
    first = store.add(event)
    second = store.add(dict(event))
    record = store.get("run-1")
    assert first is not None
    assert second is None
    assert record is not None
    assert record.retries == 1


# ---- metrics ---------------------------------------------------------------------------


def execution(node_type: str, duration_ms: float, *, state: str = "completed",
              age_s: float = 1.0, run: str = "metrics-run") -> dict[str, Any]:  # fmt: skip
    event = make_event("execution_time", "n", run=run, node_type=node_type, state=state,
                       metrics={"duration_ms": duration_ms})  # fmt: skip
    event["timestamp"] = iso(dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age_s))
    return event


def metric_rows(http: httpx.Client, **params: str) -> dict[str, dict[str, Any]]:
    body = http.get("/api/metrics", params=params).json()
    return {f"{row['node_type']}/{row['kind']}": row for row in body["node_types"]}


def test_metrics_percentiles_and_errors(bus: EventBus, http: httpx.Client) -> None:
    events = [
        execution("Parse", float(ms), state="failed" if ms % 10 == 0 else "completed")
        for ms in range(1, 201)
    ]
    events += [make_event("retry_attempted", "n", run="metrics-run", node_type="Parse",
                          state="retrying") for _ in range(3)]  # fmt: skip
    bus.publish_many(events)
    assert wait_for(lambda: metric_rows(http).get("Parse/node", {}).get("count") == 200, 10.0)

    row = metric_rows(http)["Parse/node"]
    # DDSketch keeps every quantile within 1 % of a recorded value.
    assert row["p50_ms"] == pytest.approx(100.0, rel=0.02)
    assert row["p95_ms"] == pytest.approx(190.0, rel=0.02)
    assert row["p99_ms"] == pytest.approx(198.0, rel=0.02)
    assert row["max_ms"] == 200.0
    assert row["mean_ms"] == pytest.approx(100.5)
    assert row["errors"] == 20
    assert row["error_rate"] == pytest.approx(0.1)
    assert row["retries"] == 3
    assert row["throughput_per_min"] > 0


def test_metrics_window_excludes_old_events(bus: EventBus, http: httpx.Client) -> None:
    bus.publish_many([execution("Old", 5.0, age_s=600.0), execution("Recent", 5.0, age_s=90.0)])
    bus.publish(execution("Marker", 1.0))
    assert wait_for(lambda: "Marker/node" in metric_rows(http), 10.0)

    five_minutes = metric_rows(http)
    one_minute = metric_rows(http, window="60")
    assert "Old/node" not in five_minutes
    assert five_minutes["Recent/node"]["count"] == 1
    assert "Recent/node" not in one_minute
    assert one_minute["Marker/node"]["count"] == 1


@pytest.mark.parametrize("window", ["0", "5", "301", "abc"])
def test_metrics_rejects_bad_window(http: httpx.Client, window: str) -> None:
    response = http.get("/api/metrics", params={"window": window})
    assert response.status_code == 400
    assert "window" in response.json()["error"]


def test_metrics_buckets_by_event_time() -> None:
    metrics = NodeMetrics(window_seconds=60, bucket_seconds=10)
    now = 1_000_000.0
    old = execution("Step", 10.0)
    old["timestamp"] = iso(dt.datetime.fromtimestamp(now - 45, dt.timezone.utc))
    metrics.record(old, "node", now=now)
    rows_now = metrics.snapshot(now=now)["node_types"]
    rows_later = metrics.snapshot(now=now + 30)["node_types"]
    assert [row["count"] for row in rows_now] == [1]
    assert rows_later == []


# ---- event stream ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    "correlation_id", ["run-1", "a/b c", "\u00e9v\u00e9nement", "<img src=x>", "x%2Fy"]
)
def test_event_id_round_trip(correlation_id: str) -> None:
    event = make_event("node_started", run=correlation_id)
    position = parse_event_id(format_event_id(event))
    assert position is not None
    assert position.event_id == event["event_id"]
    assert position.correlation_id == correlation_id
    assert "\n" not in (format_event_id(event) or "")


def test_event_id_plain_uuid_accepted() -> None:
    event_id = str(uuid.uuid4())
    position = parse_event_id(event_id)
    assert position is not None
    assert position.event_id == event_id
    assert position.correlation_id is None
    assert parse_event_id("") is None
    assert parse_event_id("x" * 5000) is None


# ---- slow clients --------------------------------------------------------------------------


def _open_frozen_stream(port: int) -> socket.socket:
    """Open /api/events on a socket with a tiny receive buffer that is then never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(READ_TIMEOUT_S)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def test_frozen_client_disconnected_others_unaffected() -> None:
    bus = EventBus(max_buffer=100)
    # Large events fill the frozen client's socket buffers after a few of them.
    events = [
        make_event("node_started", f"node-{index}", input_snapshot="x" * 32_000)
        for index in range(400)
    ]
    app = create_app(bus=bus, send_timeout=0.5, max_client_queue=1000)
    with running(app) as server:
        frozen = _open_frozen_stream(server.port)
        try:
            with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
                assert wait_for(lambda: http.get("/healthz").json()["subscribers"] == 1, 10.0)
                with http.stream("GET", "/api/events") as response:
                    reader = SSEReader(response)
                    assert wait_for(lambda: http.get("/healthz").json()["subscribers"] == 2, 10.0)
                    bus.publish_many(events)
                    received = [reader.next_message() for _ in range(len(events))]
                    assert wait_for(
                        lambda: http.get("/healthz").json()["subscribers"] == 1, 15.0
                    ), "the frozen client was not disconnected"
        finally:
            frozen.close()

    assert [message["id"] for message in received] == [sse_id(event) for event in events]
    assert all("event" not in message for message in received)


# ---- shutdown ----------------------------------------------------------------------------


def test_sigterm_stops_server_with_open_streams(tmp_path: Path) -> None:
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("KAYGRAPH_OTEL")}
    process = subprocess.Popen(
        [sys.executable, "-m", "kaygraph_otel_dashboard.cli", "dashboard", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    ended: list[str] = []

    def hold_stream() -> None:
        with httpx.Client(timeout=READ_TIMEOUT_S) as http:
            with http.stream("GET", f"http://127.0.0.1:{port}/api/events") as response:
                try:
                    for _ in response.iter_lines():
                        pass
                    ended.append("eof")
                except httpx.HTTPError as error:
                    ended.append(type(error).__name__)

    readers = [threading.Thread(target=hold_stream, daemon=True) for _ in range(3)]
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 20.0)
        assert ready, "the dashboard printed no URL within 20 s"
        process.stdout.readline()
        for reader in readers:
            reader.start()
        assert wait_for(
            lambda: (
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=READ_TIMEOUT_S).json()[
                    "subscribers"
                ]
                == 3
            ),
            10.0,
        )
        process.send_signal(signal.SIGTERM)
        # Bounded: uvicorn's graceful shutdown is 5 s, so 10 s means streams blocked it.
        status = process.wait(timeout=10.0)
        for reader in readers:
            reader.join(10.0)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10.0)
    stderr = process.stderr.read() if process.stderr else ""
    assert status == 0, stderr
    assert "Traceback" not in stderr
    assert ended == ["eof", "eof", "eof"]
    assert not any(reader.is_alive() for reader in readers)


def test_health_counts_runs(bus: EventBus, http: httpx.Client) -> None:
    bus.publish_many(finished_run("run-1"))
    assert wait_for(lambda: http.get("/healthz").json()["runs"] == 1, 10.0)
    assert json.loads(http.get("/healthz").text)["mode"] == "embedded"


def test_run_id_with_slash_found(bus: EventBus, http: httpx.Client) -> None:
    bus.publish_many(finished_run("team/a b"))
    assert wait_for(lambda: http.get("/api/runs/team%2Fa%20b").status_code == 200, 10.0)
    graph = http.get("/api/runs/team%2Fa%20b/graph")
    assert http.get("/api/runs/team%2Fa%20b").json()["run"]["correlation_id"] == "team/a b"
    assert graph.status_code == 200
    assert graph.json()["correlation_id"] == "team/a b"


def test_cli_dashboard_limits_parsed() -> None:
    args = cli.build_parser().parse_args(
        ["dashboard", "--max-body-bytes", "1024", "--history-runs", "0"]
    )
    defaults = cli.build_parser().parse_args(["dashboard"])
    assert args.max_body_bytes == 1024
    assert args.history_runs == 0
    assert defaults.max_body_bytes == 8 * 1024 * 1024
    assert defaults.history_runs == 20


@pytest.mark.parametrize("argv", [["--max-body-bytes", "0"], ["--history-runs", "-1"]])
def test_cli_dashboard_limits_rejected(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["dashboard", *argv])


def test_run_store_evicts_without_scanning_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    checks = 0
    original = RunRecord.finished

    def counted(record: RunRecord) -> bool:
        nonlocal checks
        checks += 1
        return bool(original.fget(record))

    monkeypatch.setattr(RunRecord, "finished", property(counted))
    store = RunStore(max_runs=50)
    for index in range(500):
        store.add(make_event("node_started", "a", run=f"run-{index}"))

    assert len(store) == 50
    assert store.get("run-499") is not None
    assert store.get("run-449") is None
    # One check per applied event; a scan over all runs on each eviction costs 50 each.
    assert checks <= 500


def test_run_store_evicts_first_finished_run() -> None:
    store = RunStore(max_runs=3)
    store.add(make_event("node_started", "a", run="old"))
    store.add(make_event("node_started", "a", run="middle"))
    store.add(make_event("node_completed", "a", run="middle", state="completed"))
    store.add(make_event("node_completed", "a", run="old", state="completed"))
    store.add(make_event("node_started", "b", run="old"))
    store.add(make_event("node_started", "a", run="new-1"))
    store.add(make_event("node_started", "a", run="new-2"))

    # "old" started again, so it is running and "middle" is the only finished run.
    assert store.get("middle") is None
    assert store.get("old") is not None
    assert store.get("new-1") is not None
    assert store.get("new-2") is not None


def test_run_status_follows_node_states() -> None:
    store = RunStore()
    store.add(make_event("node_started", "a", run="r"))
    record = store.get("r")
    assert record is not None
    assert record.status_now == "running"
    store.add(make_event("node_completed", "a", run="r", state="completed"))
    assert record.status_now == "completed"
    store.add(make_event("node_started", "b", run="r"))
    assert record.status_now == "running"
    store.add(make_event("node_failed", "b", run="r", state="failed",
                         error={"type": "E", "message": "m"}))  # fmt: skip
    assert record.status_now == "failed"


def test_feed_yields_during_large_burst() -> None:
    async def progress_seen_by_other_task() -> list[int]:
        bus = EventBus(max_buffer=10)
        feed = EventFeed(bus, RunStore(), NodeMetrics())
        feed.start()
        total = 4 * YIELD_EVERY_EVENTS
        bus.publish_many(
            make_event("node_started", f"n{index}", run="burst") for index in range(total)
        )
        seen = []
        for _ in range(10 * total):
            seen.append(feed.applied)
            if feed.applied >= total:
                break
            await asyncio.sleep(0)
        await feed.stop()
        return seen

    seen = asyncio.run(progress_seen_by_other_task())
    total = 4 * YIELD_EVERY_EVENTS
    assert seen[-1] == total
    assert any(0 < applied < total for applied in seen)
