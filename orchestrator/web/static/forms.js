// Forms that act: upload a release (with progress), create a rollout (with its preview).
import { api, ApiError, token } from "./api.js";
import { flash, h, option, table, words } from "./dom.js";
import { reloadReleases, showError, state } from "./state.js";

/**
 * POST a file with XMLHttpRequest, whose upload events report progress (fetch() has none).
 * onProgress(loaded, total) is called as bytes leave; resolves to the JSON body.
 */
export function uploadWithProgress(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.setRequestHeader("Authorization", `Bearer ${token.get()}`);
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    xhr.responseType = "json";
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.lengthComputable ? e.total : file.size));
    xhr.addEventListener("load", () => {
      const body = xhr.response || {};
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new ApiError(xhr.status, body.error || xhr.statusText || `HTTP ${xhr.status}`));
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "upload failed: the connection broke")));
    xhr.addEventListener("abort", () => reject(new ApiError(0, "upload canceled")));
    xhr.send(file);
  });
}

const field = (label, input, hint) => h("label", { class: "field" },
  h("span", { class: "label", text: label }), input, hint ? h("span", { class: "muted small", text: hint }) : null);

export function uploadForm(onDone) {
  const file = h("input", { type: "file", name: "file", required: true, "data-upload": "file" });
  const name = h("input", { name: "name", required: true, placeholder: "app", pattern: "[A-Za-z0-9_.:\\-]{1,128}" });
  const version = h("input", { name: "version", required: true, placeholder: "2.0.0", maxlength: 128 });
  const models = h("input", { name: "models", placeholder: "rpi4, x86 (empty: any)" });
  const handler = h("select", { name: "handler" }, option("directory", "directory (a tar unpacked into a slot)", "directory"),
    option("command", "command (a file given to a command)", "directory"));
  const bar = h("progress", { max: 100, value: 0, "data-upload": "progress", hidden: true });
  const status = h("span", { class: "muted small", "data-upload": "status" });
  const submit = h("button", { type: "submit", class: "primary", text: "Upload" });
  const form = h("form", { class: "card form", "data-form": "upload", onsubmit: async (e) => {
    e.preventDefault();
    const f = file.files[0];
    if (!f) return;
    const q = new URLSearchParams({ name: name.value.trim(), version: version.value.trim(), handler: handler.value });
    for (const m of words(models.value)) q.append("model", m);
    submit.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    try {
      let events = 0;
      const rec = await uploadWithProgress(`/v1/releases?${q}`, f, (loaded, total) => {
        bar.dataset.events = String(++events);
        bar.value = total ? Math.round((100 * loaded) / total) : 0;
        status.textContent = `${bar.value}% of ${f.size} bytes`;
      });
      bar.value = 100;
      status.textContent = `uploaded ${rec.name}@${rec.version} (sha256 ${rec.sha256.slice(0, 12)}…)`;
      flash(`Release ${rec.name}@${rec.version} uploaded.`);
      form.reset();
      await reloadReleases();
      onDone?.(rec);
    } catch (err) {
      status.textContent = "";
      bar.hidden = true;
      showError(err);
    } finally {
      submit.disabled = false;
    }
  } },
  h("h2", { text: "Upload a release" }),
  h("div", { class: "form-grid" }, field("Payload", file), field("Name", name), field("Version", version),
    field("Models", models, "comma-separated"), field("Handler", handler)),
  h("div", { class: "form-actions" }, submit, bar, status));
  return form;
}

// --- create a rollout ----------------------------------------------------------------------

const HELD = { offline: "offline now (notified when it returns)", other_rollout: "held by another active rollout",
  model_mismatch: "model not in the release's models" };

/** The create request the form describes; throws Error naming the bad field. */
function rolloutRequest(v) {
  const num = (name, text) => {
    const n = Number(text);
    if (text.trim() === "" || !Number.isFinite(n)) throw new Error(`${name}: expected a number`);
    return n;
  };
  const target = {};
  if (v.scope === "all") target.all = true;
  else if (v.scope === "groups") target.groups = words(v.groups);
  else target.devices = words(v.devices);
  if (words(v.models).length) target.models = words(v.models);
  const phases = words(v.phases).map((p) => num("phases", p.replace(/%$/, "")));
  const body = {
    release: v.release, target, phases,
    success_pct: num("success gate", v.success_pct), soak_s: num("soak", v.soak_s),
    failure_pct: num("failure threshold", v.failure_pct), min_attempts: Math.round(num("min attempts", v.min_attempts)),
    on_failure: v.on_failure, rate_per_min: num("rate", v.rate_per_min), continuous: v.continuous,
  };
  const windows = v.windows.split(";").map((w) => w.trim()).filter(Boolean);
  if (windows.length) body.windows = windows;
  return body;
}

function previewTable(p) {
  return h("div", { class: "preview", "data-preview": "" },
    h("p", {}, h("strong", { "data-preview-total": p.total, text: `${p.total} devices` }), ` in ${p.phases.length} phase(s)`),
    table(["Phase", "Up to", "Devices", "Which"], p.phases.map((ph) => h("tr", { "data-preview-phase": ph.phase },
      h("td", { text: ph.phase }), h("td", { text: `${ph.percent}%` }),
      h("td", { "data-preview-count": "", text: ph.devices.length }),
      h("td", { class: "error-cell list-cell", text: ph.devices.join(", ") || "—" }))), { class: "preview-phases" }),
    p.held.length ? h("div", { class: "card alert" }, h("strong", { text: `Held back (${p.held.length})` }),
      h("ul", {}, p.held.map((x) => h("li", { "data-held": x.device },
        `${x.device}${x.phase ? ` (phase ${x.phase})` : ""}: `, x.reasons.map((r) => HELD[r] || r).join("; "),
        x.rollout_id ? h("a", { href: `#/rollouts/${x.rollout_id}`, text: ` rollout #${x.rollout_id}` }) : null))))
      : h("p", { class: "muted small", text: "No device is held back." }));
}

export function rolloutForm(onCreated) {
  const input = (name, value, attrs = {}) => h("input", { name, value, ...attrs });
  const release = h("select", { name: "release", required: true },
    ...[...state.releases].reverse().map((r) => option(String(r.id), `${r.name}@${r.version}`, "")));
  const scope = h("select", { name: "scope" }, option("groups", "groups", "groups"), option("devices", "devices", "groups"),
    option("all", "every device", "groups"));
  const el = {
    release, scope,
    groups: input("groups", "", { placeholder: "canary, lab" }),
    devices: input("devices", "", { placeholder: "dev-001, dev-002" }),
    models: input("models", "", { placeholder: "(the release's)" }),
    phases: input("phases", "10, 50, 100"),
    success_pct: input("success_pct", "100", { inputmode: "decimal" }), // the API's defaults
    soak_s: input("soak_s", "0", { inputmode: "decimal" }),
    failure_pct: input("failure_pct", "20", { inputmode: "decimal" }),
    min_attempts: input("min_attempts", "5", { inputmode: "numeric" }),
    on_failure: h("select", { name: "on_failure" }, option("pause", "pause", "pause"), option("abort", "abort", "pause")),
    rate_per_min: input("rate_per_min", "0", { inputmode: "decimal" }),
    windows: input("windows", "", { placeholder: "02:00-04:00; sat,sun 00:00-06:00 (UTC)" }),
    continuous: h("input", { type: "checkbox", name: "continuous" }),
    force: h("input", { type: "checkbox", name: "force" }),
    require_approval: h("input", { type: "checkbox", name: "require_approval" }),
  };
  const values = () => Object.fromEntries(Object.entries(el).map(([k, x]) => [k, x.type === "checkbox" ? x.checked : x.value]));
  const showScope = () => {
    el.groups.closest("label").hidden = scope.value !== "groups";
    el.devices.closest("label").hidden = scope.value !== "devices";
  };
  scope.addEventListener("change", showScope);
  const preview = h("div", { "data-preview-box": "" });
  const forceRow = field("Take devices another rollout holds", el.force);
  forceRow.hidden = true;
  const start = h("button", { type: "button", class: "primary", "data-action": "start", disabled: true, text: "Start rollout" });
  let previewed = null; // the request the preview was made for
  const body = () => {
    const b = rolloutRequest(values());
    if (el.force.checked) b.force = true;
    if (el.require_approval.checked) b.require_approval = true; // else the installation decides
    return b;
  };
  const changed = () => {
    let now = null;
    try { now = JSON.stringify(body()); } catch { /* shown when previewed */ }
    if (previewed && now !== previewed) { start.disabled = true; preview.classList.add("stale"); }
  };
  const form = h("form", { class: "card form", "data-form": "rollout", oninput: changed, onchange: changed, onsubmit: async (e) => {
    e.preventDefault();
    try {
      const b = body();
      const p = await api("POST", "/v1/rollouts", { ...b, dry_run: true });
      preview.classList.remove("stale");
      if (!p.total && !b.continuous) {
        start.disabled = true;
        preview.replaceChildren(h("p", { class: "error", role: "alert", text: "The target matches no registered device." }));
        return;
      }
      previewed = JSON.stringify(b);
      preview.replaceChildren(previewTable(p));
      forceRow.hidden = !p.held.some((x) => x.reasons.includes("other_rollout"));
      start.disabled = false;
    } catch (err) {
      start.disabled = true;
      preview.replaceChildren(h("p", { class: "error", role: "alert", text: err.message }));
    }
  } },
  h("h2", { text: "New rollout" }),
  h("div", { class: "form-grid" },
    field("Release", release), field("Target", scope), field("Groups", el.groups, "comma-separated"),
    field("Devices", el.devices, "comma-separated ids"), field("Models", el.models, "narrow by model (optional)"),
    field("Phases", el.phases, "cumulative %, the last 100"),
    field("Success gate %", el.success_pct, "of a phase's devices before the next opens"),
    field("Soak (s)", el.soak_s, "the gate must hold this long"),
    field("Failure threshold %", el.failure_pct, "failures / attempts that trip"),
    field("Min attempts", el.min_attempts, "before the threshold applies"),
    field("On failure", el.on_failure), field("Rate (devices/min)", el.rate_per_min, "0: unlimited"),
    field("Windows", el.windows, "UTC, separated by ;"), field("Continuous", el.continuous, "new matching devices join"),
    field("Require approval", el.require_approval, "another operator or an admin starts it"),
    forceRow),
  h("div", { class: "form-actions" }, h("button", { type: "submit", "data-action": "preview", text: "Preview devices" }), start),
  preview);
  start.addEventListener("click", async () => {
    start.disabled = true;
    try {
      const created = await api("POST", "/v1/rollouts", JSON.parse(previewed));
      flash(`Rollout #${created.id} created.`);
      onCreated(created);
    } catch (err) {
      if (err instanceof ApiError && err.status === 409) forceRow.hidden = false;
      preview.replaceChildren(h("p", { class: "error", role: "alert", text: err.message }));
    }
  });
  showScope();
  if (!state.releases.length) {
    return h("div", { class: "card" }, h("p", { class: "muted" }, "Upload a release first (",
      h("a", { href: "#/releases", text: "Releases" }), ")."));
  }
  return form;
}
