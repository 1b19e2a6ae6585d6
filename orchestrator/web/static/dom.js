// DOM and formatting helpers shared by the views: text only ever goes through textContent.
export const $ = (sel) => document.querySelector(sel);

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "value") el.value = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export const sum = (obj, keys) => keys.reduce((a, k) => a + (obj[k] || 0), 0);

export function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

/** "in 42 s", "in 3 min": how long until ts (Unix seconds). */
export function until(ts) {
  const s = Math.max(0, ts - Date.now() / 1000);
  if (s < 90) return `in ${Math.ceil(s)} s`;
  if (s < 5400) return `in ${Math.round(s / 60)} min`;
  return `in ${(s / 3600).toFixed(1)} h`;
}

export function duration(s) {
  if (!s) return "0 s";
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${+(s / 60).toFixed(1)} min`;
  return `${+(s / 3600).toFixed(1)} h`;
}

export const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "—");

export function size(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

export function flash(text, isError = false) {
  const el = $("#flash");
  el.textContent = text;
  el.className = isError ? "flash error" : "flash";
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

export const badge = (text, cls = text) => h("span", { class: `badge ${cls}`, text });
const th = (c) => (Array.isArray(c) ? h("th", { text: c[0], class: c[1] }) : h("th", { text: c }));
export const table = (head, rows, attrs = {}) => h("div", { class: "table-wrap" },
  h("table", attrs, h("thead", {}, h("tr", {}, head.map(th))), h("tbody", {}, rows)));

export function option(value, label, selected) {
  return h("option", { value, selected: value === selected, text: label });
}

/** A definition list from [term, value] pairs (values are text or nodes). */
export const facts = (pairs, attrs = {}) => h("dl", { class: "facts", ...attrs },
  ...pairs.flatMap(([k, v]) => [h("dt", { text: k }), v instanceof Node ? h("dd", {}, v) : h("dd", { text: v })]));

/** "a, b ,c" -> ["a", "b", "c"] */
// A system update's components (issue 18) with their states, in installation order.
export const components = (list) => h("span", { class: "components" },
  list.map((c) => h("span", { "data-component": c.name, "data-component-state": c.state },
    c.name, " ", badge(c.state), " ")));
export const words = (text) => text.split(/[,\s]+/).map((w) => w.trim()).filter(Boolean);

/**
 * What a device's failing steps printed (issue 18): hostile text, so set as textContent
 * only (h's "text"), in <pre> blocks; the orchestrator cleaned it of control characters.
 */
export function outputTail(outputs, attrs = {}) {
  if (!outputs || !outputs.length) return null;
  return h("div", { class: "output-tail", ...attrs }, outputs.flatMap((o) => [
    h("p", { class: "muted small", text: `${o.step}: the end of ${size(o.printed)} printed` }),
    ...["stdout", "stderr"].filter((s) => o[s]).map((s) =>
      h("pre", { class: `output ${s}`, "data-step": o.step, "data-stream": s, text: o[s] }))]));
}
