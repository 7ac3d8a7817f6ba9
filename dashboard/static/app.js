// kaygraph-otel dashboard page: wires the connection, the run model and the views
// (runs, graph, timeline, node details, events, metrics) together, and keeps the
// selected run, node and tab in the URL hash (#run=<correlation_id>&node=<node_id>).

import { Connection } from "./connection.js";
import { EventLog } from "./events.js";
import { GraphView, warmUpLayout } from "./graph.js";
import { MetricsView } from "./metrics.js";
import { Model, nodeBadge, runCounts, runDuration, runName, runStatus } from "./model.js";
import { RunList } from "./runs.js";
import { TimelineView } from "./timeline.js";
import { byId, copyText, fetchJson, formatDuration, html, shorten, text } from "./util.js";

const TICK_MS = 500;
const RATE_WINDOW_MS = 10000;

const model = new Model();
const selection = { runId: null, nodeId: null, follow: true, tab: "events" };
const arrivals = [];
const loadingRuns = new Set();
let renderScheduled = false;

const runList = new RunList((runId) => selectRun(runId, { manual: true }));
const graph = new GraphView((nodeId) => selectNode(nodeId));
const timeline = new TimelineView((nodeId) => selectNode(nodeId));
const eventLog = new EventLog(() => selection.runId);
const metrics = new MetricsView();
runList.onFilter = () => scheduleRender();

const connection = new Connection({
  onSnapshot(events, runs) {
    model.reset();
    for (const run of runs) {
      model.addSummary(run);
    }
    for (const event of events) {
      model.apply(event);
    }
    eventLog.reset(events);
    scheduleRender();
  },
  onEvent(event) {
    if (model.apply(event) === null) {
      return;
    }
    arrivals.push(Date.now());
    eventLog.add(event);
    scheduleRender();
  },
});

// ---- selection and the URL hash ----------------------------------------------------

function readHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  return { run: params.get("run"), node: params.get("node"), tab: params.get("tab") };
}

function hashFor(includeRun) {
  const params = new URLSearchParams();
  if (selection.runId && includeRun) {
    params.set("run", selection.runId);
  }
  if (selection.nodeId) {
    params.set("node", selection.nodeId);
  }
  if (selection.tab !== "events") {
    params.set("tab", selection.tab);
  }
  const hash = params.toString();
  return window.location.pathname + window.location.search + (hash ? "#" + hash : "");
}

// While following the newest run, the hash names no run, so a reload keeps following.
function writeHash() {
  window.history.replaceState(null, "", hashFor(!selection.follow));
}

function applyHash() {
  const wanted = readHash();
  if (wanted.run) {
    selection.follow = false;
    byId("follow-newest").checked = false;
    selectRun(wanted.run, { keepNode: true });
  }
  selection.nodeId = wanted.node || null;
  showTab(wanted.tab === "metrics" ? "metrics" : "events", false);
  scheduleRender();
}

function selectRun(runId, options) {
  const changed = runId !== selection.runId;
  if (options && options.manual) {
    selection.follow = false;
    byId("follow-newest").checked = false;
  }
  selection.runId = runId;
  model.protectedRunId = runId;
  if (changed && !(options && options.keepNode)) {
    selection.nodeId = null;
  }
  if (changed) {
    eventLog.selectedRunChanged();
  }
  loadRun(runId);
  writeHash();
  scheduleRender();
}

function selectNode(nodeId) {
  selection.nodeId = nodeId === selection.nodeId ? null : nodeId;
  writeHash();
  scheduleRender();
}

// Fetches a run's stored events once, for a run known only from its summary or a deep link.
async function loadRun(runId) {
  const run = model.runs.get(runId);
  if (!runId || loadingRuns.has(runId) || (run && run.loaded)) {
    return;
  }
  loadingRuns.add(runId);
  try {
    const body = await fetchJson("/api/runs/" + encodeURIComponent(runId));
    for (const event of Array.isArray(body.events) ? body.events : []) {
      model.apply(event);
    }
    const loaded = model.runs.get(runId);
    if (loaded) {
      loaded.loaded = true;
    }
  } catch (error) {
    console.warn("kaygraph-otel: loading run " + runId + " failed", error);
    byId("graph-note").textContent = "Run " + shorten(runId, 60) + " could not be loaded: " + error.message;
  } finally {
    loadingRuns.delete(runId);
    scheduleRender();
  }
}

function currentRun() {
  if (selection.follow) {
    const newest = model.sortedRuns()[0] || null;
    if (newest && newest.id !== selection.runId) {
      selection.runId = newest.id;
      model.protectedRunId = newest.id;
      selection.nodeId = null;
      eventLog.selectedRunChanged();
      loadRun(newest.id);
    }
    return newest;
  }
  return model.runs.get(selection.runId) || null;
}

// ---- rendering ---------------------------------------------------------------------

function scheduleRender() {
  if (!renderScheduled) {
    renderScheduled = true;
    window.requestAnimationFrame(render);
  }
}

function render() {
  renderScheduled = false;
  const now = Date.now();
  const run = currentRun();
  runList.render(model, run ? run.id : null, now);
  renderRunHeader(run, now);
  graph.render(run, selection.nodeId);
  timeline.render(run, now, selection.nodeId);
  renderNodeDetail(run);
  renderRate(now);
}

function renderRunHeader(run, now) {
  const title = byId("run-title");
  const status = byId("run-status");
  const meta = byId("run-meta");
  if (!run) {
    title.textContent = selection.runId ? "Run " + shorten(selection.runId, 40) : "Workflow";
    status.textContent = "";
    status.hidden = true;
    meta.textContent = selection.runId ? "not found in this dashboard" : "";
    return;
  }
  title.textContent = shorten(runName(run), 80);
  title.title = runName(run);
  const state = runStatus(run);
  status.hidden = false;
  status.textContent = state;
  status.dataset.status = state;
  const counts = runCounts(run);
  meta.textContent = [
    "run " + shorten(run.id, 40),
    formatDuration(runDuration(run, now)),
    counts.finished + " of " + counts.nodes + " nodes finished",
    counts.errors + (counts.errors === 1 ? " error" : " errors"),
    run.retries + (run.retries === 1 ? " retry" : " retries"),
    run.fallbacks + (run.fallbacks === 1 ? " fallback" : " fallbacks"),
  ].join(" \u00b7 ");
  meta.title = run.id;
}

function stateLabel(node) {
  if (!node) {
    return "waiting";
  }
  return node.state === "handled" ? "error handled" : node.state;
}

function detailRow(name, value) {
  return [html("dt", {}, name), html("dd", {}, value)];
}

function renderNodeDetail(run) {
  const panel = byId("node-detail");
  const node = run && selection.nodeId ? run.nodes.get(selection.nodeId) : null;
  const graphNode = run && selection.nodeId ? run.graphNodes.find((n) => n.id === selection.nodeId) : null;
  if (!run || !selection.nodeId || (!node && !graphNode)) {
    panel.hidden = true;
    panel.dataset.nodeId = "";
    return;
  }
  panel.hidden = false;
  panel.dataset.nodeId = selection.nodeId;
  const type = node ? node.type : graphNode.type;
  byId("node-detail-title").textContent = shorten(selection.nodeId, 60);
  byId("node-detail-title").title = selection.nodeId;
  const spans = [...run.spans.values()].filter((span) => span.nodeId === selection.nodeId && span.kind === "node");
  const last = spans.filter((span) => Number.isFinite(span.durationMs)).sort((a, b) => b.end - a.end)[0];
  const stats = metrics.lookup(type, "node");

  const rows = [
    ...detailRow("type", type),
    ...detailRow("state", stateLabel(node)),
    ...detailRow("executions", text(node ? node.executions : 0)),
    ...detailRow("retries", text(node ? node.retries : 0)),
  ];
  if (node && (node.itemsDone || node.itemsFailed)) {
    rows.push(...detailRow("batch items", node.itemsDone + " done, " + node.itemsFailed + " failed"));
  }
  if (node && node.fallbacks) {
    rows.push(...detailRow("fallbacks", text(node.fallbacks)));
  }
  if (last) {
    rows.push(...detailRow("last duration", formatDuration(last.durationMs)));
  }
  if (stats) {
    rows.push(...detailRow(
      "type p50 / p95 / p99",
      [stats.p50_ms, stats.p95_ms, stats.p99_ms].map(formatDuration).join(" / ")
    ));
  }
  if (node && node.lastError) {
    rows.push(...detailRow("last error", node.lastError));
  }
  const badge = node ? nodeBadge(node) : "";
  if (badge) {
    rows.push(...detailRow("summary", badge));
  }
  byId("node-detail-fields").replaceChildren(...rows);
}

function renderRate(now) {
  while (arrivals.length > 0 && arrivals[0] < now - RATE_WINDOW_MS) {
    arrivals.shift();
  }
  const rate = arrivals.length / (RATE_WINDOW_MS / 1000);
  const digits = rate < 10 ? 1 : 0;
  byId("event-rate").textContent = rate > 0 ? rate.toFixed(digits) + " events/s" : "";
}

// ---- controls ----------------------------------------------------------------------

function showTab(tab, updateHash) {
  selection.tab = tab;
  for (const button of document.querySelectorAll(".tabs [role=tab]")) {
    const active = button.dataset.tab === tab;
    button.setAttribute("aria-selected", active ? "true" : "false");
    byId(button.getAttribute("aria-controls")).hidden = !active;
  }
  if (updateHash) {
    writeHash();
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("follow-newest").addEventListener("change", (event) => {
    selection.follow = event.target.checked;
    writeHash();
    scheduleRender();
  });
  for (const button of document.querySelectorAll(".tabs [role=tab]")) {
    button.addEventListener("click", () => showTab(button.dataset.tab, true));
  }
  byId("node-detail-close").addEventListener("click", () => selectNode(selection.nodeId));
  byId("copy-link").addEventListener("click", async () => {
    const status = byId("copy-link-status");
    try {
      // The copied link leaves out ?token=, so that pasting it never shares the token.
      const link = new URL(hashFor(true), window.location.origin);
      link.search = "";
      await copyText(link.href);
      status.textContent = "link copied";
    } catch (error) {
      status.textContent = "copy failed";
    }
  });
  window.addEventListener("hashchange", applyHash);
  warmUpLayout();
  applyHash();
  connection.start();
  metrics.start();
  window.setInterval(scheduleRender, TICK_MS);
});
