// The overview: fleet tiles, versions in the field, presence, and the active rollouts.
import { barChart, donut } from "../chart.js";
import { badge, h } from "../dom.js";
import { ACTIVE, rolloutCounts, state } from "../state.js";
import { progressBar } from "./rollouts.js";

export function overviewView() {
  const el = h("section", { class: "overview" });
  function update() {
    const s = state.summary;
    if (!s) return el.replaceChildren(h("p", { class: "muted", text: "Loading…" }));
    const active = [...state.rollouts.values()].filter((r) => ACTIVE.includes(r.state));
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
        active.length ? active.map((r) => h("a", { class: "mini", href: `#/rollouts/${r.id}`, "data-mini": r.id },
          h("span", { text: `#${r.id} ${r.release.name}@${r.release.version}` }), badge(r.state),
          // Why it stopped (a gate, the failure threshold, an operator): the first thing to read.
          r.state === "paused" && r.reason ? h("span", { class: "reason mini-reason", "data-paused-reason": r.id, text: r.reason }) : null,
          progressBar(rolloutCounts(r))))
          : h("p", { class: "muted", text: "No rollout is running." })),
    );
  }
  update();
  return { el, update };
}
