// The list of workflow runs, live and finished, newest first, with status,
// duration, node progress and error count. Rows are updated in place and only
// moved when the order changes, so that a click is never lost to a rebuild.

import { runCounts, runDuration, runName, runStatus } from "./model.js";
import { byId, formatDuration, html, shorten } from "./util.js";

export class RunList {
  constructor(onSelectRun) {
    this.list = byId("runs");
    this.empty = byId("runs-empty");
    this.filter = byId("run-filter");
    this.onSelectRun = onSelectRun;
    this.items = new Map();
    this.filter.addEventListener("input", () => this.onFilter && this.onFilter());
    this.list.addEventListener("click", (event) => {
      const item = event.target.closest("li.run");
      if (item) {
        this.onSelectRun(item.dataset.runId);
      }
    });
  }

  buildItem(runId) {
    const name = html("span", { className: "run-name" });
    const pill = html("span", { className: "pill" });
    const meta = html("span", { className: "run-meta" });
    const item = html("li", { className: "run", "data-run-id": runId }, html("button", { type: "button" }, name, pill, meta));
    item.parts = { name: name, pill: pill, meta: meta };
    return item;
  }

  render(model, selectedId, now) {
    const needle = this.filter.value.trim().toLowerCase();
    const runs = model.sortedRuns().filter(
      (run) => !needle || run.id.toLowerCase().includes(needle) || runName(run).toLowerCase().includes(needle)
    );
    this.empty.hidden = model.runs.size > 0;
    const wanted = new Set(runs.map((run) => run.id));
    for (const [runId, item] of this.items) {
      if (!wanted.has(runId)) {
        item.remove();
        this.items.delete(runId);
      }
    }
    const ordered = [];
    for (const run of runs) {
      let item = this.items.get(run.id);
      if (!item) {
        item = this.buildItem(run.id);
        this.items.set(run.id, item);
      }
      this.update(item, run, selectedId, now);
      ordered.push(item);
    }
    const current = [...this.list.children];
    if (current.length !== ordered.length || current.some((item, index) => item !== ordered[index])) {
      this.list.replaceChildren(...ordered);
    }
  }

  update(item, run, selectedId, now) {
    const status = runStatus(run);
    const counts = runCounts(run);
    const name = runName(run);
    setText(item.parts.name, shorten(name, 60));
    item.parts.name.title = name;
    setText(item.parts.pill, status);
    item.parts.pill.dataset.status = status;
    const parts = [
      shorten(run.id, 12),
      formatDuration(runDuration(run, now)),
      counts.finished + "/" + counts.nodes + " nodes",
    ];
    if (counts.errors > 0) {
      parts.push(counts.errors + (counts.errors === 1 ? " error" : " errors"));
    }
    setText(item.parts.meta, parts.join(" \u00b7 "));
    item.parts.meta.title = run.id;
    item.dataset.status = status;
    item.dataset.errors = String(counts.errors);
    item.classList.toggle("selected", run.id === selectedId);
    item.classList.toggle("has-errors", counts.errors > 0);
  }
}

function setText(node, value) {
  if (node.textContent !== value) {
    node.textContent = value;
  }
}
