// Small inline-SVG charts: no library, no network.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

/**
 * Horizontal bars: rows of {label, value, part} (part: the online share, drawn darker).
 * The SVG scales to its container's width.
 */
export function barChart(rows, { title = "", unit = "" } = {}) {
  const rowH = 28, labelW = 130, width = 600, pad = 8;
  const height = Math.max(1, rows.length) * rowH + pad * 2;
  const root = svg("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart",
    "aria-label": title, preserveAspectRatio: "xMinYMin meet",
  });
  root.append(svg("title", {}, title));
  const max = Math.max(1, ...rows.map((r) => r.value));
  const barW = width - labelW - 60;
  rows.forEach((r, i) => {
    const y = pad + i * rowH;
    const g = svg("g", { "data-label": r.label });
    g.append(svg("text", { x: labelW - 8, y: y + rowH / 2 + 5, "text-anchor": "end", class: "chart-label" },
      r.label.length > 18 ? r.label.slice(0, 17) + "…" : r.label));
    const w = Math.max(2, (r.value / max) * barW);
    g.append(svg("rect", { x: labelW, y: y + 4, width: w, height: rowH - 8, rx: 3, class: "bar" }));
    if (r.part !== undefined) {
      const pw = (r.part / max) * barW;
      g.append(svg("rect", { x: labelW, y: y + 4, width: pw, height: rowH - 8, rx: 3, class: "bar-part" }));
    }
    g.append(svg("text", { x: labelW + w + 6, y: y + rowH / 2 + 5, class: "chart-value" },
      `${r.value}${unit}`));
    root.append(g);
  });
  if (!rows.length) {
    root.append(svg("text", { x: pad, y: rowH, class: "chart-label" }, "no devices yet"));
  }
  return root;
}

/** A donut of {label, value, cls} slices with the total in the middle. */
export function donut(slices, title) {
  const total = slices.reduce((a, s) => a + s.value, 0);
  const root = svg("svg", { viewBox: "0 0 120 120", role: "img", class: "donut", "aria-label": title });
  root.append(svg("title", {}, title));
  const r = 48, c = 2 * Math.PI * r;
  let offset = 0;
  root.append(svg("circle", { cx: 60, cy: 60, r, class: "donut-empty" }));
  for (const s of slices) {
    if (!total || !s.value) continue;
    const len = (s.value / total) * c;
    root.append(svg("circle", {
      cx: 60, cy: 60, r, class: `donut-slice ${s.cls}`,
      "stroke-dasharray": `${len} ${c - len}`, "stroke-dashoffset": -offset,
      transform: "rotate(-90 60 60)",
    }));
    offset += len;
  }
  root.append(svg("text", { x: 60, y: 66, "text-anchor": "middle", class: "donut-total" }, String(total)));
  return root;
}

/**
 * A stacked area chart of a rollout's device states over time: points of
 * {at, succeeded, failed, in_flight, canceled, pending}, drawn bottom to top in that order.
 */
export function timelineChart(points, title) {
  const width = 600, height = 170, left = 34, bottom = 22, top = 6, right = 8;
  const keys = ["succeeded", "failed", "in_flight", "canceled", "pending"];
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", class: "chart timeline",
    "aria-label": title, preserveAspectRatio: "xMinYMin meet" });
  root.append(svg("title", {}, title));
  if (points.length < 2) return root;
  const total = Math.max(1, ...points.map((p) => keys.reduce((a, k) => a + (p[k] || 0), 0)));
  const t0 = points[0].at, t1 = points[points.length - 1].at;
  const x = (t) => left + ((t - t0) / Math.max(1e-9, t1 - t0)) * (width - left - right);
  const y = (n) => top + (1 - n / total) * (height - top - bottom);
  const below = points.map(() => 0);
  for (const k of keys) {
    const upper = points.map((p, i) => below[i] + (p[k] || 0));
    const line = points.map((p, i) => `${x(p.at).toFixed(1)},${y(upper[i]).toFixed(1)}`);
    const back = points.map((p, i) => `${x(p.at).toFixed(1)},${y(below[i]).toFixed(1)}`).reverse();
    root.append(svg("polygon", { points: [...line, ...back].join(" "), class: `area ${k}`, "data-series": k }));
    upper.forEach((v, i) => { below[i] = v; });
  }
  const axis = (tx, ty, text, anchor = "start") =>
    root.append(svg("text", { x: tx, y: ty, class: "chart-label small-label", "text-anchor": anchor }, text));
  axis(left - 4, y(total) + 10, String(total), "end");
  axis(left - 4, y(0), "0", "end");
  const clock = (t) => new Date(t * 1000).toLocaleTimeString();
  axis(left, height - 4, clock(t0));
  axis(width - right, height - 4, clock(t1), "end");
  return root;
}
