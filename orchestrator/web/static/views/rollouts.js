// Rollouts: one card each; a rollout's page with its settings, schedule, timeline and
// failures by error code; the form that creates one.
import { api } from "../api.js";
import { timelineChart } from "../chart.js";
import { ago, badge, components, duration, facts, flash, h, outputTail, table, until, when } from "../dom.js";
import { rolloutForm } from "../forms.js";
import { ACTIVE, canAct, rolloutCounts, showError, state } from "../state.js";

export function progressBar(c) {
  const bar = h("div", { class: "progress", role: "img",
    "aria-label": `${c.succeeded} succeeded, ${c.failed} failed, ${c.in_flight} in flight of ${c.total}` });
  for (const k of ["succeeded", "failed", "in_flight", "canceled"]) {
    const seg = h("span", { class: `seg ${k}` });
    seg.style.width = `${c.total ? (100 * c[k]) / c.total : 0}%`;
    bar.append(seg);
  }
  return bar;
}

async function act(r, action) {
  if (action === "cancel" && !confirm(`Cancel rollout #${r.id}? Devices not yet updated are left as they are.`)) return;
  const body = {};
  if (action === "reject") {
    const reason = prompt(`Reject rollout #${r.id}: why? (recorded in the audit log)`);
    if (!reason || !reason.trim()) return;
    body.reason = reason.trim();
  }
  try {
    await api("POST", `/v1/rollouts/${r.id}/${action}`, body);
    const fresh = await api("GET", `/v1/dashboard/rollouts/${r.id}`);
    state.rollouts.set(fresh.id, fresh);
    state.view?.update("rollout", fresh);
    flash(`Rollout #${r.id}: ${action} done.`);
  } catch (e) {
    showError(e);
  }
}

function actions(r) {
  if (!canAct()) return h("p", { class: "muted small readonly", text: "Read-only: your token has the viewer role." });
  const failed = rolloutCounts(r).failed;
  const button = (action, label, enabled, cls = "") => enabled
    ? h("button", { type: "button", class: cls, "data-action": action, onclick: () => act(r, action) }, label) : null;
  // Four-eyes: the creator sees no approve/reject buttons (the API refuses them too).
  const decides = r.state === "awaiting_approval" && state.me?.name !== r.created_by;
  const waiting = r.state === "awaiting_approval" && !decides
    ? h("p", { class: "muted small", "data-approval": "own", text: "Awaiting approval by another operator or an admin." }) : null;
  return h("div", { class: "actions" },
    waiting,
    button("approve", "Approve", decides, "primary"),
    button("reject", "Reject", decides, "danger"),
    button("pause", "Pause", r.state === "running" || r.state === "scheduled"),
    button("resume", "Resume", r.state === "paused", "primary"),
    button("retry", `Retry ${failed} failed`, failed > 0 && !["canceled", "aborted", "rejected", "awaiting_approval"].includes(r.state)),
    button("cancel", "Cancel", ACTIVE.includes(r.state), "danger"));
}

function targetText(t) {
  const parts = [];
  if (t.all) parts.push("every device");
  if (t.groups?.length) parts.push(`groups ${t.groups.join(", ")}`);
  if (t.devices?.length) parts.push(t.devices.length > 5 ? `${t.devices.length} devices` : `devices ${t.devices.join(", ")}`);
  if (t.models?.length) parts.push(`models ${t.models.join(", ")}`);
  return parts.join("; ") || "—";
}

function rateText(s) {
  if (!s.rate_per_min) return "unlimited";
  if (s.rate_mode !== "exponential") return `${s.rate_per_min}/min`;
  return `${s.rate_per_min}/min ×${s.rate_factor} every ${s.rate_every} successes` +
    (s.rate_max_per_min ? ` (max ${s.rate_max_per_min}/min)` : "");
}

/** The rollout's settings, as given at creation. */
export function settings(r) {
  const s = r.spec;
  return facts([
    ["Target", targetText(r.target)],
    ["Phases", s.phases.map((p) => `${p}%`).join(" → ")],
    ["Gate", `${s.success_pct}% succeeded, held ${duration(s.soak_s)}`],
    ["Threshold", `${s.on_failure} above ${s.failure_pct}% failed, once ${s.min_attempts} finished`],
    ["Rate", rateText(s)],
    ["Windows", s.windows.length ? `${s.windows.join("; ")} UTC` : "any time"],
    ["Device timeout", duration(s.device_timeout_s)],
    ["Starts", s.start_at ? when(s.start_at) : "at once"],
  ], { "data-settings": r.id });
}

/** What the rollout waits for next; updated every second by the page (a countdown). */
function scheduleText(r) {
  const s = r.schedule || {};
  if (r.state === "scheduled" && s.starts_at) return `Starts ${until(s.starts_at)} (${when(s.starts_at)}).`;
  if (r.state !== "running") return "";
  if (s.next_window_at) return `Outside its maintenance windows: the next opens ${until(s.next_window_at)} (${when(s.next_window_at)}).`;
  const phase = r.phases[r.phase];
  if (s.soak_ends_at) {
    const next = s.next_phase ? `phase ${s.next_phase} opens` : "the rollout completes once every device finished";
    return `Gate met: soaking, ${next} ${until(s.soak_ends_at)} (${new Date(s.soak_ends_at * 1000).toLocaleTimeString()}).`;
  }
  if (!phase) return "";
  return `Phase ${r.phase + 1} of ${r.phases.length}: waiting for its gate (${r.spec.success_pct}% succeeded` +
    `${r.spec.soak_s ? `, then a ${duration(r.spec.soak_s)} soak` : ""}).`;
}

/** Bytes the devices downloaded against the full payload each (deltas save the rest). */
function bytesLine(b) {
  if (!b || !b.devices) return null;
  const pct = b.full ? ` (${((100 * b.saved) / b.full).toFixed(1)}%)` : "";
  return h("p", { class: "muted small", "data-bytes-saved": b.saved },
    `Downloaded ${b.downloaded.toLocaleString()} bytes for ${b.devices} device${b.devices === 1 ? "" : "s"}; ` +
    `saved ${b.saved.toLocaleString()} of ${b.full.toLocaleString()}${pct} with deltas`);
}

function rolloutCard(r, { detailed = false } = {}) {
  const c = rolloutCounts(r);
  const count = (k, label) => h("span", { class: `count ${k}` }, h("b", { "data-count": k, text: c[k] }), ` ${label}`);
  const sched = scheduleText(r);
  return h("article", { class: "card rollout", "data-rollout-id": r.id, "data-state": r.state },
    h("header", {},
      h("h2", {}, h("a", { href: `#/rollouts/${r.id}`, text: `#${r.id}` }), ` ${r.release.name}@${r.release.version}`),
      h("span", {}, badge(r.state), r.spec && r.spec.continuous ? badge("continuous") : null)),
    r.reason ? h("p", { class: "reason", text: r.reason }) : null,
    sched ? h("p", { class: "schedule", "data-schedule": r.schedule?.soak_ends_at ? "soak" : "wait",
      "data-soak-ends": r.schedule?.soak_ends_at ?? undefined, text: sched }) : null,
    progressBar(c),
    h("p", { class: "counts" }, count("succeeded", "succeeded"), count("failed", "failed"),
      count("in_flight", "in flight"), count("pending", "pending"), ` of ${c.total}`),
    bytesLine(r.bytes),
    table(["Phase", ["Target", "wide"], "Devices", ["Pending", "wide"], "In flight", "Succeeded", "Failed"],
      r.phases.map((p) => h("tr", { "data-phase": p.index, class: p.index - 1 === r.phase && r.state === "running" ? "current" : "" },
        h("td", {}, `${p.index} `, p.open ? null : h("span", { class: "muted small", text: "(closed)" })),
        h("td", { class: "wide", text: `${p.percent}%` }),
        h("td", { text: p.devices }),
        h("td", { class: "wide", text: p.pending + p.waiting_offline }),
        h("td", { text: p.in_flight }),
        h("td", { "data-phase-count": "succeeded", text: p.succeeded }),
        h("td", { "data-phase-count": "failed", class: p.failed ? "bad" : "", text: p.failed }))),
      { class: "phases" }),
    !detailed && r.failures.length ? h("details", { class: "failures", open: true },
      h("summary", { text: `Failures (${c.failed})` }),
      h("ul", {}, r.failures.map((t) => h("li", { "data-failed-device": t.device_id },
        h("a", { href: `#/devices/${encodeURIComponent(t.device_id)}`, text: t.device_id }),
        ` phase ${t.phase + 1} `, badge(t.state, "failed"), " ", h("span", { class: "reason-text", text: t.reason || "no reason given" }),
        t.components ? h("div", { class: "small" }, components(t.components)) : null))))
      : null,
    detailed ? settings(r) : null,
    h("p", { class: "muted small" }, `created ${ago(r.created_at)} by ${r.created_by || "?"} · updated ${ago(r.updated_at)}`),
    actions(r));
}

function failureGroups(groups) {
  if (!groups.length) return h("p", { class: "muted", text: "No device failed." });
  return groups.map((g) => h("details", { class: "failures group", open: true, "data-error-code": g.code },
    h("summary", {}, h("code", { text: g.code }), ` — ${g.count} device${g.count === 1 ? "" : "s"}`),
    h("ul", {}, g.devices.map((d) => h("li", { "data-failed-device": d.device_id },
      h("a", { href: `#/devices/${encodeURIComponent(d.device_id)}`, text: d.device_id }),
      ` phase ${d.phase} `, badge(d.state, "failed"),
      h("pre", { class: "output", text: d.message || "no output reported" }),
      outputTail(d.output, { "data-output-of": d.device_id })))),
    g.count > g.devices.length ? h("p", { class: "muted small", text: `and ${g.count - g.devices.length} more` }) : null));
}

const LEGEND = [["succeeded", "succeeded"], ["failed", "failed"], ["in_flight", "in flight"], ["canceled", "canceled"], ["pending", "pending"]];

function rolloutPage(id) {
  const cardBox = h("div");
  const chart = h("div", { class: "card" }, h("h2", { text: "Timeline" }), h("p", { class: "muted", text: "Loading…" }));
  const fails = h("div", { class: "card" }, h("h2", { text: "Failures by error code" }));
  const el = h("section", {}, h("p", {}, h("a", { href: "#/rollouts", text: "← all rollouts" })),
    h("h1", { text: `Rollout #${id}` }), cardBox, chart, fails);
  let loading = null;
  let again = false;

  async function loadDetail() {
    if (loading) { again = true; return; }
    loading = (async () => {
      try {
        const d = await api("GET", `/v1/dashboard/rollouts/${id}/detail`);
        chart.replaceChildren(h("h2", { text: "Timeline" }),
          timelineChart(d.timeline.points, `Devices by state over time, rollout #${id}`),
          h("ul", { class: "legend inline" }, LEGEND.map(([k, label]) => h("li", {}, h("span", { class: `dot ${k}` }), label))));
        fails.replaceChildren(h("h2", { text: "Failures by error code" }), ...[failureGroups(d.failure_groups)].flat());
      } catch (e) {
        showError(e);
      }
    })();
    await loading;
    loading = null;
    if (again) { again = false; setTimeout(loadDetail, 1000); }
  }

  function draw() {
    const r = state.rollouts.get(id);
    cardBox.replaceChildren(r ? rolloutCard(r, { detailed: true }) : h("p", { class: "muted", text: "Loading…" }));
  }
  // The countdown: re-render the schedule line each second while the page is shown.
  const ticker = setInterval(() => {
    if (!el.isConnected) return clearInterval(ticker);
    const r = state.rollouts.get(id);
    const line = cardBox.querySelector(".schedule");
    if (r && line) line.textContent = scheduleText(r);
  }, 1000);

  function update(kind, data) {
    if (kind === "devices" || kind === "summary") return;
    if (kind === "rollout" && data.id !== id) return;
    draw();
    loadDetail();
  }
  draw();
  loadDetail();
  return { el, update };
}

function newRolloutPage() {
  const box = h("div");
  const el = h("section", {}, h("p", {}, h("a", { href: "#/rollouts", text: "← all rollouts" })),
    h("h1", { text: "New rollout" }), box);
  const draw = () => box.replaceChildren(canAct()
    ? rolloutForm((created) => { location.hash = `#/rollouts/${created.id}`; })
    : h("p", { class: "muted", text: "Read-only: your token has the viewer role." }));
  draw();
  let drawn = state.releases.length > 0;
  return { el, update: (kind) => { if (kind === "all" && !drawn) { drawn = true; draw(); } } };
}

export function rolloutsView(arg) {
  if (arg === "new") return newRolloutPage();
  if (arg !== undefined) return rolloutPage(Number(arg));
  const list = h("div", { class: "rollouts" });
  const el = h("section", {}, h("div", { class: "title-row" }, h("h1", { text: "Rollouts" }),
    canAct() ? h("a", { class: "button primary", href: "#/rollouts/new", "data-action": "new-rollout", text: "New rollout" }) : null),
  list);
  const shown = () => [...state.rollouts.values()].sort((a, b) => b.id - a.id);
  function update(kind, data) {
    if (kind === "rollout") {
      const old = list.querySelector(`[data-rollout-id="${data.id}"]`);
      if (old) return old.replaceWith(rolloutCard(data));
    }
    if (kind === "devices" || kind === "summary") return;
    const rows = shown();
    list.replaceChildren(...(rows.length ? rows.map((r) => rolloutCard(r))
      : [h("p", { class: "muted", text: "No rollouts yet." })]));
  }
  update("all");
  return { el, update };
}
