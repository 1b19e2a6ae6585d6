// The fleetpush dashboard: sign-in, four views, live updates from /v1/events.
import { api, ApiError, stream, token } from "./api.js";
import { barChart, donut } from "./chart.js";

const FAILED = ["failed", "rolled_back", "rejected", "timed_out"];
const IN_FLIGHT = ["sent", "notified", "deferred", "downloading", "downloaded", "installing", "installed"];
const $ = (sel) => document.querySelector(sel);

const state = {
  me: null,
  summary: null,
  rollouts: new Map(), // id -> dashboard rollout view
  devices: new Map(), // device_id -> device
  releases: [],
  filters: { q: "", online: "", version: "", group: "", model: "" },
  view: null, // { name, update(kind, data) }
  stopStream: null,
};

// --- DOM helpers: text only ever goes through textContent -------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

const sum = (obj, keys) => keys.reduce((a, k) => a + (obj[k] || 0), 0);

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Date.now() / 1000 - ts);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const when = (ts) => (ts ? new Date(ts * 1000).toLocaleString() : "—");

function size(n) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function flash(text, isError = false) {
  const el = $("#flash");
  el.textContent = text;
  el.className = isError ? "flash error" : "flash";
  el.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

const badge = (text, cls = text) => h("span", { class: `badge ${cls}`, text });
const th = (c) => (Array.isArray(c) ? h("th", { text: c[0], class: c[1] }) : h("th", { text: c }));
const table = (head, rows, attrs = {}) => h("div", { class: "table-wrap" },
  h("table", attrs, h("thead", {}, h("tr", {}, head.map(th))), h("tbody", {}, rows)));

// --- data --------------------------------------------------------------------------------

async function loadAll() {
  const [summary, rollouts, devices, releases] = await Promise.all([
    api("GET", "/v1/dashboard/summary"),
    api("GET", "/v1/dashboard/rollouts"),
    api("GET", "/v1/devices?limit=5000"),
    api("GET", "/v1/releases"),
  ]);
  state.summary = summary;
  state.rollouts = new Map(rollouts.rollouts.map((r) => [r.id, r]));
  state.devices = new Map(devices.devices.map((d) => [d.device_id, d]));
  state.releases = releases.releases;
  state.view?.update("all");
}

function onEvent(name, data) {
  if (name === "unauthorized") return signOut("Your token is no longer valid.");
  if (name === "hello") return loadAll().catch(showError);
  if (name === "rollout") state.rollouts.set(data.id, data);
  else if (name === "summary") state.summary = data;
  else if (name === "devices") {
    if (data.truncated) {
      api("GET", "/v1/devices?limit=5000").then((r) => {
        state.devices = new Map(r.devices.map((d) => [d.device_id, d]));
        state.view?.update("devices");
      }).catch(showError);
      return;
    }
    for (const d of data.changed) state.devices.set(d.device_id, d);
  }
  state.view?.update(name, data);
}

function showError(e) {
  if (e instanceof ApiError && e.status === 401) return signOut("Your token is no longer valid.");
  flash(e.message || String(e), true);
}

// --- overview ----------------------------------------------------------------------------

function rolloutCounts(r) {
  const s = r.states || {};
  return {
    succeeded: s.succeeded || 0,
    failed: sum(s, FAILED),
    in_flight: sum(s, IN_FLIGHT),
    pending: s.pending || 0,
    canceled: s.canceled || 0,
    total: r.devices,
  };
}

function progressBar(c) {
  const bar = h("div", { class: "progress", role: "img",
    "aria-label": `${c.succeeded} succeeded, ${c.failed} failed, ${c.in_flight} in flight of ${c.total}` });
  for (const k of ["succeeded", "failed", "in_flight", "canceled"]) {
    const seg = h("span", { class: `seg ${k}` });
    seg.style.width = `${c.total ? (100 * c[k]) / c.total : 0}%`;
    bar.append(seg);
  }
  return bar;
}

function overviewView() {
  const el = h("section", { class: "overview" });
  function update() {
    const s = state.summary;
    if (!s) return el.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    const active = [...state.rollouts.values()].filter((r) => ["scheduled", "running", "paused"].includes(r.state));
    el.replaceChildren(
      h("div", { class: "tiles" },
        h("div", { class: "tile" }, h("span", { class: "num", "data-stat": "devices", text: s.devices }), "devices"),
        h("div", { class: "tile ok" }, h("span", { class: "num", "data-stat": "online", text: s.online }), "online"),
        h("div", { class: "tile off" }, h("span", { class: "num", "data-stat": "offline", text: s.offline }), "offline"),
        h("div", { class: "tile" }, h("span", { class: "num", "data-stat": "active", text: active.length }), "active rollouts")),
      h("div", { class: "grid2" },
        h("div", { class: "card" }, h("h2", { text: "Releases in the field" }),
          h("p", { class: "muted small", text: "Devices per installed version (darker: online now)." }),
          barChart(s.versions.map((v) => ({ label: v.version, value: v.devices, part: v.online })),
            { title: "Devices per installed version" })),
        h("div", { class: "card" }, h("h2", { text: "Presence" }),
          h("div", { class: "donut-row" },
            donut([{ label: "online", value: s.online, cls: "ok" }, { label: "offline", value: s.offline, cls: "off" }],
              "Devices online and offline"),
            h("ul", { class: "legend" },
              h("li", {}, h("span", { class: "dot ok" }), `${s.online} online`),
              h("li", {}, h("span", { class: "dot off" }), `${s.offline} offline`))))),
      h("div", { class: "card" }, h("h2", { text: "Active rollouts" }),
        active.length ? active.map((r) => h("a", { class: "mini", href: `#/rollouts/${r.id}` },
          h("span", { text: `#${r.id} ${r.release.name}@${r.release.version}` }), badge(r.state),
          progressBar(rolloutCounts(r))))
          : h("p", { class: "muted", text: "No rollout is running." })),
    );
  }
  update();
  return { el, update };
}

// --- devices -----------------------------------------------------------------------------

function option(value, label, selected) {
  return h("option", { value, selected: value === selected, text: label });
}

function devicesView() {
  const f = state.filters;
  const body = h("div");
  const count = h("p", { class: "muted small" });
  const selects = {};
  const toolbar = h("div", { class: "toolbar" },
    h("input", { type: "search", placeholder: "Search id, model, version, group", value: f.q,
      "aria-label": "Search devices", "data-filter": "q",
      oninput: (e) => { f.q = e.target.value; update(); } }));
  for (const [key, label] of [["online", "presence"], ["version", "version"], ["group", "group"], ["model", "model"]]) {
    selects[key] = h("select", { "aria-label": `Filter by ${label}`, "data-filter": key,
      onchange: (e) => { f[key] = e.target.value; update(); } });
    toolbar.append(selects[key]);
  }
  const el = h("section", {}, h("h1", { text: "Devices" }), toolbar, count, body);

  function fillSelects() {
    const s = state.summary || { versions: [], groups: [], models: {} };
    selects.online.replaceChildren(option("", "online + offline", f.online),
      option("true", "online", f.online), option("false", "offline", f.online));
    selects.version.replaceChildren(option("", "any version", f.version),
      ...s.versions.map((v) => option(v.version, v.version, f.version)));
    selects.group.replaceChildren(option("", "any group", f.group), ...s.groups.map((g) => option(g, g, f.group)));
    selects.model.replaceChildren(option("", "any model", f.model),
      ...Object.keys(s.models).map((m) => option(m, m, f.model)));
  }

  function matches(d) {
    const q = f.q.trim().toLowerCase();
    if (q && ![d.device_id, d.model, d.current_version, ...d.groups].some((x) => x.toLowerCase().includes(q))) return false;
    if (f.online && String(d.online) !== f.online) return false;
    if (f.version && (d.current_version || "unknown") !== f.version) return false;
    if (f.group && !d.groups.includes(f.group)) return false;
    return !(f.model && (d.model || "unknown") !== f.model);
  }

  function update(kind) {
    if (kind !== "devices" && kind !== "rollout") fillSelects();
    const rows = [...state.devices.values()].filter(matches)
      .sort((a, b) => a.device_id.localeCompare(b.device_id));
    count.textContent = `${rows.length} of ${state.devices.size} devices`;
    body.replaceChildren(table(["Device", "Presence", "Version", ["Model", "wide"], ["Groups", "wide"], "Last seen"],
      rows.slice(0, 1000).map((d) => h("tr", { "data-device-id": d.device_id },
        h("td", {}, h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}`, text: d.device_id })),
        h("td", {}, badge(d.online ? "online" : "offline")),
        h("td", { text: d.current_version || "unknown" }),
        h("td", { class: "wide", text: d.model || "—" }),
        h("td", { class: "wide" }, d.groups.join(", ") || "—", d.claims_mismatch ? " " : null, claimsBadge(d)),
        h("td", { title: when(d.last_seen), text: ago(d.last_seen) }))),
      { class: "devices" }));
  }
  update();
  return { el, update };
}

// What the device says about itself differs from the registry: shown, never used to target.
function claimsBadge(d) {
  if (!d.claims_mismatch) return null;
  return h("span", { class: "badge failed", "data-claims-mismatch": d.device_id,
    title: `claims groups ${d.claimed_groups.join(", ") || "none"}, model ${d.claimed_model || "—"}`,
    text: "claims differ" });
}

function deviceView(id) {
  const el = h("section", {}, h("p", { class: "muted", text: "Loading…" }));
  async function update(kind, data) {
    if (kind === "devices" && !data.changed?.some((d) => d.device_id === id)) return;
    if (kind === "rollout" || kind === "summary") return;
    let d;
    try {
      d = await api("GET", `/v1/devices/${encodeURIComponent(id)}`);
    } catch (e) {
      el.replaceChildren(h("p", { class: "error", text: e.message }));
      return;
    }
    const errors = d.reports.filter((r) => r.error_code);
    el.replaceChildren(
      h("p", {}, h("a", { href: "#/devices", text: "← all devices" })),
      h("h1", {}, d.device_id, " ", badge(d.online ? "online" : "offline")),
      d.claims_mismatch ? h("div", { class: "card alert", "data-claims-mismatch": d.device_id },
        h("strong", { text: "Claims differ from the registry: " }),
        `the device says groups ${d.claimed_groups.join(", ") || "none"}, model ${d.claimed_model || "—"}. `,
        "Targeting uses the registry's groups and model only.") : "",
      h("dl", { class: "facts" },
        ...[["Version", d.current_version || "unknown"], ["Model", d.model || "—"],
          ["Groups", d.groups.join(", ") || "—"],
          ["Claimed", `groups ${d.claimed_groups.join(", ") || "none"}, model ${d.claimed_model || "—"}`], ["Last seen", `${ago(d.last_seen)} (${when(d.last_seen)})`],
          ["First seen", when(d.first_seen)], ["Client", d.client_version || "—"],
          ["Free space", d.free_bytes == null ? "—" : size(d.free_bytes)]]
          .flatMap(([k, v]) => [h("dt", { text: k }), h("dd", { text: v })])),
      errors.length ? h("div", { class: "card alert", "data-last-error": errors[0].error_code },
        h("strong", { text: "Last error: " }), `${errors[0].error_code}: ${errors[0].error_message || ""}`,
        h("span", { class: "muted small", text: ` (rollout ${errors[0].rollout_id}, ${when(errors[0].received_at)})` }))
        : "",
      h("h2", { text: "Reports" }),
      d.reports.length ? table(["#", "Received", "Rollout", "State", "Version", "Error"],
        d.reports.map((r) => h("tr", { class: r.error_code ? "has-error" : "" },
          h("td", { text: r.counter }),
          h("td", { title: when(r.received_at), text: ago(r.received_at) }),
          h("td", {}, h("a", { href: `#/rollouts/${r.rollout_id}`, text: r.rollout_id })),
          h("td", {}, badge(r.state)),
          h("td", { text: r.current_version || "—" }),
          h("td", { class: "error-cell", text: r.error_code ? `${r.error_code}: ${r.error_message || ""}` : "" }))),
      { class: "history" }) : h("p", { class: "muted", text: "No reports yet." }),
    );
  }
  update("all");
  return { el, update };
}

// --- releases ----------------------------------------------------------------------------

function releasesView() {
  const el = h("section");
  function update() {
    const running = new Map((state.summary?.versions || []).map((v) => [v.version, v.devices]));
    el.replaceChildren(h("h1", { text: "Releases" }),
      state.releases.length ? table(["Release", "Size", ["Models", "wide"], ["Handler", "wide"], "Devices on it", ["Created", "wide"], ["SHA-256", "wide"]],
        [...state.releases].reverse().map((r) => h("tr", {},
          h("td", {}, h("strong", { text: r.name }), "@", r.version),
          h("td", { text: size(r.size) }),
          h("td", { class: "wide", text: r.models.join(", ") || "any" }),
          h("td", { class: "wide", text: r.handler }),
          h("td", { text: running.get(r.version) || 0 }),
          h("td", { class: "wide", title: when(r.created_at), text: ago(r.created_at) }),
          h("td", { class: "wide mono", title: r.sha256, text: r.sha256.slice(0, 12) })))) :
        h("p", { class: "muted", text: "No release uploaded yet." }));
  }
  update();
  return { el, update };
}

// --- rollouts ----------------------------------------------------------------------------

async function act(r, action) {
  if (action === "cancel" && !confirm(`Cancel rollout #${r.id}? Devices not yet updated are left as they are.`)) return;
  try {
    await api("POST", `/v1/rollouts/${r.id}/${action}`, {});
    const fresh = await api("GET", `/v1/dashboard/rollouts/${r.id}`);
    state.rollouts.set(fresh.id, fresh);
    state.view?.update("rollout", fresh);
    flash(`Rollout #${r.id}: ${action} done.`);
  } catch (e) {
    showError(e);
  }
}

function actions(r) {
  if (!state.me?.can_act) return h("p", { class: "muted small readonly", text: "Read-only: your token has the viewer role." });
  const active = ["scheduled", "running", "paused"].includes(r.state);
  const failed = rolloutCounts(r).failed;
  const button = (action, label, enabled, cls = "") => enabled
    ? h("button", { type: "button", class: cls, "data-action": action, onclick: () => act(r, action) }, label) : null;
  return h("div", { class: "actions" },
    button("pause", "Pause", r.state === "running" || r.state === "scheduled"),
    button("resume", "Resume", r.state === "paused", "primary"),
    button("retry", `Retry ${failed} failed`, failed > 0 && !["canceled", "aborted"].includes(r.state)),
    button("cancel", "Cancel", active, "danger"));
}

function rolloutCard(r) {
  const c = rolloutCounts(r);
  const count = (k, label) => h("span", { class: `count ${k}` }, h("b", { "data-count": k, text: c[k] }), ` ${label}`);
  return h("article", { class: "card rollout", "data-rollout-id": r.id, "data-state": r.state },
    h("header", {},
      h("h2", {}, h("a", { href: `#/rollouts/${r.id}`, text: `#${r.id}` }), ` ${r.release.name}@${r.release.version}`),
      badge(r.state), r.spec && r.spec.continuous ? badge("continuous") : null),
    r.reason ? h("p", { class: "reason", text: r.reason }) : null,
    progressBar(c),
    h("p", { class: "counts" }, count("succeeded", "succeeded"), count("failed", "failed"),
      count("in_flight", "in flight"), count("pending", "pending"), ` of ${c.total}`),
    table(["Phase", ["Target", "wide"], "Devices", ["Pending", "wide"], "In flight", "Succeeded", "Failed"],
      r.phases.map((p) => h("tr", { "data-phase": p.index, class: p.index - 1 === r.phase && r.state === "running" ? "current" : "" },
        h("td", {}, `${p.index} `, p.open ? null : h("span", { class: "muted small", text: "(closed)" })),
        h("td", { class: "wide", text: `${p.percent}%` }),
        h("td", { text: p.devices }),
        h("td", { class: "wide", text: p.pending + p.waiting_offline }),
        h("td", { text: p.in_flight }),
        h("td", { "data-phase-count": "succeeded", text: p.succeeded }),
        h("td", { "data-phase-count": "failed", class: p.failed ? "bad" : "", text: p.failed })))),
    r.failures.length ? h("details", { class: "failures", open: true },
      h("summary", { text: `Failures (${c.failed})` }),
      h("ul", {}, r.failures.map((t) => h("li", { "data-failed-device": t.device_id },
        h("a", { href: `#/devices/${encodeURIComponent(t.device_id)}`, text: t.device_id }),
        ` phase ${t.phase + 1} `, badge(t.state, "failed"), " ", h("span", { class: "reason-text", text: t.reason || "no reason given" })))))
      : null,
    h("p", { class: "muted small" }, `created ${ago(r.created_at)} by ${r.created_by || "?"} · updated ${ago(r.updated_at)}`),
    actions(r));
}

function rolloutsView(onlyId) {
  const list = h("div", { class: "rollouts" });
  const el = h("section", {}, h("h1", { text: onlyId ? `Rollout #${onlyId}` : "Rollouts" }),
    onlyId ? h("p", {}, h("a", { href: "#/rollouts", text: "← all rollouts" })) : null, list);
  const shown = () => [...state.rollouts.values()].filter((r) => !onlyId || r.id === onlyId)
    .sort((a, b) => b.id - a.id);
  function update(kind, data) {
    if (kind === "rollout") {
      const old = list.querySelector(`[data-rollout-id="${data.id}"]`);
      if (old) return old.replaceWith(rolloutCard(data));
      if (onlyId && data.id !== onlyId) return;
    }
    if (kind === "devices" || kind === "summary") return;
    const rows = shown();
    list.replaceChildren(...(rows.length ? rows.map(rolloutCard)
      : [h("p", { class: "muted", text: "No rollouts yet." })]));
  }
  update("all");
  return { el, update };
}

// --- routing and sign-in -----------------------------------------------------------------

function route() {
  const [name = "overview", arg] = location.hash.replace(/^#\/?/, "").split("/");
  const id = arg === undefined ? undefined : decodeURIComponent(arg);
  let view;
  if (name === "devices" && id) view = deviceView(id);
  else if (name === "devices") view = devicesView();
  else if (name === "releases") view = releasesView();
  else if (name === "rollouts") view = rolloutsView(id ? Number(id) : undefined);
  else view = overviewView();
  state.view = view;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === (["devices", "releases", "rollouts"].includes(name) ? name : "overview"));
  }
  $("#view").replaceChildren(view.el);
}

function setLive(status) {
  const el = $("#live");
  el.textContent = status;
  el.className = `live ${status}`;
}

async function start() {
  try {
    state.me = await api("GET", "/v1/dashboard/me");
  } catch (e) {
    token.clear();
    return showSignIn(e instanceof ApiError && e.status === 401 ? "That token is not valid." : e.message);
  }
  $("#signin").hidden = true;
  $("#shell").hidden = false;
  $("#who").textContent = `${state.me.name} (${state.me.role})`;
  document.body.dataset.role = state.me.role;
  route();
  state.stopStream = stream(onEvent, setLive);
  loadAll().catch(showError);
}

function showSignIn(message = "") {
  $("#shell").hidden = true;
  $("#signin").hidden = false;
  $("#signin-error").textContent = message;
  $("#token").focus();
}

function signOut(message = "") {
  state.stopStream?.();
  state.stopStream = null;
  token.clear();
  setLive("offline");
  showSignIn(message);
}

$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token.set($("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (state.me) route(); });
if (token.get()) start(); else showSignIn();
