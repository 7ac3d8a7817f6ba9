// Per node type latency percentiles, error rate, retries and throughput, polled
// from GET /api/metrics, which computes them on the server over a sliding window.

import { byId, fetchJson, formatDuration, html, text } from "./util.js";

const POLL_MS = 2000;

function percent(value) {
  if (typeof value !== "number") {
    return "";
  }
  return (value * 100).toFixed(value < 0.1 ? 1 : 0) + " %";
}

export class MetricsView {
  constructor() {
    this.body = byId("metrics-body");
    this.meta = byId("metrics-meta");
    this.empty = byId("metrics-empty");
    this.windowSelect = byId("metrics-window");
    this.rows = [];
    this.timer = null;
    this.windowSelect.addEventListener("change", () => this.poll());
  }

  start() {
    if (this.timer === null) {
      this.poll();
      this.timer = window.setInterval(() => this.poll(), POLL_MS);
    }
  }

  // The row of a node type, for the node detail panel.
  lookup(nodeType, kind) {
    return this.rows.find((row) => row.node_type === nodeType && row.kind === kind) || null;
  }

  async poll() {
    try {
      const body = await fetchJson("/api/metrics", { window: this.windowSelect.value });
      this.rows = Array.isArray(body.node_types) ? body.node_types : [];
      this.render(body);
    } catch (error) {
      this.meta.textContent = "metrics unavailable: " + error.message;
      this.meta.dataset.state = "error";
    }
  }

  render(body) {
    const rows = this.rows.map((row) =>
      html(
        "tr",
        { "data-node-type": text(row.node_type), "data-kind": text(row.kind), className: row.errors > 0 ? "has-error" : null },
        html("td", { title: text(row.node_type) }, text(row.node_type)),
        html("td", {}, text(row.kind)),
        html("td", { className: "number" }, text(row.count)),
        html("td", { className: "number", "data-metric": "p50" }, formatDuration(row.p50_ms)),
        html("td", { className: "number", "data-metric": "p95" }, formatDuration(row.p95_ms)),
        html("td", { className: "number", "data-metric": "p99" }, formatDuration(row.p99_ms)),
        html("td", { className: "number" }, formatDuration(row.max_ms)),
        html("td", { className: "number" }, text(row.errors) + (row.handled ? " (+" + row.handled + " handled)" : "")),
        html("td", { className: "number" }, percent(row.error_rate)),
        html("td", { className: "number" }, text(row.retries)),
        html("td", { className: "number" }, typeof row.throughput_per_min === "number" ? row.throughput_per_min.toFixed(1) : "")
      )
    );
    this.body.replaceChildren(...rows);
    this.empty.hidden = rows.length > 0;
    this.meta.dataset.state = "ok";
    this.meta.textContent =
      "last " + formatDuration(Number(body.window_seconds) * 1000) + " \u00b7 percentiles within " +
      Math.round(Number(body.relative_accuracy) * 100) + " % (DDSketch) \u00b7 updated " +
      text(body.generated_at).slice(11, 19) + " UTC";
  }
}
