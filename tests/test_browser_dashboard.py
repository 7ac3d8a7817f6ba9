"""The dashboard in a real browser: Playwright for Python driving Debian's Chromium.

Each test serves the dashboard on a free loopback port, opens it in headless
Chromium (``/usr/bin/chromium``; Playwright's own browser download is never
used) and checks what a person would see, through the page's DOM. Workflows
are real PocketFlow or (fake) KayGraph workflows instrumented with
kaygraph-otel and exported through the in-process bus. Every wait is bounded,
and each test saves a screenshot into ``test-artifacts/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pocketflow
import pytest

import kaygraph_otel
from kaygraph_otel_dashboard.app import create_app
from kaygraph_otel_dashboard.server import RunningServer, start_in_thread
from kaygraph_otel_exporters.bus import EventBus
from kaygraph_otel_exporters.setup import configure
from tests.helpers import free_port, wait_for
from tests.test_dashboard import READ_TIMEOUT_S, make_event, running

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed; run `make install`"
)

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WAIT_MS = 20_000
HOSTILE_ID = "<img src=x onerror=window.__xss=1>"
HOSTILE_TYPE = "<svg onload=window.__xss=2>"
HOSTILE_MESSAGE = "<script>window.__xss=3</script>"
HOSTILE_RUN = "<b onmouseover=window.__xss=4>run</b>"

NODE_STATES_JS = (
    "() => Object.fromEntries([...document.querySelectorAll('#graph g.node')]"
    ".map((g) => [g.dataset.nodeId, g.dataset.state]))"
)
# Records every state each graph node shows, polling every 20 ms, in window.__states.
RECORD_STATES_JS = """() => {
  window.__states = {};
  window.setInterval(() => {
    for (const g of document.querySelectorAll('#graph g.node')) {
      const seen = (window.__states[g.dataset.nodeId] ||= []);
      if (seen[seen.length - 1] !== g.dataset.state) {
        seen.push(g.dataset.state);
      }
    }
  }, 20);
}"""


@dataclass
class Tab:
    """A browser page and the uncaught script errors it reported."""

    page: Any
    errors: list[str] = field(default_factory=list)

    def states(self) -> dict[str, str]:
        return dict(self.page.evaluate(NODE_STATES_JS))

    def wait(self, expression: str, arg: Any = None) -> None:
        self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)

    def wait_live(self) -> None:
        self.wait("() => document.getElementById('connection-status').dataset.state === 'live'")

    def rows(self) -> list[dict[str, str]]:
        return list(
            self.page.evaluate(
                "() => [...document.querySelectorAll('#event-log tr')].map((r) => ({...r.dataset}))"
            )
        )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed; install it with apt-get install chromium")
    with playwright_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=LAUNCH_ARGS, timeout=60_000
        )
        try:
            yield launched
        finally:
            launched.close()


@contextlib.contextmanager
def open_tab(browser: Any, name: str, **options: Any) -> Iterator[Tab]:
    """Open a page in a new browser context; save a screenshot named ``name`` when done."""
    context = browser.new_context(viewport={"width": 1400, "height": 1050}, **options)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    tab = Tab(page)
    page.on("pageerror", lambda error: tab.errors.append(str(error)))
    try:
        yield tab
    finally:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        finally:
            context.close()


@pytest.fixture
def tab(browser: Any, request: pytest.FixtureRequest) -> Iterator[Tab]:
    with open_tab(browser, request.node.name) as opened:
        yield opened


@pytest.fixture
def bus() -> EventBus:
    return EventBus(max_buffer=10_000)


@pytest.fixture
def server(bus: EventBus) -> Iterator[RunningServer]:
    with running(create_app(bus=bus)) as started:
        yield started


def in_order(seen: list[str], expected: list[str]) -> bool:
    """Return whether ``expected`` occurs in ``seen`` in this order, gaps allowed."""
    position = 0
    for state in seen:
        if position < len(expected) and state == expected[position]:
            position += 1
    return position == len(expected)


# ---- a real PocketFlow workflow -------------------------------------------------------------


def build_workflow() -> pocketflow.AsyncFlow:
    """Fetch loops once through Decide, Items runs 4 items concurrently, Flaky fails."""

    class Fetch(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            time.sleep(0.4)

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
            shared["loops"] = shared.get("loops", 0) + 1
            return "default"

    class Decide(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            time.sleep(0.3)

        def post(self, shared: dict[str, Any], prep_res: Any, exec_res: Any) -> str:
            return "again" if shared["loops"] < 2 else "done"

    class Items(pocketflow.AsyncParallelBatchNode):
        async def prep_async(self, shared: dict[str, Any]) -> list[float]:
            return [0.4, 0.6, 0.5, 0.7]

        async def exec_async(self, delay: float) -> float:
            await asyncio.sleep(delay)
            return delay

    class Slow(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            time.sleep(1.0)

    class Check(pocketflow.Node):
        def exec(self, prep_res: Any) -> None:
            time.sleep(0.4)

    class Flaky(pocketflow.Node):
        def __init__(self) -> None:
            super().__init__(max_retries=2, wait=0.6)

        def exec(self, prep_res: Any) -> None:
            time.sleep(0.3)
            raise RuntimeError("upstream returned 503")

    fetch, decide, items, slow, flaky = Fetch(), Decide(), Items(), Slow(), Flaky()
    nested = pocketflow.Flow(start=Check())
    fetch >> decide
    decide - "again" >> fetch
    decide - "done" >> items
    items >> slow >> nested >> flaky
    return pocketflow.AsyncFlow(start=fetch)


def run_in_thread(target: Any) -> tuple[threading.Thread, list[BaseException]]:
    failures: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as error:  # the workflow is expected to fail
            failures.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, failures


def test_workflow_states_timeline_and_metrics(
    bus: EventBus, server: RunningServer, tab: Tab, browser: Any
) -> None:
    provider = configure(bus=bus, set_global=False, schedule_delay_millis=50)
    kaygraph_otel.instrument_pocketflow(tracer_provider=provider)
    try:
        tab.page.goto(server.url + "/")
        tab.wait_live()
        tab.page.evaluate(RECORD_STATES_JS)

        def workflow() -> None:
            with kaygraph_otel.run_context(workflow_name="ingest_reports"):
                asyncio.run(build_workflow().run_async({}))

        thread, failures = run_in_thread(workflow)
        thread.join(60.0)
        provider.force_flush()
        tab.wait("() => document.querySelector('#runs li')?.dataset.status === 'failed'")
        tab.wait(
            "() => document.querySelector('#graph g.node[data-node-id=\"Flaky\"]')"
            "?.dataset.state === 'failed'"
        )
        history = tab.page.evaluate("() => window.__states")
    finally:
        kaygraph_otel.uninstrument_pocketflow()
        provider.shutdown()

    assert not thread.is_alive()
    assert [type(error).__name__ for error in failures] == ["RuntimeError"]
    assert tab.states() == {
        "Fetch": "completed", "Decide": "completed", "Items": "completed", "Slow": "completed",
        "Flow": "completed", "Check": "completed", "Flaky": "failed",
    }  # fmt: skip
    for node in ("Fetch", "Decide", "Items", "Slow", "Flow", "Check"):
        assert in_order(history[node], ["running", "completed"]), (node, history[node])
    for node in ("Slow", "Flow", "Check"):
        assert in_order(history[node], ["waiting", "running", "completed"]), (node, history[node])
    # Flaky waits 0.6 s between attempts, longer than the live processor's 50 ms
    # progress interval, so its retry arrives while it runs.
    assert in_order(history["Flaky"], ["waiting", "running", "retrying", "failed"]), history
    flaky_node = "#graph g.node[data-node-id='Flaky']"
    assert tab.page.get_attribute(flaky_node, "data-retries") == "1"
    assert tab.page.text_content(f"{flaky_node} .node-badge") == "1 retry"

    edges = tab.page.evaluate(
        "() => [...document.querySelectorAll('#graph g.edge')]"
        ".map((g) => [g.dataset.source, g.dataset.action, g.dataset.target, g.dataset.count])"
    )
    assert ["Fetch", "default", "Decide", "2"] in edges
    assert ["Decide", "again", "Fetch", "1"] in edges
    assert ["Decide", "done", "Items", "1"] in edges
    run_item = tab.page.evaluate("() => ({...document.querySelector('#runs li').dataset})")
    assert run_item["errors"] == "1"

    # The timeline: one row per span, batch items on their own rows.
    spans = tab.page.evaluate(
        "() => [...document.querySelectorAll('#timeline .span-row')].map((r) => ({...r.dataset}))"
    )
    kinds = [span["kind"] for span in spans]
    by_node = {span["nodeId"]: span for span in spans if span["kind"] != "item"}
    assert len(spans) == 14
    assert kinds.count("workflow") == 1
    assert sorted(span["itemIndex"] for span in spans if span["kind"] == "item") == list("0123")
    assert by_node["Flaky"]["state"] == "failed"
    assert spans[0]["state"] == "failed"
    with httpx.Client(base_url=server.url, timeout=READ_TIMEOUT_S) as http:
        run_id = http.get("/api/runs").json()["runs"][0]["correlation_id"]
        items = [s for s in http.get(f"/api/runs/{run_id}").json()["spans"] if s["kind"] == "item"]
    # The four items ran at the same time: every start precedes every end.
    assert max(item["start_ms"] for item in items) < min(item["end_ms"] for item in items)

    # Metrics: percentiles per node type, computed on the server.
    tab.page.click("#tab-metrics")
    tab.wait("() => document.querySelector('#metrics-body tr[data-node-type=\"Flaky\"]') !== null")
    slow = tab.page.inner_text("#metrics-body tr[data-node-type='Slow'] td[data-metric='p50']")
    flaky = tab.page.evaluate(
        "() => [...document.querySelector('#metrics-body tr[data-node-type=\"Flaky\"]').cells]"
        ".map((c) => c.textContent)"
    )
    assert slow.endswith(" s")
    assert 0.95 <= float(slow.split()[0]) <= 1.5
    assert flaky[7] == "1"
    assert flaky[8] == "100 %"
    assert flaky[9] == "1"

    # A click on a node shows its details and puts it in the URL.
    tab.page.click("#tab-events")
    tab.page.click("#graph g.node[data-node-id='Slow']")
    tab.wait("() => document.getElementById('node-detail').dataset.nodeId === 'Slow'")
    assert "node=Slow" in tab.page.url
    assert tab.errors == []

    ARTIFACTS.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(ARTIFACTS / "dashboard-workflow.png"), full_page=True)
    with open_tab(browser, "dashboard-workflow-dark", color_scheme="dark") as dark:
        dark.page.goto(server.url + "/")
        dark.wait("() => document.querySelectorAll('#timeline .span-row').length === 14")
        background = dark.page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in background[4:-1].split(","))
    assert max(red, green, blue) < 60, background


# ---- reconnects -------------------------------------------------------------------------------


def synthetic_run(run: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the first and second half of a three-node run."""
    graph = {
        "nodes": [
            {"id": "load", "type": "LoadNode", "parent": "Flow", "start": True},
            {"id": "parse", "type": "ParseNode", "parent": "Flow"},
            {"id": "store", "type": "StoreNode", "parent": "Flow"},
        ],
        "edges": [
            {"source": "load", "target": "parse", "action": "default"},
            {"source": "parse", "target": "store", "action": "default"},
        ],
    }
    first = [
        make_event("workflow_started", "Flow", run=run, node_type="Flow",
                   workflow_name="three_steps", graph=graph),
        make_event("node_started", "load", run=run),
        make_event("node_completed", "load", run=run, state="completed"),
        make_event("node_started", "parse", run=run, node_type="ParseNode"),
    ]  # fmt: skip
    second = [
        make_event("node_completed", "parse", run=run, node_type="ParseNode", state="completed"),
        make_event("node_started", "store", run=run, node_type="StoreNode"),
        make_event("node_completed", "store", run=run, node_type="StoreNode", state="completed"),
        make_event("workflow_completed", "Flow", run=run, node_type="Flow", state="completed"),
    ]
    return first, second


def test_reconnect_after_restart_misses_nothing(bus: EventBus, tab: Tab) -> None:
    port = free_port()
    first, second = synthetic_run("restart-run")
    server = start_in_thread(create_app(bus=bus), "127.0.0.1", port)
    try:
        tab.page.goto(server.url + "/")
        tab.wait_live()
        bus.publish_many(first)
        tab.wait("(n) => document.querySelectorAll('#event-log tr').length === n", len(first))
    finally:
        server.stop()
    tab.wait("() => document.getElementById('connection-status').dataset.state !== 'live'")

    # Published while no server runs: the bus buffers them for the replay.
    bus.publish_many(second)
    server = start_in_thread(create_app(bus=bus), "127.0.0.1", port)
    try:
        total = len(first) + len(second)
        tab.wait("(n) => document.querySelectorAll('#event-log tr').length === n", total)
        tab.wait_live()
        status = tab.page.evaluate(
            "() => ({...document.getElementById('connection-status').dataset})"
        )
        rows = tab.rows()
        states = tab.states()
    finally:
        server.stop()

    assert [row["eventId"] for row in reversed(rows)] == [e["event_id"] for e in first + second]
    # One snapshot at page load: the missed events came from the replay, not a reload.
    assert status["snapshots"] == "1"
    assert int(status["reconnects"]) >= 1
    assert states == {"load": "completed", "parse": "completed", "store": "completed"}
    assert tab.errors == []


# ---- hostile strings ------------------------------------------------------------------------


def hostile_graph() -> Any:
    import kaygraph

    class Prepare(kaygraph.Node):
        def exec(self, prep_res: Any) -> str:
            return "ready"

    def failing_exec(self: Any, prep_res: Any) -> None:
        raise ValueError(HOSTILE_MESSAGE)

    def swallow(self: Any, shared: dict[str, Any], error: Exception) -> bool:
        return True

    hostile_class = type(
        HOSTILE_TYPE, (kaygraph.Node,), {"exec": failing_exec, "on_error": swallow}
    )
    prepare = Prepare(node_id="prepare")
    prepare >> hostile_class(node_id=HOSTILE_ID)
    return kaygraph.Graph(start=prepare)


def test_hostile_names_rendered_as_text(bus: EventBus, server: RunningServer, tab: Tab) -> None:
    provider = configure(bus=bus, set_global=False, schedule_delay_millis=50)
    kaygraph_otel.instrument_kaygraph(tracer_provider=provider)
    try:
        tab.page.goto(server.url + "/")
        tab.wait_live()
        with kaygraph_otel.run_context(correlation_id=HOSTILE_RUN, workflow_name=HOSTILE_TYPE):
            hostile_graph().run({})
        provider.force_flush()
    finally:
        kaygraph_otel.uninstrument_kaygraph()
        provider.shutdown()

    node_selector = "#graph g.node[data-node-id='prepare']"
    tab.wait(
        "(id) => [...document.querySelectorAll('#graph g.node')]"
        ".some((g) => g.dataset.nodeId === id && g.dataset.state === 'handled')",
        HOSTILE_ID,
    )
    tab.page.click("#tab-metrics")
    tab.wait(
        "(type) => [...document.querySelectorAll('#metrics-body tr')]"
        ".some((r) => r.dataset.nodeType === type)",
        HOSTILE_TYPE,
    )
    nodes = tab.page.locator("#graph g.node")
    for index in range(nodes.count()):
        if nodes.nth(index).get_attribute("data-node-id") == HOSTILE_ID:
            nodes.nth(index).click()
    tab.wait("(id) => document.getElementById('node-detail').dataset.nodeId === id", HOSTILE_ID)
    tab.page.click("#tab-events")
    tab.page.click("#event-log tr[data-event-name='node_failed']")

    texts = tab.page.evaluate(
        """() => ({
          titles: [...document.querySelectorAll('#graph g.node > title')].map((t) => t.textContent),
          labels: [...document.querySelectorAll('#graph text')].map((t) => t.textContent),
          timeline: document.getElementById('timeline').textContent,
          log: document.getElementById('event-log').textContent,
          json: document.getElementById('event-json').textContent,
          metrics: document.getElementById('metrics-body').textContent,
          detail: document.getElementById('node-detail-title').textContent,
          runs: document.getElementById('runs').textContent,
          runTitle: document.getElementById('run-title').textContent,
          injected: document.querySelectorAll('img, script:not([src]), svg svg, b').length,
          xss: typeof window.__xss,
        })"""
    )
    assert tab.page.locator(node_selector).get_attribute("data-state") == "completed"
    assert any(title.startswith(HOSTILE_ID) for title in texts["titles"])
    assert any(label.startswith("<img src=x onerror=") for label in texts["labels"])
    assert "<img src=x onerror=" in texts["timeline"]
    assert HOSTILE_ID in texts["log"]
    assert HOSTILE_MESSAGE in texts["log"]
    assert HOSTILE_MESSAGE in texts["json"]
    assert HOSTILE_TYPE in texts["metrics"]
    assert texts["detail"] == HOSTILE_ID
    assert HOSTILE_TYPE in texts["runs"]
    assert texts["runTitle"] == HOSTILE_TYPE
    assert texts["injected"] == 0
    assert texts["xss"] == "undefined"

    # The same page opened from a deep link to the hostile run and node.
    link = f"{server.url}/#run={quote(HOSTILE_RUN, safe='')}&node={quote(HOSTILE_ID, safe='')}"
    tab.page.goto("about:blank")
    tab.page.goto(link)
    tab.wait("(id) => document.getElementById('node-detail').dataset.nodeId === id", HOSTILE_ID)
    assert tab.page.evaluate("() => typeof window.__xss") == "undefined"
    assert tab.page.inner_text("#node-detail-title") == HOSTILE_ID
    assert tab.errors == []


# ---- events view ------------------------------------------------------------------------------


def test_events_filter_pause_and_copy(bus: EventBus, server: RunningServer, browser: Any) -> None:
    first_a, second_a = synthetic_run("run-a")
    first_b, _ = synthetic_run("run-b")
    error = {"type": "IOError", "message": "needle-42"}
    needle = make_event(
        "retry_attempted",
        "parse",
        run="run-a",
        node_type="ParseNode",
        state="retrying",
        error=error,
    )
    bus.publish_many(first_a + [needle] + first_b)
    total = len(first_a) + 1 + len(first_b)
    permissions = ["clipboard-read", "clipboard-write"]
    with open_tab(browser, "test_events_filter_pause_and_copy", permissions=permissions) as tab:
        check_filters_pause_and_copy(
            tab, bus, server.url, total, first_a, second_a, first_b, needle
        )


def check_filters_pause_and_copy(
    tab: Tab,
    bus: EventBus,
    url: str,
    total: int,
    first_a: list[dict[str, Any]],
    second_a: list[dict[str, Any]],
    first_b: list[dict[str, Any]],
    needle: dict[str, Any],
) -> None:
    page = tab.page
    page.goto(url + "/")
    tab.wait_live()
    tab.wait("(n) => document.querySelectorAll('#event-log tr').length === n", total)

    page.fill("#filter-node", "pars")
    node_rows = tab.rows()
    page.fill("#filter-node", "")
    page.select_option("#filter-type", "type:error")
    error_rows = tab.rows()
    page.select_option("#filter-type", "")
    page.fill("#filter-text", "needle-42")
    text_rows = tab.rows()
    page.fill("#filter-text", "")
    page.click("#runs li[data-run-id='run-b']")
    page.select_option("#filter-run", "selected")
    run_rows = tab.rows()

    assert {row["nodeId"] for row in node_rows} == {"parse"}
    assert len(node_rows) == 3
    assert [row["eventId"] for row in error_rows] == [needle["event_id"]]
    assert [row["eventId"] for row in text_rows] == [needle["event_id"]]
    assert {row["runId"] for row in run_rows} == {"run-b"}
    assert len(run_rows) == len(first_b)

    # Filters apply to events that arrive later too.
    bus.publish_many(second_a)
    late_b = make_event("node_completed", "parse", run="run-b", state="completed")
    bus.publish(late_b)
    tab.wait("(n) => document.querySelectorAll('#event-log tr').length === n", len(first_b) + 1)
    assert tab.rows()[0]["eventId"] == late_b["event_id"]

    # Pausing keeps buffering and counts what arrived.
    page.select_option("#filter-run", "")
    shown = len(tab.rows())
    page.click("#pause")
    paused_events = [make_event("node_started", f"paused-{i}", run="run-b") for i in range(3)]
    bus.publish_many(paused_events)
    tab.wait("() => document.getElementById('paused-count').dataset.count === '3'")
    assert len(tab.rows()) == shown
    assert "3 new events" in page.inner_text("#paused-count")
    page.click("#pause")
    tab.wait("(n) => document.querySelectorAll('#event-log tr').length === n", shown + 3)
    assert [row["eventId"] for row in tab.rows()[:3]] == [
        e["event_id"] for e in paused_events[::-1]
    ]

    # Copy through the Clipboard API.
    page.click(f"#event-log tr[data-event-id='{needle['event_id']}'] button.copy")
    tab.wait("() => document.getElementById('copy-status').textContent === 'copied'")
    copied = json.loads(page.evaluate("() => navigator.clipboard.readText()"))
    method = page.get_attribute("#copy-status", "data-method")
    assert copied == needle
    assert method == "clipboard"
    assert tab.errors == []


def test_events_copy_fallback_without_clipboard_api(
    bus: EventBus, server: RunningServer, tab: Tab
) -> None:
    event = make_event("node_started", "load", run="run-copy")
    bus.publish(event)
    # A page without the Clipboard API, as on plain http:// pages other than localhost.
    tab.page.add_init_script(
        "Object.defineProperty(Navigator.prototype, 'clipboard', { get: () => undefined })"
    )
    tab.page.goto(server.url + "/")
    tab.wait_live()
    tab.page.click(f"#event-log tr[data-event-id='{event['event_id']}'] button.copy")
    tab.wait("() => document.getElementById('copy-status').textContent !== ''")
    status = tab.page.inner_text("#copy-status")
    method = tab.page.get_attribute("#copy-status", "data-method")
    shown = json.loads(tab.page.inner_text("#event-json"))
    assert status == "copied"
    assert method == "fallback"
    assert shown == event
    assert tab.errors == []


# ---- deep links -------------------------------------------------------------------------------


def test_deep_link_selects_run_and_node(bus: EventBus, server: RunningServer, tab: Tab) -> None:
    older, _ = synthetic_run("run-old")
    newer, _ = synthetic_run("run-new")
    bus.publish_many(older)
    bus.publish_many(newer)
    assert wait_for(lambda: len(httpx.get(server.url + "/api/runs").json()["runs"]) == 2, 10.0)

    tab.page.goto(server.url + "/#run=run-old&node=parse")
    tab.wait("() => document.getElementById('node-detail').dataset.nodeId === 'parse'")
    tab.wait("() => document.getElementById('graph').dataset.runId === 'run-old'")
    selected = tab.page.evaluate("() => document.querySelector('#runs li.selected').dataset.runId")
    follow = tab.page.is_checked("#follow-newest")
    detail = tab.page.inner_text("#node-detail-fields")

    tab.page.click("#runs li[data-run-id='run-new']")
    tab.wait("() => document.getElementById('graph').dataset.runId === 'run-new'")
    url = tab.page.url

    assert selected == "run-old"
    assert follow is False
    assert "ParseNode" in detail
    assert "running" in detail
    assert url.endswith("#run=run-new")
    assert tab.errors == []
