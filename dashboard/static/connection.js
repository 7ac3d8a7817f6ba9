// The page's connection to the dashboard: a snapshot from /api/state and
// /api/runs, then the live stream from /api/events (Server-Sent Events).
//
// The browser's EventSource reconnects by itself and sends the id of the last
// event it received as Last-Event-ID, so the server replays what was missed.
// When the EventSource gives up (for example after an HTTP error while the
// server restarts), a new one is opened with that id as ?last_event_id=. The
// server sends "event: reset" when it no longer has the missed events, and
// the page then reloads the snapshot.

import { apiUrl, byId, fetchJson } from "./util.js";

const RETRY_MS = 2000;
const STATE_LIMIT = 10000;
const RUNS_LIMIT = 300;
const MAX_PENDING = 20000;

export class Connection {
  constructor(handlers) {
    this.handlers = handlers;
    this.source = null;
    this.lastId = null;
    this.loading = false;
    this.loaded = false;
    this.pending = [];
    this.retryTimer = null;
    this.snapshots = 0;
    this.reconnects = 0;
    this.status = byId("connection-status");
  }

  setStatus(state, label) {
    this.status.dataset.state = state;
    this.status.dataset.snapshots = String(this.snapshots);
    this.status.dataset.reconnects = String(this.reconnects);
    this.status.textContent = label;
  }

  async start() {
    this.setStatus("connecting", "connecting");
    try {
      await this.loadSnapshot();
    } catch (error) {
      console.error("kaygraph-otel: loading the snapshot failed", error);
      this.scheduleRestart();
      return;
    }
    this.open();
  }

  async loadSnapshot() {
    this.loading = true;
    this.pending = [];
    try {
      const [state, runs] = await Promise.all([
        fetchJson("/api/state", { limit: STATE_LIMIT }),
        fetchJson("/api/runs", { limit: RUNS_LIMIT }),
      ]);
      this.snapshots += 1;
      this.loaded = true;
      this.handlers.onSnapshot(
        Array.isArray(state.events) ? state.events : [],
        Array.isArray(runs.runs) ? runs.runs : []
      );
    } finally {
      this.loading = false;
      const queued = this.pending;
      this.pending = [];
      queued.forEach((event) => this.handlers.onEvent(event));
    }
  }

  open() {
    const params = this.lastId ? { last_event_id: this.lastId } : {};
    const source = new EventSource(apiUrl("/api/events", params));
    this.source = source;
    source.onopen = () => this.setStatus("live", "live");
    source.onmessage = (message) => this.handleMessage(message);
    source.addEventListener("reset", () => this.handleReset());
    source.onerror = () => {
      if (source !== this.source) {
        return;
      }
      if (source.readyState === EventSource.CLOSED) {
        this.scheduleRestart();
      } else {
        this.reconnects += 1;
        this.setStatus("reconnecting", "reconnecting\u2026");
      }
    };
  }

  handleMessage(message) {
    if (message.lastEventId) {
      this.lastId = message.lastEventId;
    }
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (error) {
      console.warn("kaygraph-otel: ignored an event that is not JSON", error);
      return;
    }
    if (this.loading) {
      if (this.pending.length < MAX_PENDING) {
        this.pending.push(event);
      }
      return;
    }
    this.handlers.onEvent(event);
  }

  handleReset() {
    // The server no longer has the events this page missed: reload everything.
    this.setStatus("loading", "reloading");
    this.loadSnapshot()
      .then(() => this.setStatus("live", "live"))
      .catch((error) => {
        console.error("kaygraph-otel: reloading the snapshot failed", error);
        this.scheduleRestart();
      });
  }

  scheduleRestart() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
    this.reconnects += 1;
    this.setStatus("disconnected", "disconnected, retrying in " + RETRY_MS / 1000 + " s");
    if (this.retryTimer !== null) {
      return;
    }
    this.retryTimer = window.setTimeout(() => {
      this.retryTimer = null;
      if (this.loaded) {
        this.setStatus("connecting", "connecting");
        this.open();
      } else {
        this.start();
      }
    }, RETRY_MS);
  }
}
