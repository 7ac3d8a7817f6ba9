// The workflow graph of the selected run: nodes coloured by state, edges labelled
// with their action and how often they were taken, nested graphs drawn as boxes
// around their nodes.
//
// Layout comes from ELK's layered algorithm (elkjs, loaded as the global ELK from
// /static/vendor/elk.bundled.js, which `make install` builds). When that file is
// missing, a plain column layout by distance from the start node is used instead,
// and the note under the graph reports it.

import { edgeKey, nodeBadge } from "./model.js";
import { byId, html, shorten, svg, svgText } from "./util.js";

const NODE_H = 74;
const MIN_NODE_W = 200;
const MAX_NODE_W = 270;
const CHAR_W = 7.3;
const GROUP_HEAD = 34;
const GROUP_PAD = 14;
const LABEL_CHAR_W = 6.4;
const LABEL_H = 16;
const MAX_ACTION_CHARS = 28;
// A graph wider than its panel is scaled down to fit, but never below this
// factor, so that labels stay readable. Below it, the panel scrolls.
const MIN_SCALE = 0.6;
// The graph is laid out left to right and top to bottom, and the direction that
// fits the panel (its width by this height) at the larger scale is drawn.
const FIT_HEIGHT = 520;

const ELK_OPTIONS = {
  "elk.algorithm": "layered",
  "elk.hierarchyHandling": "INCLUDE_CHILDREN",
  "elk.padding": "[top=18,left=18,bottom=18,right=18]",
  "elk.spacing.nodeNode": "28",
  "elk.spacing.edgeLabel": "3",
  "elk.spacing.edgeNode": "16",
  "elk.layered.spacing.nodeNodeBetweenLayers": "40",
  "elk.layered.spacing.edgeNodeBetweenLayers": "12",
  "elk.layered.considerModelOrder.strategy": "NODES_AND_EDGES",
  "elk.layered.cycleBreaking.strategy": "DEPTH_FIRST",
  "elk.layered.nodePlacement.strategy": "BRANDES_KOEPF",
};

let elk = null;

function layoutEngine() {
  if (elk === null && typeof window.ELK === "function") {
    elk = new window.ELK();
  }
  return elk;
}

// ELK's first layout is slow while the browser compiles its code, so a tiny graph
// is laid out when the page loads and the first workflow is drawn sooner.
export function warmUpLayout() {
  const engine = layoutEngine();
  if (engine !== null) {
    engine
      .layout({ id: "warm-up", layoutOptions: ELK_OPTIONS, children: [{ id: "a", width: 10, height: 10 }, { id: "b", width: 10, height: 10 }], edges: [{ id: "e", sources: ["a"], targets: ["b"] }] })
      .catch((error) => console.warn("kaygraph-otel: ELK warm-up failed", error));
  }
}

function nodeWidth(node) {
  const wanted = Math.max(node.id.length * CHAR_W, node.type.length * 6.2) + 26;
  return Math.round(Math.min(MAX_NODE_W, Math.max(MIN_NODE_W, wanted)));
}

// Nodes whose parent is another node of this graph are drawn inside it; the
// others (parent unset, or the workflow itself) are top level. A cycle of
// parents cannot be drawn nested, so such nodes go to the top level too.
function parentsOf(run) {
  const byNode = new Map(run.graphNodes.map((node) => [node.id, node]));
  const parents = new Map();
  for (const node of run.graphNodes) {
    let parent = node.parent && byNode.has(node.parent) && node.parent !== node.id ? node.parent : "";
    const visited = new Set([node.id]);
    for (let p = parent; p; p = byNode.has(p) ? byNode.get(p).parent : "") {
      if (visited.has(p)) {
        parent = "";
        break;
      }
      visited.add(p);
    }
    parents.set(node.id, parent);
  }
  return parents;
}

function elkGraph(run, direction) {
  const parents = parentsOf(run);
  const members = new Map();
  for (const node of run.graphNodes) {
    const parent = parents.get(node.id);
    if (!members.has(parent)) {
      members.set(parent, []);
    }
    // The start node first, so that ELK's model order puts it at the left.
    members.get(parent)[node.start ? "unshift" : "push"](node);
  }
  function elkNode(node) {
    const inner = members.get(node.id);
    if (inner && inner.length > 0) {
      // Wide enough for the header line: id, type and state.
      const headerWidth = Math.round((node.id.length + node.type.length) * CHAR_W + 120);
      return {
        id: node.id,
        children: inner.map(elkNode),
        layoutOptions: {
          "elk.padding": `[top=${GROUP_HEAD},left=${GROUP_PAD},bottom=${GROUP_PAD},right=${GROUP_PAD}]`,
          "elk.nodeSize.constraints": "MINIMUM_SIZE",
          "elk.nodeSize.minimum": `(${Math.min(headerWidth, 2 * MAX_NODE_W)}, ${NODE_H})`,
        },
      };
    }
    return { id: node.id, width: nodeWidth(node), height: NODE_H };
  }
  const edges = run.graphEdges
    .filter((edge) => parents.has(edge.source) && parents.has(edge.target))
    .map((edge, index) => ({
      id: "e" + index,
      sources: [edge.source],
      targets: [edge.target],
      labels: [{
        text: edge.action,
        // Room for the action and a short count such as "×12".
        width: Math.round((Math.min(edge.action.length, MAX_ACTION_CHARS) + 3.5) * LABEL_CHAR_W),
        height: LABEL_H,
      }],
      edge: edge,
    }));
  return {
    id: "__root__",
    layoutOptions: { ...ELK_OPTIONS, "elk.direction": direction },
    children: (members.get("") || []).map(elkNode),
    edges: edges,
  };
}

function readElkLayout(result, edgesById) {
  const boxes = new Map();
  function walk(node, offsetX, offsetY, depth) {
    for (const child of node.children || []) {
      const x = offsetX + child.x;
      const y = offsetY + child.y;
      const group = Array.isArray(child.children) && child.children.length > 0;
      boxes.set(child.id, { x: x, y: y, w: child.width, h: child.height, group: group, depth: depth });
      walk(child, x, y, depth + 1);
    }
  }
  walk(result, 0, 0, 0);
  const edges = [];
  for (const laid of result.edges || []) {
    const origin = boxes.get(laid.container) || { x: 0, y: 0 };
    const points = [];
    for (const section of laid.sections || []) {
      points.push(section.startPoint, ...(section.bendPoints || []), section.endPoint);
    }
    const label = (laid.labels || [])[0];
    edges.push({
      edge: edgesById.get(laid.id),
      points: points.map((p) => ({ x: origin.x + p.x, y: origin.y + p.y })),
      label: label ? { x: origin.x + label.x, y: origin.y + label.y, w: label.width } : null,
    });
  }
  return { boxes: boxes, edges: edges, width: result.width, height: result.height };
}

// Flat columns by breadth-first distance from the start nodes, with straight edges.
function columnLayout(run) {
  const depth = new Map();
  const ordered = [...run.graphNodes].sort((a, b) => Number(b.start) - Number(a.start));
  for (const root of ordered) {
    if (depth.has(root.id)) {
      continue;
    }
    depth.set(root.id, 0);
    const queue = [root.id];
    while (queue.length > 0) {
      const current = queue.shift();
      for (const edge of run.graphEdges) {
        if (edge.source === current && !depth.has(edge.target)) {
          depth.set(edge.target, depth.get(current) + 1);
          queue.push(edge.target);
        }
      }
    }
  }
  const boxes = new Map();
  const rows = new Map();
  for (const node of run.graphNodes) {
    const column = depth.get(node.id) || 0;
    const row = rows.get(column) || 0;
    rows.set(column, row + 1);
    boxes.set(node.id, { x: 18 + column * (MAX_NODE_W + 50), y: 18 + row * (NODE_H + 24), w: MAX_NODE_W, h: NODE_H, group: false, depth: 0 });
  }
  const edges = run.graphEdges
    .filter((edge) => boxes.has(edge.source) && boxes.has(edge.target))
    .map((edge) => {
      const a = boxes.get(edge.source);
      const b = boxes.get(edge.target);
      const from = { x: a.x + a.w, y: a.y + a.h / 2 };
      const to = { x: b.x, y: b.y + b.h / 2 };
      return { edge: edge, points: [from, to], label: { x: (from.x + to.x) / 2 - 20, y: (from.y + to.y) / 2 - 16, w: 40 } };
    });
  let width = 0;
  let height = 0;
  for (const box of boxes.values()) {
    width = Math.max(width, box.x + box.w + 18);
    height = Math.max(height, box.y + box.h + 18);
  }
  return { boxes: boxes, edges: edges, width: width, height: height };
}

function fitScale(layout, availableWidth) {
  return Math.min(1, availableWidth / layout.width, FIT_HEIGHT / layout.height);
}

async function elkLayout(engine, run, direction) {
  const graph = elkGraph(run, direction);
  const edgesById = new Map(graph.edges.map((edge) => [edge.id, edge.edge]));
  for (const edge of graph.edges) {
    delete edge.edge;
  }
  return readElkLayout(await engine.layout(graph), edgesById);
}

async function computeLayout(run, availableWidth) {
  const engine = layoutEngine();
  if (engine === null) {
    return { layout: columnLayout(run), note: "The graph layout library is missing (run `make install`); showing a simple column layout." };
  }
  try {
    const [across, down] = await Promise.all([
      elkLayout(engine, run, "RIGHT"),
      elkLayout(engine, run, "DOWN"),
    ]);
    const best = fitScale(down, availableWidth) > fitScale(across, availableWidth) ? down : across;
    return { layout: best, note: "" };
  } catch (error) {
    console.error("kaygraph-otel: ELK layout failed, using the column layout", error);
    return { layout: columnLayout(run), note: "The graph layout failed; showing a simple column layout." };
  }
}

// Characters of badge text that fit on a node's bottom line.
function badgeChars(parts) {
  return Math.max(4, Math.floor((parts.box.w - 24) / 6.0));
}

function pathData(points) {
  return points.map((p, index) => (index === 0 ? "M " : "L ") + p.x.toFixed(1) + " " + p.y.toFixed(1)).join(" ");
}

export class GraphView {
  constructor(onSelectNode) {
    this.container = byId("graph");
    this.note = byId("graph-note");
    this.extraList = byId("extra-nodes");
    this.onSelectNode = onSelectNode;
    this.runId = null;
    this.graphVersion = -1;
    this.layoutNote = "";
    this.nodeElements = new Map();
    this.edgeElements = [];
    this.pending = 0;
    this.size = null;
    new ResizeObserver(() => this.fit()).observe(this.container);
    this.container.addEventListener("click", (event) => this.handleClick(event));
    this.container.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        this.handleClick(event);
      }
    });
  }

  handleClick(event) {
    const group = event.target.closest("g.node");
    if (group && this.container.contains(group)) {
      event.preventDefault();
      this.onSelectNode(group.dataset.nodeId);
    }
  }

  render(run, selectedNodeId) {
    if (!run) {
      this.clear();
      return;
    }
    if (this.runId !== run.id || this.graphVersion !== run.graphVersion) {
      this.runId = run.id;
      this.graphVersion = run.graphVersion;
      this.rebuild(run, selectedNodeId);
    }
    this.update(run, selectedNodeId);
    this.renderExtraNodes(run, selectedNodeId);
    this.renderNote(run);
  }

  clear() {
    this.runId = null;
    this.graphVersion = -1;
    this.nodeElements.clear();
    this.edgeElements = [];
    this.container.replaceChildren();
    this.container.dataset.runId = "";
    this.extraList.replaceChildren();
    this.extraList.parentElement.hidden = true;
    this.note.textContent = "";
  }

  rebuild(run, selectedNodeId) {
    const ticket = ++this.pending;
    this.container.dataset.runId = run.id;
    this.container.dataset.layout = "pending";
    if (run.graphNodes.length === 0) {
      this.nodeElements.clear();
      this.edgeElements = [];
      this.container.replaceChildren();
      this.container.dataset.layout = "empty";
      return;
    }
    computeLayout(run, Math.max(300, this.container.clientWidth - 2)).then(({ layout, note }) => {
      // A newer run or graph version may have been requested meanwhile.
      if (ticket !== this.pending) {
        return;
      }
      this.layoutNote = note;
      this.draw(run, layout);
      this.container.dataset.layout = note ? "fallback" : "elk";
      this.update(run, selectedNodeId);
      this.renderNote(run);
    });
  }

  draw(run, layout) {
    const byNode = new Map(run.graphNodes.map((node) => [node.id, node]));
    const root = svg("svg", {
      viewBox: `0 0 ${Math.ceil(layout.width)} ${Math.ceil(layout.height)}`,
      role: "img",
      "aria-label": "workflow graph",
    });
    this.size = { width: Math.ceil(layout.width), height: Math.ceil(layout.height) };
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
    const defs = svg("defs");
    defs.append(marker);

    this.nodeElements.clear();
    const groupLayer = svg("g", { class: "groups" });
    const nodeLayer = svg("g", { class: "nodes" });
    const boxes = [...layout.boxes.entries()].sort((a, b) => a[1].depth - b[1].depth);
    for (const [nodeId, box] of boxes) {
      const node = byNode.get(nodeId);
      if (node) {
        (box.group ? groupLayer : nodeLayer).append(this.buildNode(node, box));
      }
    }

    const edgeLayer = svg("g", { class: "edges" });
    this.edgeElements = [];
    for (const laid of layout.edges) {
      if (!laid.edge || laid.points.length < 2) {
        continue;
      }
      const edge = laid.edge;
      const group = svg("g", {
        class: "edge",
        "data-source": edge.source,
        "data-target": edge.target,
        "data-action": edge.action,
        "data-count": "0",
      });
      const title = svg("title");
      title.textContent = edge.source + " \u2192 " + edge.target + " on \u201c" + edge.action + "\u201d";
      group.append(title, svg("path", { d: pathData(laid.points), "marker-end": "url(#arrow)" }));
      let count = null;
      if (laid.label) {
        const x = laid.label.x + 2;
        const y = laid.label.y + LABEL_H - 4;
        const label = svgText(shorten(edge.action, MAX_ACTION_CHARS), { x: x, y: y, class: "edge-label" });
        count = svgText("", { x: x + Math.min(edge.action.length, MAX_ACTION_CHARS) * LABEL_CHAR_W + 6, y: y, class: "edge-count" });
        group.append(label, count);
      }
      edgeLayer.append(group);
      this.edgeElements.push({ group: group, count: count, title: title, key: edgeKey(edge.source, edge.action, edge.target), edge: edge });
    }
    root.append(defs, groupLayer, nodeLayer, edgeLayer);
    this.container.replaceChildren(root);
    this.fit();
  }

  fit() {
    const root = this.container.querySelector("svg");
    if (!root || !this.size) {
      return;
    }
    const available = this.container.clientWidth - 2;
    const scale = available > 0 ? Math.min(1, Math.max(MIN_SCALE, available / this.size.width)) : 1;
    root.setAttribute("width", String(Math.floor(this.size.width * scale)));
    root.setAttribute("height", String(Math.floor(this.size.height * scale)));
    this.container.dataset.scale = scale.toFixed(2);
  }

  buildNode(node, box) {
    const group = svg("g", {
      class: box.group ? "node group" : "node",
      transform: `translate(${box.x.toFixed(1)} ${box.y.toFixed(1)})`,
      "data-node-id": node.id,
      "data-node-type": node.type,
      "data-state": "waiting",
      tabindex: "0",
      role: "button",
      "aria-label": "node " + node.id,
    });
    const title = svg("title");
    group.append(title, svg("rect", { class: "node-box", width: box.w, height: box.h, rx: 8, ry: 8 }));
    const maxChars = Math.max(4, Math.floor((box.w - 24) / CHAR_W));
    let stateLabel;
    let badge;
    if (box.group) {
      const label = svgText(shorten(node.id, maxChars), { x: 12, y: 21, class: "node-id" });
      const type = svg("tspan", { class: "node-type", dx: 8 });
      type.textContent = shorten(node.type, Math.max(4, maxChars - node.id.length - 10));
      label.append(type);
      stateLabel = svgText("waiting", { x: box.w - 10, y: 21, class: "node-state", "text-anchor": "end" });
      badge = svgText("", { x: 12, y: box.h - 6, class: "node-badge" });
      group.append(label, stateLabel, badge);
    } else {
      group.append(svg("rect", { class: "node-stripe", width: 5, height: box.h - 12, x: 0, y: 6, rx: 2 }));
      group.append(svgText(shorten(node.id, maxChars), { x: 14, y: 21, class: "node-id" }));
      group.append(svgText(shorten(node.type, Math.floor((box.w - 24) / 6.2)), { x: 14, y: 38, class: "node-type" }));
      stateLabel = svgText("waiting", { x: 14, y: 54, class: "node-state" });
      badge = svgText("", { x: 14, y: 68, class: "node-badge" });
      group.append(stateLabel, badge);
    }
    this.nodeElements.set(node.id, { group: group, title: title, stateLabel: stateLabel, badge: badge, box: box, node: node });
    return group;
  }

  update(run, selectedNodeId) {
    for (const [nodeId, parts] of this.nodeElements) {
      const node = run.nodes.get(nodeId);
      const state = node ? node.state : "waiting";
      if (parts.group.dataset.state !== state) {
        parts.group.dataset.state = state;
        parts.stateLabel.textContent = state === "handled" ? "error handled" : state;
      }
      const badge = node ? shorten(nodeBadge(node), badgeChars(parts)) : "";
      if (parts.badge.textContent !== badge) {
        parts.badge.textContent = badge;
      }
      parts.group.classList.toggle("selected", nodeId === selectedNodeId);
      if (node) {
        parts.group.dataset.retries = String(node.retries);
        parts.group.dataset.itemsDone = String(node.itemsDone);
        parts.group.dataset.itemsFailed = String(node.itemsFailed);
        parts.group.dataset.executions = String(node.executions);
      }
      const fullBadge = node ? nodeBadge(node) : "";
      const tip = parts.node.id + " (" + parts.node.type + "): " + state +
        (fullBadge ? " \u00b7 " + fullBadge : "") + (node && node.lastError ? "\n" + node.lastError : "");
      if (parts.title.textContent !== tip) {
        parts.title.textContent = tip;
      }
    }
    for (const item of this.edgeElements) {
      const count = run.transitions.get(item.key) || 0;
      if (item.group.dataset.count !== String(count)) {
        item.group.dataset.count = String(count);
        item.group.classList.toggle("taken", count > 0);
        if (item.count) {
          item.count.textContent = count > 0 ? "\u00d7" + count : "";
        }
        item.title.textContent = item.edge.source + " \u2192 " + item.edge.target + " on \u201c" +
          item.edge.action + "\u201d, taken " + count + (count === 1 ? " time" : " times");
      }
    }
  }

  renderExtraNodes(run, selectedNodeId) {
    const items = [];
    for (const node of run.nodes.values()) {
      if (run.graphIds.has(node.id)) {
        continue;
      }
      const badge = nodeBadge(node);
      const item = html(
        "li",
        { className: "extra-node" + (node.id === selectedNodeId ? " selected" : ""), "data-node-id": node.id, "data-state": node.state },
        html("span", { className: "swatch" }),
        html("button", { type: "button", className: "link extra-label" }, node.id + (node.type ? " (" + node.type + ")" : "")),
        html("span", { className: "extra-state" }, node.state + (badge ? " \u00b7 " + badge : ""))
      );
      if (node.lastError) {
        item.title = node.lastError;
      }
      item.querySelector("button").addEventListener("click", () => this.onSelectNode(node.id));
      items.push(item);
    }
    this.extraList.replaceChildren(...items);
    this.extraList.parentElement.hidden = items.length === 0;
  }

  renderNote(run) {
    let note = this.layoutNote;
    if (run.graphTruncated) {
      note = "The graph was truncated by the instrumentation's node limit. " + note;
    } else if (run.graphNodes.length === 0) {
      note = run.eventCount === 0
        ? "Loading this run\u2026"
        : "No graph structure for this run (no workflow_started event with a graph).";
    }
    this.note.textContent = note.trim();
  }
}
