// Small helpers shared by the dashboard's views: DOM and SVG construction, time and
// duration formatting, API URLs and copying text.
//
// Every string that comes from an event reaches the page through textContent,
// setAttribute or a text node, never through an HTML parser, because node ids,
// node types and error messages are chosen by the monitored program.

export const SVG_NS = "http://www.w3.org/2000/svg";

export const token = new URLSearchParams(window.location.search).get("token");

export function byId(id) {
  return document.getElementById(id);
}

export function text(value) {
  return value === undefined || value === null ? "" : String(value);
}

export function shorten(value, maxChars) {
  const s = text(value);
  return s.length > maxChars ? s.slice(0, Math.max(1, maxChars - 1)) + "\u2026" : s;
}

// Creates an HTML element. Attributes whose name starts with "data-" or "aria-"
// and all others go through setAttribute; children are nodes or plain text.
export function html(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) {
      continue;
    }
    if (name === "className") {
      node.className = value;
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  for (const child of children) {
    if (child === undefined || child === null) {
      continue;
    }
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function svg(name, attributes) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) {
    node.setAttribute(key, String(value));
  }
  return node;
}

export function svgText(content, attributes) {
  const node = svg("text", attributes);
  node.textContent = content;
  return node;
}

// Returns Unix milliseconds with the microseconds that events carry as a fraction.
// Date.parse keeps at most milliseconds, so the seconds' fraction is added apart.
export function parseTime(value) {
  if (typeof value !== "string") {
    return NaN;
  }
  const fraction = /\.(\d+)/.exec(value);
  const whole = Date.parse(value.replace(/\.\d+/, ""));
  return fraction ? whole + Number("0." + fraction[1]) * 1000 : whole;
}

export function formatClock(ms) {
  return Number.isFinite(ms) ? new Date(ms).toISOString().slice(11, 23) : "";
}

export function formatDuration(ms) {
  if (!Number.isFinite(ms)) {
    return "";
  }
  if (ms < 1) {
    return ms.toFixed(2) + " ms";
  }
  if (ms < 1000) {
    return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + " ms";
  }
  if (ms < 60000) {
    return (ms / 1000).toFixed(ms < 10000 ? 2 : 1) + " s";
  }
  const minutes = Math.floor(ms / 60000);
  return minutes + " min " + Math.round((ms % 60000) / 1000) + " s";
}

export function apiUrl(path, params) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    url.searchParams.set(name, value);
  }
  if (token) {
    url.searchParams.set("token", token);
  }
  return url.pathname + url.search;
}

export async function fetchJson(path, params) {
  const response = await fetch(apiUrl(path, params), { cache: "no-store" });
  if (!response.ok) {
    throw new Error("GET " + path + " returned HTTP " + response.status);
  }
  return response.json();
}

// Copies text with the Clipboard API where the page may use it, and otherwise
// through a temporary text area and document.execCommand("copy"). Returns the
// method that worked; throws when neither did.
export async function copyText(value) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(value);
      return "clipboard";
    } catch (error) {
      console.warn("kaygraph-otel: Clipboard API failed, trying the fallback", error);
    }
  }
  const area = html("textarea", { readonly: true, className: "copy-buffer", "aria-hidden": "true" });
  area.value = value;
  document.body.append(area);
  area.select();
  let copied = false;
  try {
    copied = document.execCommand("copy");
  } finally {
    area.remove();
  }
  if (!copied) {
    throw new Error("copying failed: the browser rejected document.execCommand(\"copy\")");
  }
  return "fallback";
}
