// The devices table, one device's page, and the operator's editor of its groups and tags.
import { api } from "../api.js";
import { ago, badge, components, facts, flash, h, option, outputTail, size, table, when, words } from "../dom.js";
import { canAct, showError, state } from "../state.js";

export function devicesView() {
  const f = state.filters;
  const body = h("div");
  const count = h("p", { class: "muted small" });
  const selects = {};
  const toolbar = h("div", { class: "toolbar" },
    h("input", { type: "search", placeholder: "Search id, model, version, group", value: f.q,
      "aria-label": "Search devices", "data-filter": "q",
      oninput: (e) => { f.q = e.target.value; update(); } }));
  for (const [key, label] of [["online", "presence"], ["version", "version"], ["group", "group"], ["model", "model"], ["security", "security updates"]]) {
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
    selects.security.replaceChildren(option("", "any security state", f.security),
      option("missing", `missing a security update (${state.missingSecurity.size})`, f.security));
  }

  function matches(d) {
    const q = f.q.trim().toLowerCase();
    if (q && ![d.device_id, d.model, d.current_version, ...d.groups].some((x) => x.toLowerCase().includes(q))) return false;
    if (f.online && String(d.online) !== f.online) return false;
    if (f.version && (d.current_version || "unknown") !== f.version) return false;
    if (f.group && !d.groups.includes(f.group)) return false;
    if (f.security === "missing" && !state.missingSecurity.has(d.device_id)) return false;
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
        h("td", {}, d.current_version || "unknown", state.missingSecurity.has(d.device_id)
          ? h("span", { class: "badge failed", "data-missing-security": "", title: `misses ${state.missingSecurity.get(d.device_id).join(", ")}`, text: " security update missing" }) : null),
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

const tagText = (tags) => Object.entries(tags).map(([k, v]) => `${k}=${v}`).join("\n");

function parseTags(text) {
  const tags = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at < 1) throw new Error(`tags: expected key=value, got "${line}"`);
    tags[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return tags;
}

/**
 * The registry's groups (from provisioning) cannot be removed here: the operator's groups
 * add to them, and targeting uses both (docs/orchestrator.md, "registry").
 */
function labelEditor(d, onSaved) {
  const groups = h("input", { name: "groups", value: d.operator_groups.join(", "), "data-edit": "groups",
    placeholder: "canary, building-2" });
  const tags = h("textarea", { name: "tags", rows: 3, "data-edit": "tags", placeholder: "site=berlin" });
  tags.value = tagText(d.tags);
  const save = h("button", { type: "submit", class: "primary", "data-action": "save-labels", text: "Save" });
  return h("form", { class: "card form", "data-form": "labels", onsubmit: async (e) => {
    e.preventDefault();
    save.disabled = true;
    try {
      const fresh = await api("PATCH", `/v1/devices/${encodeURIComponent(d.device_id)}`,
        { groups: words(groups.value), tags: parseTags(tags.value) });
      state.devices.set(fresh.device_id, { ...state.devices.get(fresh.device_id), ...fresh });
      flash(`${fresh.device_id}: groups ${fresh.groups.join(", ") || "none"} saved.`);
      onSaved();
    } catch (err) {
      showError(err);
    } finally {
      save.disabled = false;
    }
  } },
  h("h2", { text: "Groups and tags" }),
  h("p", { class: "muted small" }, "From provisioning (fixed here): ",
    h("span", { "data-registry-groups": "", text: d.registry_groups.join(", ") || "none" }),
    ". Groups you add join them; rollouts target both."),
  h("div", { class: "form-grid" },
    h("label", { class: "field" }, h("span", { class: "label", text: "Operator groups" }), groups,
      h("span", { class: "muted small", text: "comma-separated" })),
    h("label", { class: "field" }, h("span", { class: "label", text: "Tags" }), tags,
      h("span", { class: "muted small", text: "one key=value a line" }))),
  h("div", { class: "form-actions" }, save));
}

/** The newest failure's output tail; `fleetpush devices logs` shows older ones. */
function lastOutput(o) {
  if (!o) return null;
  return h("div", { class: "card", "data-last-output": o.counter },
    h("h2", { text: "Output of the last failure" }),
    h("p", { class: "muted small" }, badge(o.state, "failed"),
      ` ${o.error_code} · release ${o.release || "?"} · rollout `,
      h("a", { href: `#/rollouts/${o.rollout_id}`, text: o.rollout_id }), ` · ${when(o.received_at)}`),
    outputTail(o.output));
}

export function deviceView(id) {
  const el = h("section", {}, h("p", { class: "muted", text: "Loading…" }));
  let editing = false; // a live update must not wipe what the operator is typing
  async function update(kind, data) {
    if (kind === "devices" && !data.changed?.some((d) => d.device_id === id)) return;
    if (kind === "rollout" || kind === "summary") return;
    if (editing && kind !== "saved") return;
    let d;
    try {
      d = await api("GET", `/v1/devices/${encodeURIComponent(id)}`);
    } catch (e) {
      el.replaceChildren(h("p", { class: "error", text: e.message }));
      return;
    }
    const errors = d.reports.filter((r) => r.error_code);
    // An application on the device holds the update (issue 18): while it is the last word.
    const held = d.reports[0]?.hold_until != null ? d.reports[0] : null;
    const editor = canAct() ? labelEditor(d, () => { editing = false; update("saved"); }) : null;
    editor?.addEventListener("input", () => { editing = true; });
    // replaceChildren() would print a null as "null": drop the parts not shown.
    el.replaceChildren(...[
      h("p", {}, h("a", { href: "#/devices", text: "← all devices" })),
      h("h1", {}, d.device_id, " ", badge(d.online ? "online" : "offline")),
      d.claims_mismatch ? h("div", { class: "card alert", "data-claims-mismatch": d.device_id },
        h("strong", { text: "Claims differ from the registry: " }),
        `the device says groups ${d.claimed_groups.join(", ") || "none"}, model ${d.claimed_model || "—"}. `,
        "Targeting uses the registry's groups and model only.") : null,
      facts([["Version", d.current_version || "unknown"], ["Model", d.model || "—"],
        ["Groups", h("span", { "data-groups": "", text: d.groups.join(", ") || "—" })],
        ["Tags", tagText(d.tags).replace(/\n/g, ", ") || "—"],
        ["Claimed", `groups ${d.claimed_groups.join(", ") || "none"}, model ${d.claimed_model || "—"}`],
        ["Last seen", `${ago(d.last_seen)} (${when(d.last_seen)})`],
        ["First seen", when(d.first_seen)], ["Client", d.client_version || "—"],
        ["Free space", d.free_bytes == null ? "—" : size(d.free_bytes)]]),
      editor,
      errors.length ? h("div", { class: "card alert", "data-last-error": errors[0].error_code },
        h("strong", { text: "Last error: " }), `${errors[0].error_code}: ${errors[0].error_message || ""}`,
        h("span", { class: "muted small", text: ` (rollout ${errors[0].rollout_id}, ${when(errors[0].received_at)})` }))
        : null,
      held ? h("div", { class: "card", "data-hold": held.rollout_id },
        h("strong", { text: "Held on the device: " }), held.hold_reason || "",
        h("span", { class: "muted small", text: ` (rollout ${held.rollout_id}) until ${when(held.hold_until)}` }))
        : null,
      lastOutput(d.last_output),
      d.systems?.length ? h("h2", { text: "System updates" }) : null,
      d.systems?.length ? table(["Rollout", "State", "Components", ["Updated", "wide"]],
        d.systems.map((s) => h("tr", { "data-system-rollout": s.rollout_id },
          h("td", {}, h("a", { href: `#/rollouts/${s.rollout_id}`, text: s.rollout_id })),
          h("td", {}, badge(s.state)),
          h("td", {}, components(s.components)),
          h("td", { class: "wide", title: when(s.updated_at), text: ago(s.updated_at) }))),
      { class: "systems" }) : null,
      h("h2", { text: "Reports" }),
      d.reports.length ? table([["#", "wide"], "Received", "Rollout", "State", ["Version", "wide"], "Error"],
        d.reports.map((r) => h("tr", { class: r.error_code ? "has-error" : "" },
          h("td", { class: "wide", text: r.counter }),
          h("td", { title: when(r.received_at), text: ago(r.received_at) }),
          h("td", {}, h("a", { href: `#/rollouts/${r.rollout_id}`, text: r.rollout_id })),
          h("td", { title: r.hold_reason ? `${r.hold_reason}, until ${when(r.hold_until)}` : (r.detail || "") },
            badge(r.state)),
          h("td", { class: "wide", text: r.current_version || "—" }),
          h("td", { class: "error-cell", text: r.error_code ? `${r.error_code}: ${r.error_message || ""}` : "" }))),
      { class: "history" }) : h("p", { class: "muted", text: "No reports yet." }),
    ].filter(Boolean));
  }
  update("all");
  return { el, update };
}
