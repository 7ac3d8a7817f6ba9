// kaygraph-otel dashboard page: loads recent events from /api/state, then follows
// /api/events (Server-Sent Events) and draws runs, the selected run's graph and a log.
//
// Every string that comes from an event is put into the page with textContent or
// SVG text nodes, never parsed as HTML, because node ids and error messages are
// chosen by the monitored program.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const STATE_LIMIT = 2000;
  const MAX_LOG_ROWS = 500;
  const MAX_RUNS = 200;
  const MAX_SEEN_IDS = 50000;
  const MAX_PENDING = 10000;
  const RETRY_MS = 3000;

  const NODE_W = 156;
  const NODE_H = 62;
  const GAP_X = 56;
  const GAP_Y = 22;
  const GROUP_PAD = 14;
  const GROUP_HEAD = 30;
  const MARGIN = 24;
  const CHAR_W = 7.2;

  // Node state for display, by event name. Batch item events (data.item_index set)
  // only count items and never finish the whole node.
  const STATE_BY_EVENT = {
    node_started: "running",
    node_preparing: "running",
    node_executing: "running",
    node_completed: "completed",
    retry_attempted: "retrying",
  };

  const token = new URLSearchParams(window.location.search).get("token");

  const model = {
    runs: new Map(),
    seen: new Set(),
    seenOrder: [],
    selectedRunId: null,
    follow: true,
    arrival: 0,
    lastEventId: null,
  };

  const view = {
    renderedRunId: null,
    renderedGraphVersion: -1,
    nodeElements: new Map(),
    edgeElements: new Map(),
    renderScheduled: false,
    runsSignature: "",
  };

  let source = null;
  let loading = false;
  let pending = [];
  let restartTimer = null;

  const el = (id) => document.getElementById(id);

  function apiUrl(path, params) {
    const url = new URL(path, window.location.origin);
    for (const [name, value] of Object.entries(params || {})) {
      url.searchParams.set(name, value);
    }
    if (token) {
      url.searchParams.set("token", token);
    }
    return url.pathname + url.search;
  }

  function text(value) {
    return value === undefined || value === null ? "" : String(value);
  }

  function shorten(value, maxChars) {
    const s = text(value);
    return s.length > maxChars ? s.slice(0, Math.max(1, maxChars - 1)) + "\u2026" : s;
  }

  function parseTime(value) {
    if (typeof value !== "string") {
      return NaN;
    }
    // Date.parse is only specified for three fractional digits; events carry up to six.
    return Date.parse(value.replace(/(\.\d{3})\d+/, "$1"));
  }

  function formatTime(ms) {
    return Number.isFinite(ms) ? new Date(ms).toISOString().slice(11, 23) : "";
  }

  function svg(name, attributes) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) {
      node.setAttribute(key, String(value));
    }
    return node;
  }

  function svgText(content, attributes) {
    const node = svg("text", attributes);
    node.textContent = content;
    return node;
  }

  // ---- connection status ------------------------------------------------------

  function setStatus(state, label) {
    const status = el("connection-status");
    status.dataset.state = state;
    status.textContent = label;
  }

  // ---- model ------------------------------------------------------------------

  function resetModel() {
    model.runs.clear();
    model.seen.clear();
    model.seenOrder = [];
    model.lastEventId = null;
    view.renderedRunId = null;
    view.renderedGraphVersion = -1;
    view.runsSignature = "";
    el("event-log").replaceChildren();
  }

  function remember(eventId) {
    model.seen.add(eventId);
    model.seenOrder.push(eventId);
    if (model.seenOrder.length > MAX_SEEN_IDS) {
      model.seen.delete(model.seenOrder.shift());
    }
  }

  function getRun(runId, time) {
    let run = model.runs.get(runId);
    if (!run) {
      run = {
        id: runId,
        workflowName: "",
        workflowId: "",
        rootNodeId: null,
        status: "running",
        finished: false,
        graphNodes: [],
        graphEdges: [],
        graphTruncated: false,
        graphVersion: 0,
        nodes: new Map(),
        takenEdges: new Set(),
        firstTime: Number.isFinite(time) ? time : Date.now(),
        arrival: ++model.arrival,
      };
      model.runs.set(runId, run);
      trimRuns();
    }
    return run;
  }

  function trimRuns() {
    if (model.runs.size <= MAX_RUNS) {
      return;
    }
    const oldest = [...model.runs.values()]
      .filter((run) => run.id !== model.selectedRunId)
      .sort(compareRuns)
      .pop();
    if (oldest) {
      model.runs.delete(oldest.id);
    }
  }

  // Newest first: by the time of the run's first event, then by arrival.
  function compareRuns(a, b) {
    return b.firstTime - a.firstTime || b.arrival - a.arrival;
  }

  function getNode(run, nodeId, nodeType) {
    let node = run.nodes.get(nodeId);
    if (!node) {
      node = {
        id: nodeId,
        type: nodeType || "",
        state: "waiting",
        stateTime: -Infinity,
        executions: 0,
        retries: 0,
        fallbacks: 0,
        itemsDone: 0,
        itemsFailed: 0,
        lastError: "",
      };
      run.nodes.set(nodeId, node);
    }
    if (nodeType && !node.type) {
      node.type = nodeType;
    }
    return node;
  }

  function mergeGraph(run, graph, rootNodeId) {
    if (!graph || typeof graph !== "object") {
      return;
    }
    const known = new Set(run.graphNodes.map((node) => node.id));
    for (const node of Array.isArray(graph.nodes) ? graph.nodes : []) {
      if (!node || typeof node.id !== "string" || known.has(node.id)) {
        continue;
      }
      known.add(node.id);
      run.graphNodes.push({
        id: node.id,
        type: text(node.type),
        parent: typeof node.parent === "string" ? node.parent : null,
        isGraph: node.is_graph === true,
        start: node.start === true,
      });
    }
    const edgeKeys = new Set(run.graphEdges.map(edgeKey));
    for (const edge of Array.isArray(graph.edges) ? graph.edges : []) {
      if (!edge || typeof edge.source !== "string" || typeof edge.target !== "string") {
        continue;
      }
      const entry = { source: edge.source, target: edge.target, action: text(edge.action) };
      if (!edgeKeys.has(edgeKey(entry))) {
        edgeKeys.add(edgeKey(entry));
        run.graphEdges.push(entry);
      }
    }
    if (graph.truncated === true) {
      run.graphTruncated = true;
    }
    if (rootNodeId && !run.rootNodeId) {
      run.rootNodeId = rootNodeId;
    }
    run.graphVersion += 1;
  }

  function edgeKey(edge) {
    return edge.source + "\u0000" + edge.target + "\u0000" + edge.action;
  }

  function isWorkflowEvent(run, event) {
    if (event.event_name.startsWith("workflow_")) {
      return true;
    }
    // The workflow span's own metric events carry the workflow's id as node_id.
    return (
      event.node_id === run.rootNodeId &&
      !run.graphNodes.some((node) => node.id === event.node_id)
    );
  }

  function applyEvent(event, options) {
    if (!event || typeof event !== "object" || typeof event.event_name !== "string") {
      return;
    }
    const eventId = text(event.event_id);
    if (eventId) {
      if (model.seen.has(eventId)) {
        return;
      }
      remember(eventId);
      model.lastEventId = eventId;
    }
    const data = event.data && typeof event.data === "object" ? event.data : {};
    const time = parseTime(event.timestamp);
    const run = getRun(text(event.correlation_id), time);

    if (data.graph) {
      mergeGraph(run, data.graph, event.event_name === "workflow_started" ? text(event.node_id) : null);
    }
    if (isWorkflowEvent(run, event)) {
      applyWorkflowEvent(run, event, data);
    } else {
      applyNodeEvent(run, event, data, time);
    }
    if (!options || options.log !== false) {
      addLogRow(event, data, time);
    }
    scheduleRender();
  }

  function applyWorkflowEvent(run, event, data) {
    if (event.event_name === "workflow_started") {
      run.rootNodeId = run.rootNodeId || text(event.node_id);
      run.workflowName = text(data.workflow_name) || text(event.node_id);
      run.workflowId = text(event.workflow_id);
    } else if (event.event_name === "workflow_completed") {
      run.status = "completed";
      run.finished = true;
    } else if (event.event_name === "workflow_failed") {
      run.status = "failed";
      run.finished = true;
    }
  }

  function applyNodeEvent(run, event, data, time) {
    const node = getNode(run, text(event.node_id), text(event.node_type));
    const name = event.event_name;
    const isItem = Number.isInteger(data.item_index);

    if (name === "transition") {
      run.takenEdges.add(
        edgeKey({
          source: text(data.from_node_id) || node.id,
          target: text(data.next_node_id),
          action: text(data.action) || "default",
        })
      );
      return;
    }
    if (name === "retry_attempted") {
      node.retries += 1;
    } else if (name === "fallback_triggered") {
      node.fallbacks += 1;
    } else if (name === "node_started" && !isItem) {
      node.executions += 1;
    }
    if (data.error && typeof data.error === "object") {
      node.lastError = text(data.error.message) || text(data.error.type);
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

    let state = STATE_BY_EVENT[name];
    if (name === "node_failed") {
      const handled = data.state === "handled" || (data.error && data.error.handled === true);
      state = handled ? "handled" : "failed";
    }
    if (state) {
      setNodeState(node, state, time);
    }
  }

  // Events can arrive out of order (a node's end is exported in a later batch than
  // its start), so an older event never overwrites a newer state.
  function setNodeState(node, state, time) {
    const when = Number.isFinite(time) ? time : Date.now();
    if (when >= node.stateTime) {
      node.state = state;
      node.stateTime = when;
    }
  }

  function runStatus(run) {
    if (run.finished || run.graphNodes.length > 0) {
      return run.status;
    }
    // A run without workflow events is a standalone node: its nodes decide.
    const states = [...run.nodes.values()].map((node) => node.state);
    if (states.includes("failed")) {
      return "failed";
    }
    if (states.length > 0 && states.every((s) => s === "completed" || s === "handled")) {
      return "completed";
    }
    return "running";
  }

  function runName(run) {
    if (run.workflowName) {
      return run.workflowName;
    }
    const first = run.nodes.values().next().value;
    return first ? first.id : "(unnamed run)";
  }

  function selectedRun() {
    if (!model.follow && model.selectedRunId && model.runs.has(model.selectedRunId)) {
      return model.runs.get(model.selectedRunId);
    }
    const newest = [...model.runs.values()].sort(compareRuns)[0] || null;
    model.selectedRunId = newest ? newest.id : null;
    return newest;
  }

  function nodeBadge(node) {
    const parts = [];
    if (node.itemsDone || node.itemsFailed) {
      parts.push(node.itemsDone + " done" + (node.itemsFailed ? ", " + node.itemsFailed + " failed" : ""));
    }
    if (node.retries) {
      parts.push(node.retries + (node.retries === 1 ? " retry" : " retries"));
    }
    if (node.fallbacks) {
      parts.push(node.fallbacks + " fallback");
    }
    if (node.executions > 1) {
      parts.push("\u00d7" + node.executions);
    }
    return parts.join(" \u00b7 ");
  }

  // ---- rendering --------------------------------------------------------------

  function scheduleRender() {
    if (!view.renderScheduled) {
      view.renderScheduled = true;
      window.requestAnimationFrame(render);
    }
  }

  function render() {
    view.renderScheduled = false;
    const run = selectedRun();
    renderRuns(run);
    renderRunHeader(run);
    if (!run) {
      el("graph").replaceChildren();
      el("graph").dataset.runId = "";
      el("extra-nodes").replaceChildren();
      view.renderedRunId = null;
      return;
    }
    if (view.renderedRunId !== run.id || view.renderedGraphVersion !== run.graphVersion) {
      buildGraph(run);
      view.renderedRunId = run.id;
      view.renderedGraphVersion = run.graphVersion;
    }
    updateGraph(run);
    renderExtraNodes(run);
  }

  function renderRuns(selected) {
    const list = el("runs");
    const runs = [...model.runs.values()].sort(compareRuns);
    el("runs-empty").hidden = runs.length > 0;
    // Rebuilding the list under the pointer would swallow clicks, so it is only
    // rebuilt when something it shows has changed.
    const signature = JSON.stringify([
      selected ? selected.id : null,
      runs.map((run) => [run.id, runStatus(run), run.graphNodes.length || run.nodes.size, runName(run)]),
    ]);
    if (signature === view.runsSignature) {
      return;
    }
    view.runsSignature = signature;
    const items = runs.map((run) => {
      const status = runStatus(run);
      const item = document.createElement("li");
      item.className = "run" + (selected && run.id === selected.id ? " selected" : "");
      item.dataset.runId = run.id;
      item.dataset.status = status;

      const button = document.createElement("button");
      button.type = "button";
      const name = document.createElement("span");
      name.className = "run-name";
      name.textContent = shorten(runName(run), 40);
      const pill = document.createElement("span");
      pill.className = "pill";
      pill.dataset.status = status;
      pill.textContent = status;
      const meta = document.createElement("span");
      meta.className = "run-meta";
      const count = run.graphNodes.length || run.nodes.size;
      meta.textContent =
        formatTime(run.firstTime) + " \u00b7 " + count + (count === 1 ? " node" : " nodes") +
        " \u00b7 " + shorten(run.id, 12);
      button.title = run.id;
      button.append(name, pill, meta);
      button.addEventListener("click", () => selectRun(run.id));
      item.append(button);
      return item;
    });
    list.replaceChildren(...items);
  }

  function selectRun(runId) {
    model.selectedRunId = runId;
    model.follow = false;
    el("follow-newest").checked = false;
    scheduleRender();
  }

  function renderRunHeader(run) {
    el("run-title").textContent = run ? runName(run) : "Workflow";
    const meta = el("run-meta");
    if (!run) {
      meta.textContent = "";
      return;
    }
    // With a graph, progress counts its nodes; without one, every node seen.
    const counted = run.graphNodes.length
      ? run.graphNodes.map((node) => run.nodes.get(node.id)).filter(Boolean)
      : [...run.nodes.values()];
    const total = run.graphNodes.length || counted.length;
    const done = counted.filter((n) => n.state === "completed" || n.state === "handled").length;
    meta.textContent =
      "run " + shorten(run.id, 40) + " \u00b7 " + runStatus(run) + " \u00b7 " +
      done + " of " + total + " nodes finished";
    el("graph-note").textContent = run.graphTruncated
      ? "The graph was truncated by the instrumentation's node limit."
      : run.graphNodes.length === 0
        ? "No graph structure for this run (no workflow_started event with a graph)."
        : "";
  }

  // Nodes whose parent is another node of this graph are drawn inside it; the
  // others (parent unset, or the workflow itself) are top level.
  function parentOf(run, byId) {
    const parents = new Map();
    for (const node of run.graphNodes) {
      let parent = node.parent && byId.has(node.parent) && node.parent !== node.id ? node.parent : "";
      // A cycle of parents cannot be drawn nested, so such nodes go to the top level.
      let hops = 0;
      for (let p = parent; p && hops <= byId.size; p = byId.get(p).parent, hops++) {
        if (!byId.has(p)) {
          break;
        }
      }
      if (hops > byId.size) {
        parent = "";
      }
      parents.set(node.id, parent);
    }
    return parents;
  }

  function layoutGraph(run) {
    const byId = new Map(run.graphNodes.map((node) => [node.id, node]));
    const parents = parentOf(run, byId);
    const members = new Map();
    for (const node of run.graphNodes) {
      const parent = parents.get(node.id);
      if (!members.has(parent)) {
        members.set(parent, []);
      }
      members.get(parent).push(node);
    }
    const boxes = new Map();
    const busy = new Set();

    function layoutGroup(parentId) {
      const group = members.get(parentId) || [];
      const ids = new Set(group.map((node) => node.id));
      const sizes = new Map();
      for (const node of group) {
        if (members.has(node.id) && !busy.has(node.id)) {
          busy.add(node.id);
          const inner = layoutGroup(node.id);
          sizes.set(node.id, {
            w: Math.max(NODE_W, inner.w + 2 * GROUP_PAD),
            h: inner.h + GROUP_HEAD + GROUP_PAD,
            inner: inner,
          });
        } else {
          sizes.set(node.id, { w: NODE_W, h: NODE_H, inner: null });
        }
      }

      // Breadth-first depth from the start node decides the column.
      const depth = new Map();
      const order = [...group].sort((a, b) => Number(b.start) - Number(a.start));
      for (const root of order) {
        if (depth.has(root.id)) {
          continue;
        }
        depth.set(root.id, 0);
        const queue = [root.id];
        while (queue.length > 0) {
          const current = queue.shift();
          for (const edge of run.graphEdges) {
            if (edge.source === current && ids.has(edge.target) && !depth.has(edge.target)) {
              depth.set(edge.target, depth.get(current) + 1);
              queue.push(edge.target);
            }
          }
        }
      }
      const columnCount = Math.max(0, ...depth.values()) + 1;
      const columns = Array.from({ length: group.length ? columnCount : 0 }, () => []);
      for (const node of group) {
        columns[depth.get(node.id)].push(node);
      }

      const placed = [];
      let x = 0;
      let height = 0;
      const columnHeights = columns.map((column) =>
        column.reduce((sum, node) => sum + sizes.get(node.id).h, 0) +
        GAP_Y * Math.max(0, column.length - 1)
      );
      const maxHeight = Math.max(0, ...columnHeights);
      columns.forEach((column, index) => {
        if (column.length === 0) {
          return;
        }
        const width = Math.max(...column.map((node) => sizes.get(node.id).w));
        let y = (maxHeight - columnHeights[index]) / 2;
        for (const node of column) {
          const size = sizes.get(node.id);
          placed.push({ id: node.id, x: x + (width - size.w) / 2, y: y, w: size.w, h: size.h, inner: size.inner });
          y += size.h + GAP_Y;
        }
        x += width + GAP_X;
        height = Math.max(height, y - GAP_Y);
      });
      return { w: Math.max(0, x - GAP_X), h: height, placed: placed };
    }

    function place(layout, offsetX, offsetY, level) {
      for (const item of layout.placed) {
        const box = { x: offsetX + item.x, y: offsetY + item.y, w: item.w, h: item.h, group: !!item.inner, level: level };
        boxes.set(item.id, box);
        if (item.inner) {
          place(item.inner, box.x + GROUP_PAD + (item.w - 2 * GROUP_PAD - item.inner.w) / 2, box.y + GROUP_HEAD, level + 1);
        }
      }
    }

    const top = layoutGroup("");
    place(top, MARGIN, MARGIN, 0);
    return { boxes: boxes, width: top.w + 2 * MARGIN, height: top.h + 2 * MARGIN + 30 };
  }

  function edgePath(from, to, selfLoop) {
    if (selfLoop) {
      const x = from.x + from.w;
      const y = from.y + 14;
      return { d: `M ${x} ${y} C ${x + 40} ${y - 26}, ${x + 40} ${y + 34}, ${x} ${y + 20}`, lx: x + 34, ly: y + 4 };
    }
    if (to.x >= from.x + from.w) {
      const x1 = from.x + from.w;
      const y1 = from.y + Math.min(from.h / 2, NODE_H / 2);
      const x2 = to.x;
      const y2 = to.y + Math.min(to.h / 2, NODE_H / 2);
      const bend = Math.max(24, (x2 - x1) / 2);
      return {
        d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        lx: (x1 + x2) / 2,
        ly: (y1 + y2) / 2 - 5,
      };
    }
    // A back edge (a loop in the graph) or an edge into the same column goes below.
    const x1 = from.x + from.w / 2;
    const y1 = from.y + from.h;
    const x2 = to.x + to.w / 2;
    const y2 = to.y + to.h;
    const dip = Math.max(y1, y2) + 28;
    return {
      d: `M ${x1} ${y1} C ${x1} ${dip}, ${x2} ${dip}, ${x2} ${y2}`,
      lx: (x1 + x2) / 2,
      ly: dip - 4,
    };
  }

  function buildGraph(run) {
    const container = el("graph");
    container.dataset.runId = run.id;
    view.nodeElements.clear();
    view.edgeElements.clear();
    if (run.graphNodes.length === 0) {
      container.replaceChildren();
      return;
    }
    const layout = layoutGraph(run);
    const root = svg("svg", {
      width: layout.width,
      height: layout.height,
      viewBox: `0 0 ${layout.width} ${layout.height}`,
      role: "img",
      "aria-label": "workflow graph",
    });
    const defs = svg("defs");
    const marker = svg("marker", {
      id: "arrow",
      viewBox: "0 0 10 10",
      refX: 9,
      refY: 5,
      markerWidth: 7,
      markerHeight: 7,
      orient: "auto-start-reverse",
    });
    marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }));
    defs.append(marker);
    root.append(defs);

    const byId = new Map(run.graphNodes.map((node) => [node.id, node]));
    const groups = [...layout.boxes.entries()].sort((a, b) => a[1].level - b[1].level);
    const nodeLayer = svg("g", { class: "nodes" });
    for (const [nodeId, box] of groups) {
      nodeLayer.append(buildNode(byId.get(nodeId), box));
    }

    const edgeLayer = svg("g", { class: "edges" });
    for (const edge of run.graphEdges) {
      const from = layout.boxes.get(edge.source);
      const to = layout.boxes.get(edge.target);
      if (!from || !to) {
        continue;
      }
      const shape = edgePath(from, to, edge.source === edge.target);
      const group = svg("g", {
        class: "edge",
        "data-source": edge.source,
        "data-target": edge.target,
        "data-action": edge.action,
      });
      group.append(svg("path", { d: shape.d, "marker-end": "url(#arrow)" }));
      group.append(svgText(shorten(edge.action, 24), { x: shape.lx, y: shape.ly, class: "edge-label", "text-anchor": "middle" }));
      edgeLayer.append(group);
      view.edgeElements.set(edgeKey(edge), group);
    }
    // Edges go on top, so that edges between the members of a group box stay visible.
    root.append(nodeLayer, edgeLayer);
    container.replaceChildren(root);
  }

  function buildNode(node, box) {
    const group = svg("g", {
      class: box.group ? "node group" : "node",
      transform: `translate(${box.x} ${box.y})`,
      "data-node-id": node.id,
      "data-node-type": node.type,
      "data-state": "waiting",
    });
    const title = svg("title");
    title.textContent = node.id + " (" + node.type + ")";
    group.append(title);
    group.append(svg("rect", { width: box.w, height: box.h, rx: 7, ry: 7 }));
    const maxChars = Math.floor((box.w - 20) / CHAR_W);
    const label = svgText(shorten(node.id, maxChars), { x: 10, y: 20, class: "node-id" });
    group.append(label);
    if (box.group) {
      // A group box has room for one header line: the id, then the type.
      const type = svg("tspan", { class: "node-type", dx: 8 });
      type.textContent = shorten(node.type, Math.max(4, maxChars - node.id.length - 2));
      label.append(type);
    } else {
      group.append(svgText(shorten(node.type, maxChars), { x: 10, y: 38, class: "node-type" }));
    }
    const badge = box.group
      ? svgText("", { x: box.w - 8, y: 20, class: "node-badge", "text-anchor": "end" })
      : svgText("", { x: 10, y: 54, class: "node-badge" });
    group.append(badge);
    view.nodeElements.set(node.id, { group: group, title: title, badge: badge, node: node });
    return group;
  }

  function updateGraph(run) {
    for (const [nodeId, parts] of view.nodeElements) {
      const node = run.nodes.get(nodeId);
      const state = node ? node.state : "waiting";
      if (parts.group.dataset.state !== state) {
        parts.group.dataset.state = state;
      }
      const badge = node ? nodeBadge(node) : "";
      if (parts.badge.textContent !== badge) {
        parts.badge.textContent = badge;
      }
      if (node) {
        parts.group.dataset.retries = String(node.retries);
        parts.group.dataset.itemsDone = String(node.itemsDone);
        parts.group.dataset.itemsFailed = String(node.itemsFailed);
        const tip = parts.node.id + " (" + parts.node.type + "): " + state +
          (node.lastError ? "\n" + node.lastError : "");
        if (parts.title.textContent !== tip) {
          parts.title.textContent = tip;
        }
      }
    }
    for (const [key, group] of view.edgeElements) {
      group.classList.toggle("taken", run.takenEdges.has(key));
    }
  }

  function renderExtraNodes(run) {
    const inGraph = new Set(run.graphNodes.map((node) => node.id));
    const items = [];
    for (const node of run.nodes.values()) {
      if (inGraph.has(node.id)) {
        continue;
      }
      const item = document.createElement("li");
      item.className = "extra-node";
      item.dataset.nodeId = node.id;
      item.dataset.state = node.state;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      const label = document.createElement("span");
      label.className = "extra-label";
      label.textContent = node.id + (node.type ? " (" + node.type + ")" : "");
      const state = document.createElement("span");
      state.className = "extra-state";
      const badge = nodeBadge(node);
      state.textContent = node.state + (badge ? " \u00b7 " + badge : "");
      item.append(swatch, label, state);
      if (node.lastError) {
        item.title = node.lastError;
      }
      items.push(item);
    }
    el("extra-nodes").replaceChildren(...items);
    el("extra-nodes").parentElement.hidden = items.length === 0;
  }

  function addLogRow(event, data, time) {
    const row = document.createElement("tr");
    row.dataset.eventId = text(event.event_id);
    row.dataset.eventName = text(event.event_name);
    row.dataset.state = text(data.state);
    const error = data.error && typeof data.error === "object"
      ? [text(data.error.type), text(data.error.message)].filter(Boolean).join(": ")
      : "";
    const cells = [
      formatTime(time),
      shorten(event.correlation_id, 10),
      text(event.node_id) + (Number.isInteger(data.item_index) ? " [" + data.item_index + "]" : ""),
      text(event.event_name),
      text(data.state),
      error,
    ];
    for (const value of cells) {
      const cell = document.createElement("td");
      cell.textContent = value;
      row.append(cell);
    }
    row.children[1].title = text(event.correlation_id);
    if (error) {
      row.classList.add("has-error");
    }
    const log = el("event-log");
    log.prepend(row);
    while (log.childElementCount > MAX_LOG_ROWS) {
      log.lastElementChild.remove();
    }
  }

  // ---- loading and streaming ----------------------------------------------------

  async function loadState() {
    loading = true;
    pending = [];
    try {
      const response = await fetch(apiUrl("/api/state", { limit: STATE_LIMIT }), { cache: "no-store" });
      if (!response.ok) {
        throw new Error("GET /api/state returned HTTP " + response.status);
      }
      const body = await response.json();
      const events = Array.isArray(body.events) ? body.events : [];
      resetModel();
      const logFrom = Math.max(0, events.length - MAX_LOG_ROWS);
      events.forEach((event, index) => applyEvent(event, { log: index >= logFrom }));
    } finally {
      loading = false;
      const queued = pending;
      pending = [];
      queued.forEach((event) => applyEvent(event));
    }
    scheduleRender();
  }

  function handleMessage(message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (error) {
      console.warn("kaygraph-otel: ignored an event that is not JSON", error);
      return;
    }
    if (loading) {
      if (pending.length < MAX_PENDING) {
        pending.push(event);
      }
      return;
    }
    applyEvent(event);
  }

  function handleReset() {
    // The server no longer has the events this page missed: reload everything.
    setStatus("loading", "reloading");
    loadState()
      .then(() => setStatus("live", "live"))
      .catch((error) => {
        console.error("kaygraph-otel: reloading state failed", error);
        restart();
      });
  }

  function openStream() {
    const params = model.lastEventId ? { last_event_id: model.lastEventId } : {};
    source = new EventSource(apiUrl("/api/events", params));
    source.onopen = () => setStatus("live", "live");
    source.onmessage = handleMessage;
    source.addEventListener("reset", handleReset);
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        restart();
      } else {
        setStatus("reconnecting", "reconnecting\u2026");
      }
    };
  }

  function restart() {
    if (source) {
      source.close();
      source = null;
    }
    setStatus("disconnected", "disconnected, retrying in " + RETRY_MS / 1000 + " s");
    if (restartTimer === null) {
      restartTimer = window.setTimeout(() => {
        restartTimer = null;
        start();
      }, RETRY_MS);
    }
  }

  async function start() {
    setStatus("connecting", "connecting");
    try {
      await loadState();
    } catch (error) {
      console.error("kaygraph-otel: loading state failed", error);
      restart();
      return;
    }
    openStream();
  }

  document.addEventListener("DOMContentLoaded", () => {
    el("follow-newest").addEventListener("change", (event) => {
      model.follow = event.target.checked;
      scheduleRender();
    });
    start();
  });
})();
