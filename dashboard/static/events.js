// The live event log: newest first, filtered by run, node, event type and free
// text. Filters apply to the buffered events and to every event that arrives
// later. Pausing freezes the table while arriving events are still buffered
// and counted; resuming shows them.

import { byId, copyText, formatClock, html, parseTime, shorten, text } from "./util.js";

const MAX_BUFFER = 5000;
const MAX_ROWS = 500;

function detailText(event, data) {
  if (data.error && typeof data.error === "object") {
    return [text(data.error.type), text(data.error.message)].filter(Boolean).join(": ");
  }
  if (event.event_name === "transition") {
    return text(data.action || "default") + " \u2192 " + text(data.next_node_id);
  }
  if (data.metrics && typeof data.metrics === "object") {
    return Object.entries(data.metrics)
      .map(([name, value]) => name + "=" + (typeof value === "number" ? Math.round(value * 1000) / 1000 : text(value)))
      .join(" ");
  }
  return "";
}

export class EventLog {
  constructor(getSelectedRunId) {
    this.getSelectedRunId = getSelectedRunId;
    this.buffer = [];
    this.json = new WeakMap();
    this.paused = false;
    this.pausedCount = 0;
    this.selectedEvent = null;
    this.filters = { run: "", node: "", type: "", text: "" };
    this.body = byId("event-log");
    this.pauseButton = byId("pause");
    this.pausedLabel = byId("paused-count");
    this.countLabel = byId("events-count");
    this.detail = byId("event-detail");
    this.detailJson = byId("event-json");
    this.copyStatus = byId("copy-status");
    this.bindControls();
  }

  bindControls() {
    const inputs = [["filter-run", "run"], ["filter-node", "node"], ["filter-type", "type"], ["filter-text", "text"]];
    for (const [id, name] of inputs) {
      const input = byId(id);
      input.addEventListener("input", () => {
        this.filters[name] = input.value;
        this.renderAll();
      });
    }
    this.pauseButton.addEventListener("click", () => (this.paused ? this.resume() : this.pause()));
    byId("event-copy").addEventListener("click", () => {
      if (this.selectedEvent) {
        this.copy(this.selectedEvent);
      }
    });
    byId("event-detail-close").addEventListener("click", () => this.showDetail(null));
    this.body.addEventListener("click", (event) => {
      const row = event.target.closest("tr");
      if (!row || !row.eventRef) {
        return;
      }
      if (event.target.closest("button.copy")) {
        this.copy(row.eventRef);
      } else {
        this.showDetail(row.eventRef);
      }
    });
  }

  // Filters that depend on the selected run must be reapplied when it changes.
  selectedRunChanged() {
    if (this.filters.run === "selected") {
      this.renderAll();
    }
  }

  jsonOf(event) {
    let value = this.json.get(event);
    if (value === undefined) {
      value = JSON.stringify(event);
      this.json.set(event, value);
    }
    return value;
  }

  matches(event) {
    const filters = this.filters;
    if (filters.run === "selected" && text(event.correlation_id) !== this.getSelectedRunId()) {
      return false;
    }
    if (filters.node && !text(event.node_id).toLowerCase().includes(filters.node.toLowerCase())) {
      return false;
    }
    if (filters.type) {
      const [scope, value] = filters.type.split(":");
      const field = scope === "type" ? event.event_type : event.event_name;
      if (field !== value) {
        return false;
      }
    }
    if (filters.text && !this.jsonOf(event).toLowerCase().includes(filters.text.toLowerCase())) {
      return false;
    }
    return true;
  }

  reset(events) {
    this.buffer = events.slice(-MAX_BUFFER);
    this.pausedCount = 0;
    this.renderAll();
  }

  add(event) {
    this.buffer.push(event);
    if (this.buffer.length > MAX_BUFFER) {
      this.buffer.splice(0, this.buffer.length - MAX_BUFFER);
    }
    if (this.paused) {
      this.pausedCount += 1;
      this.renderPauseState();
      return;
    }
    if (this.matches(event)) {
      this.body.prepend(this.buildRow(event));
      while (this.body.childElementCount > MAX_ROWS) {
        this.body.lastElementChild.remove();
      }
      this.renderCount();
    }
  }

  pause() {
    this.paused = true;
    this.pausedCount = 0;
    this.renderPauseState();
  }

  resume() {
    this.paused = false;
    this.pausedCount = 0;
    this.renderAll();
  }

  renderPauseState() {
    this.pauseButton.textContent = this.paused ? "resume" : "pause";
    this.pauseButton.setAttribute("aria-pressed", this.paused ? "true" : "false");
    this.pausedLabel.dataset.count = String(this.pausedCount);
    this.pausedLabel.textContent = this.paused
      ? "paused \u00b7 " + this.pausedCount + (this.pausedCount === 1 ? " new event" : " new events")
      : "";
  }

  renderAll() {
    if (this.paused) {
      return;
    }
    const rows = [];
    for (let i = this.buffer.length - 1; i >= 0 && rows.length < MAX_ROWS; i--) {
      if (this.matches(this.buffer[i])) {
        rows.push(this.buildRow(this.buffer[i]));
      }
    }
    this.body.replaceChildren(...rows);
    this.renderPauseState();
    this.renderCount();
  }

  renderCount() {
    const shown = this.body.childElementCount;
    this.countLabel.textContent = shown + " shown of " + this.buffer.length + " buffered";
  }

  buildRow(event) {
    const data = event.data && typeof event.data === "object" ? event.data : {};
    const detail = detailText(event, data);
    const item = Number.isInteger(data.item_index) ? " [" + data.item_index + "]" : "";
    const row = html(
      "tr",
      {
        "data-event-id": text(event.event_id),
        "data-event-name": text(event.event_name),
        "data-state": text(data.state),
        "data-node-id": text(event.node_id),
        "data-run-id": text(event.correlation_id),
        className: data.error ? "has-error" : null,
      },
      html("td", {}, formatClock(parseTime(event.timestamp))),
      html("td", { title: text(event.correlation_id) }, shorten(event.correlation_id, 10)),
      html("td", { title: text(event.node_id) }, shorten(text(event.node_id) + item, 40)),
      html("td", {}, text(event.event_name)),
      html("td", {}, text(data.state)),
      html("td", { title: detail }, shorten(detail, 120)),
      html("td", {}, html("button", { type: "button", className: "copy small", title: "copy this event's JSON" }, "copy"))
    );
    row.eventRef = event;
    return row;
  }

  showDetail(event) {
    this.selectedEvent = event;
    this.detail.hidden = event === null;
    this.copyStatus.textContent = "";
    this.detailJson.textContent = event === null ? "" : JSON.stringify(event, null, 2);
  }

  async copy(event) {
    this.showDetail(event);
    try {
      const method = await copyText(JSON.stringify(event, null, 2));
      this.copyStatus.textContent = "copied";
      this.copyStatus.dataset.method = method;
    } catch (error) {
      this.copyStatus.textContent = "copy failed: select the JSON and copy it by hand";
      this.copyStatus.dataset.method = "none";
      console.warn("kaygraph-otel: copying failed", error);
    }
  }
}
