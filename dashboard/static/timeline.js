// The waterfall of the selected run: one row per span (workflow, node, nested
// graph, batch item), ordered as a tree by parent span and by start time, with a
// bar from the span's start to its end. Spans still running reach to "now".
// Batch items have a row each, so items that ran concurrently show side by side.

import { byId, formatDuration, html, shorten } from "./util.js";

const MAX_ROWS = 400;
const TICKS = 5;

function orderSpans(run) {
  const children = new Map();
  const roots = [];
  for (const span of run.spans.values()) {
    if (span.parentId && run.spans.has(span.parentId) && span.parentId !== span.id) {
      if (!children.has(span.parentId)) {
        children.set(span.parentId, []);
      }
      children.get(span.parentId).push(span);
    } else {
      roots.push(span);
    }
  }
  const byStart = (a, b) => (a.start - b.start) || ((a.itemIndex ?? -1) - (b.itemIndex ?? -1));
  const rows = [];
  const visited = new Set();
  const stack = roots.sort(byStart).reverse().map((span) => [span, 0]);
  while (stack.length > 0) {
    const [span, depth] = stack.pop();
    if (visited.has(span.id)) {
      continue;
    }
    visited.add(span.id);
    rows.push({ span: span, depth: depth });
    const kids = (children.get(span.id) || []).slice().sort(byStart).reverse();
    for (const kid of kids) {
      stack.push([kid, depth + 1]);
    }
  }
  return rows;
}

function spanLabel(span) {
  if (span.kind === "item") {
    return span.nodeId + " [" + span.itemIndex + "]";
  }
  return span.nodeId;
}

export class TimelineView {
  constructor(onSelectNode) {
    this.container = byId("timeline");
    this.onSelectNode = onSelectNode;
    this.signature = "";
    this.container.addEventListener("click", (event) => {
      const row = event.target.closest(".span-row");
      if (row && row.dataset.nodeId && row.dataset.kind !== "workflow") {
        this.onSelectNode(row.dataset.nodeId);
      }
    });
  }

  render(run, now, selectedNodeId) {
    if (!run || run.spans.size === 0) {
      const message = run ? "No spans yet for this run." : "";
      if (this.signature !== "empty:" + message) {
        this.signature = "empty:" + message;
        this.container.replaceChildren(message ? html("p", { className: "empty" }, message) : "");
        this.container.dataset.rows = "0";
      }
      return;
    }
    const open = [...run.spans.values()].some((span) => !Number.isFinite(span.end));
    const signature = [run.id, run.version, selectedNodeId, open ? Math.floor(now / 250) : "done"].join("|");
    if (signature === this.signature) {
      return;
    }
    this.signature = signature;

    const rows = orderSpans(run);
    let t0 = Infinity;
    let t1 = -Infinity;
    for (const { span } of rows) {
      t0 = Math.min(t0, span.start);
      t1 = Math.max(t1, Number.isFinite(span.end) ? span.end : now);
    }
    const total = Math.max(1, t1 - t0);

    const axis = html("div", { className: "timeline-axis" }, html("span", { className: "span-label" }, "span"));
    const scale = html("div", { className: "span-track axis-track" });
    for (let i = 0; i <= TICKS; i++) {
      const tick = html("span", { className: "tick" }, "+" + formatDuration((total * i) / TICKS));
      tick.dataset.position = String(i);
      scale.append(tick);
    }
    axis.append(scale, html("span", { className: "span-duration" }, "duration"));

    const body = [];
    for (const { span, depth } of rows.slice(0, MAX_ROWS)) {
      body.push(this.buildRow(span, depth, t0, total, now, selectedNodeId));
    }
    const children = [axis, ...body];
    if (rows.length > MAX_ROWS) {
      children.push(html("p", { className: "note" }, (rows.length - MAX_ROWS) + " more spans not shown."));
    }
    this.container.replaceChildren(...children);
    this.container.dataset.rows = String(Math.min(rows.length, MAX_ROWS));
    this.container.dataset.runId = run.id;
  }

  buildRow(span, depth, t0, total, now, selectedNodeId) {
    const end = Number.isFinite(span.end) ? span.end : now;
    const left = ((span.start - t0) / total) * 100;
    const width = Math.max(0.4, ((end - span.start) / total) * 100);
    const duration = Number.isFinite(span.durationMs) ? span.durationMs : end - span.start;
    const bar = html("span", {
      className: "span-bar",
      "data-state": span.state,
    });
    // Positions are set through the CSSOM, which the page's style-src 'self' policy allows.
    bar.style.left = Math.min(99.6, left).toFixed(3) + "%";
    bar.style.width = Math.min(100 - Math.min(99.6, left), width).toFixed(3) + "%";

    const label = html(
      "span",
      { className: "span-label", title: spanLabel(span) + " (" + span.nodeType + ")" + (span.error ? "\n" + span.error : "") },
      shorten(spanLabel(span), 48)
    );
    label.style.paddingLeft = (6 + depth * 14) + "px";
    const row = html(
      "div",
      {
        className: "span-row" + (span.nodeId === selectedNodeId && span.kind !== "workflow" ? " selected" : ""),
        "data-span-id": span.id,
        "data-node-id": span.nodeId,
        "data-kind": span.kind,
        "data-state": span.state,
        "data-item-index": span.itemIndex === null ? null : String(span.itemIndex),
      },
      label,
      html("span", { className: "span-track" }, bar),
      html("span", { className: "span-duration" }, formatDuration(duration) + (Number.isFinite(span.end) ? "" : " \u2026"))
    );
    return row;
  }
}
