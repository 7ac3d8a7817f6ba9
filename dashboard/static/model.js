// The page's model of workflow runs, built from schema events.
//
// A node's display state follows its events: node_started, node_preparing and
// node_executing mean running, retry_attempted retrying, node_completed
// completed, and node_failed failed, or handled when the node's on_error
// suppressed the error. Graph nodes without events are waiting. Batch item
// events (data.item_index set) count items and never finish the batch node.
//
// The live span processor sends the events of an open span at its progress
// interval, so a retry shows as "retrying" while the node waits for its next attempt.

import { parseTime, text } from "./util.js";

const MAX_RUNS = 300;
const MAX_SEEN_IDS = 100000;

const STATE_BY_EVENT = {
  node_started: "running",
  node_preparing: "running",
  node_executing: "running",
  node_completed: "completed",
  retry_attempted: "retrying",
};
const FINISHED = new Set(["completed", "failed", "handled"]);

export function edgeKey(source, action, target) {
  return source + "\u0000" + action + "\u0000" + target;
}

function isHandled(data) {
  return data.state === "handled" || (data.error && data.error.handled === true);
}

function errorText(error) {
  if (!error || typeof error !== "object") {
    return "";
  }
  return [text(error.type), text(error.message)].filter(Boolean).join(": ");
}

function newRun(id, time, arrival) {
  return {
    id: id,
    workflowName: "",
    workflowId: "",
    rootNodeId: null,
    status: "running",
    workflowFinished: false,
    graphNodes: [],
    graphEdges: [],
    graphIds: new Set(),
    graphTruncated: false,
    graphVersion: 0,
    nodes: new Map(),
    spans: new Map(),
    transitions: new Map(),
    startTime: NaN,
    endTime: NaN,
    firstTime: Number.isFinite(time) ? time : Date.now(),
    lastTime: Number.isFinite(time) ? time : Date.now(),
    arrival: arrival,
    errors: 0,
    handled: 0,
    retries: 0,
    fallbacks: 0,
    eventCount: 0,
    version: 0,
    summary: null,
    loaded: false,
  };
}

function newNode(id, type) {
  return {
    id: id,
    type: type || "",
    state: "waiting",
    stateTime: -Infinity,
    executions: 0,
    retries: 0,
    fallbacks: 0,
    itemsDone: 0,
    itemsFailed: 0,
    lastError: "",
  };
}

export class Model {
  constructor() {
    this.runs = new Map();
    this.seen = new Set();
    this.seenOrder = [];
    this.arrival = 0;
    this.protectedRunId = null;
  }

  reset() {
    this.runs.clear();
    this.seen.clear();
    this.seenOrder = [];
  }

  // Applies one event; returns its run, or null for a duplicate or invalid event.
  apply(event) {
    if (!event || typeof event !== "object" || typeof event.event_name !== "string") {
      return null;
    }
    const eventId = text(event.event_id);
    if (eventId) {
      if (this.seen.has(eventId)) {
        return null;
      }
      this.remember(eventId);
    }

    const data = event.data && typeof event.data === "object" ? event.data : {};
    const time = parseTime(event.timestamp);
    const run = this.getRun(text(event.correlation_id), time);
    run.eventCount += 1;
    run.version += 1;
    if (Number.isFinite(time)) {
      run.firstTime = Math.min(run.firstTime, time);
      run.lastTime = Math.max(run.lastTime, time);
    }

    if (data.graph) {
      mergeGraph(run, data.graph, event);
    }
    const workflow = isWorkflowEvent(run, event);
    applySpan(run, event, data, time, workflow);
    if (workflow) {
      applyWorkflowEvent(run, event, data, time);
    } else {
      applyNodeEvent(run, event, data, time);
    }
    return run;
  }

  remember(eventId) {
    this.seen.add(eventId);
    this.seenOrder.push(eventId);
    if (this.seenOrder.length > MAX_SEEN_IDS) {
      this.seen.delete(this.seenOrder.shift());
    }
  }

  getRun(runId, time) {
    let run = this.runs.get(runId);
    if (!run) {
      run = newRun(runId, time, ++this.arrival);
      this.runs.set(runId, run);
      this.trim();
    }
    return run;
  }

  // Adds or refreshes a run known only from GET /api/runs; its events load on demand.
  addSummary(summary) {
    if (!summary || typeof summary.correlation_id !== "string") {
      return;
    }
    const run = this.getRun(summary.correlation_id, Number(summary.started_at));
    run.summary = summary;
    if (!run.workflowName) {
      run.workflowName = text(summary.workflow_name);
    }
  }

  trim() {
    if (this.runs.size <= MAX_RUNS) {
      return;
    }
    const victims = this.sortedRuns()
      .reverse()
      .filter((run) => run.id !== this.protectedRunId);
    const victim = victims.find((run) => runStatus(run) !== "running") || victims[0];
    if (victim) {
      this.runs.delete(victim.id);
    }
  }

  // Newest first: by the time of the run's start, then by arrival.
  sortedRuns() {
    return [...this.runs.values()].sort(
      (a, b) => runStart(b) - runStart(a) || b.arrival - a.arrival
    );
  }
}

function isWorkflowEvent(run, event) {
  if (event.event_name.startsWith("workflow_")) {
    return true;
  }
  // The workflow span's own metric events carry the workflow's id as node_id.
  return event.node_id === run.rootNodeId && !run.graphIds.has(event.node_id);
}

function mergeGraph(run, graph, event) {
  if (typeof graph !== "object") {
    return;
  }
  for (const node of Array.isArray(graph.nodes) ? graph.nodes : []) {
    if (!node || typeof node.id !== "string" || run.graphIds.has(node.id)) {
      continue;
    }
    run.graphIds.add(node.id);
    run.graphNodes.push({
      id: node.id,
      type: text(node.type),
      parent: typeof node.parent === "string" ? node.parent : null,
      isGraph: node.is_graph === true,
      start: node.start === true,
    });
  }
  const known = new Set(run.graphEdges.map((edge) => edgeKey(edge.source, edge.action, edge.target)));
  for (const edge of Array.isArray(graph.edges) ? graph.edges : []) {
    if (!edge || typeof edge.source !== "string" || typeof edge.target !== "string") {
      continue;
    }
    const entry = { source: edge.source, target: edge.target, action: text(edge.action) };
    const key = edgeKey(entry.source, entry.action, entry.target);
    if (!known.has(key)) {
      known.add(key);
      run.graphEdges.push(entry);
    }
  }
  if (graph.truncated === true) {
    run.graphTruncated = true;
  }
  if (event.event_name === "workflow_started" && !run.rootNodeId) {
    run.rootNodeId = text(event.node_id);
  }
  run.graphVersion += 1;
}

function applyWorkflowEvent(run, event, data, time) {
  if (event.event_name === "workflow_started") {
    run.rootNodeId = run.rootNodeId || text(event.node_id);
    run.workflowName = text(data.workflow_name) || text(event.node_id);
    run.workflowId = text(event.workflow_id);
    if (Number.isFinite(time)) {
      run.startTime = Number.isFinite(run.startTime) ? Math.min(run.startTime, time) : time;
    }
  } else if (event.event_name === "workflow_completed" || event.event_name === "workflow_failed") {
    run.status = event.event_name === "workflow_completed" ? "completed" : "failed";
    run.workflowFinished = true;
    run.endTime = time;
  }
}

function applyNodeEvent(run, event, data, time) {
  const name = event.event_name;
  const nodeId = text(event.node_id);
  if (name === "transition") {
    const key = edgeKey(
      text(data.from_node_id) || nodeId,
      text(data.action) || "default",
      text(data.next_node_id)
    );
    run.transitions.set(key, (run.transitions.get(key) || 0) + 1);
    return;
  }
  let node = run.nodes.get(nodeId);
  if (!node) {
    node = newNode(nodeId, text(event.node_type));
    run.nodes.set(nodeId, node);
  }
  const isItem = Number.isInteger(data.item_index);

  if (name === "retry_attempted") {
    node.retries += 1;
    run.retries += 1;
  } else if (name === "fallback_triggered") {
    node.fallbacks += 1;
    run.fallbacks += 1;
  } else if (name === "node_started" && !isItem) {
    node.executions += 1;
  }
  if (data.error && typeof data.error === "object") {
    node.lastError = errorText(data.error);
  }
  if (name === "node_failed") {
    if (isHandled(data)) {
      run.handled += 1;
    } else {
      run.errors += 1;
    }
  }

  if (isItem) {
    if (name === "node_completed") {
      node.itemsDone += 1;
    } else if (name === "node_failed") {
      node.itemsFailed += 1;
    }
    if (node.state === "waiting") {
      setNodeState(node, "running", time);
    }
    return;
  }
  if ((name === "node_completed" || name === "node_failed") && data.metrics) {
    applyCounts(run, node, data.metrics);
  }
  let state = STATE_BY_EVENT[name];
  if (name === "node_failed") {
    state = isHandled(data) ? "handled" : "failed";
  }
  if (state) {
    setNodeState(node, state, time);
  }
}

// A node's end event carries the node's full counts. Item, retry and fallback
// events stop at per-node caps, so the counts replace what those events added up to.
function applyCounts(run, node, metrics) {
  const count = (key) => (Number.isFinite(metrics[key]) ? metrics[key] : null);
  const succeeded = count("items_succeeded");
  const failed = count("items_failed");
  if (succeeded !== null) {
    node.itemsDone = succeeded;
  }
  if (failed !== null) {
    node.itemsFailed = failed;
  }
  const retries = count("retries");
  if (retries !== null && retries > node.retries) {
    run.retries += retries - node.retries;
    node.retries = retries;
  }
  const fallbacks = count("fallbacks");
  if (fallbacks !== null && fallbacks > node.fallbacks) {
    run.fallbacks += fallbacks - node.fallbacks;
    node.fallbacks = fallbacks;
  }
}

// A node's end can be exported in a later batch than a newer start, so an older
// event never overwrites a newer state.
function setNodeState(node, state, time) {
  const when = Number.isFinite(time) ? time : Date.now();
  if (when >= node.stateTime) {
    node.state = state;
    node.stateTime = when;
  }
}

function spanKind(workflow, itemIndex) {
  if (workflow) {
    return "workflow";
  }
  return itemIndex !== null ? "item" : "node";
}

function applySpan(run, event, data, time, workflow) {
  const spanId = data.span_id;
  if (typeof spanId !== "string" || !spanId) {
    return;
  }
  const name = event.event_name;
  let span = run.spans.get(spanId);
  if (!span) {
    const index = Number.isInteger(data.item_index) ? data.item_index : null;
    span = {
      id: spanId,
      parentId: typeof data.parent_span_id === "string" ? data.parent_span_id : null,
      nodeId: text(event.node_id),
      nodeType: text(event.node_type),
      kind: spanKind(workflow, index),
      itemIndex: index,
      start: NaN,
      startSeen: false,
      end: NaN,
      durationMs: NaN,
      state: "running",
      retries: 0,
      error: "",
    };
    run.spans.set(spanId, span);
  }
  if (name === "node_started" || name === "workflow_started") {
    span.start = time;
    span.startSeen = true;
  } else if (name === "execution_time") {
    const duration = data.metrics && typeof data.metrics.duration_ms === "number"
      ? data.metrics.duration_ms
      : NaN;
    span.end = time;
    if (Number.isFinite(duration)) {
      span.durationMs = duration;
      // A started event gives the start; spans without one (batch items) start
      // their duration before the end.
      if (!span.startSeen) {
        span.start = time - duration;
      }
    }
    span.state = FINISHED.has(data.state) ? data.state : "completed";
  } else if ((name === "node_completed" || name === "workflow_completed") && !Number.isFinite(span.end)) {
    span.state = "completed";
  } else if (name === "node_failed" || name === "workflow_failed") {
    span.state = isHandled(data) ? "handled" : "failed";
  } else if (name === "retry_attempted") {
    span.retries += 1;
  }
  if (data.error && typeof data.error === "object") {
    span.error = errorText(data.error);
  }
  if (!Number.isFinite(span.start)) {
    span.start = time;
  }
}

export function runStart(run) {
  if (Number.isFinite(run.startTime)) {
    return run.startTime;
  }
  if (run.eventCount === 0 && run.summary && Number.isFinite(run.summary.started_at)) {
    return run.summary.started_at;
  }
  return run.firstTime;
}

// A run known only from its summary shows the summary; otherwise the events decide.
export function runStatus(run) {
  if (run.eventCount === 0 && run.summary) {
    return text(run.summary.status) || "running";
  }
  if (run.workflowFinished || run.graphNodes.length > 0) {
    return run.status;
  }
  const states = [...run.nodes.values()].map((node) => node.state);
  if (states.includes("failed")) {
    return "failed";
  }
  if (states.length > 0 && states.every((s) => s === "completed" || s === "handled")) {
    return "completed";
  }
  return "running";
}

export function runDuration(run, now) {
  if (run.eventCount === 0 && run.summary) {
    return Number(run.summary.duration_ms);
  }
  const status = runStatus(run);
  let end = run.endTime;
  if (!Number.isFinite(end)) {
    end = status === "running" ? now : run.lastTime;
  }
  return Math.max(0, end - runStart(run));
}

export function runName(run) {
  if (run.workflowName) {
    return run.workflowName;
  }
  const first = run.nodes.values().next().value;
  return first ? first.id : "(unnamed run)";
}

export function runCounts(run) {
  if (run.eventCount === 0 && run.summary) {
    return {
      nodes: Number(run.summary.node_count) || 0,
      finished: Number(run.summary.nodes_finished) || 0,
      errors: Number(run.summary.errors) || 0,
    };
  }
  const ids = run.graphIds.size > 0 ? [...run.graphIds] : [...run.nodes.keys()];
  const finished = ids.filter((id) => run.nodes.has(id) && FINISHED.has(run.nodes.get(id).state));
  return { nodes: ids.length, finished: finished.length, errors: run.errors };
}

export function nodeBadge(node) {
  const parts = [];
  if (node.itemsDone || node.itemsFailed) {
    parts.push(node.itemsDone + " done" + (node.itemsFailed ? ", " + node.itemsFailed + " failed" : ""));
  }
  if (node.retries) {
    parts.push(node.retries + (node.retries === 1 ? " retry" : " retries"));
  }
  if (node.fallbacks) {
    parts.push(node.fallbacks + (node.fallbacks === 1 ? " fallback" : " fallbacks"));
  }
  if (node.executions > 1) {
    parts.push("\u00d7" + node.executions);
  }
  return parts.join(" \u00b7 ");
}
