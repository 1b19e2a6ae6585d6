// Releases: what was uploaded, how many devices run each, and the upload form.
import { ago, h, size, table, when } from "../dom.js";
import { uploadForm } from "../forms.js";
import { canAct, state } from "../state.js";

export function releasesView() {
  const list = h("div");
  const form = canAct() ? uploadForm(() => update()) : null;
  const el = h("section", {}, h("h1", { text: "Releases" }), form, list);
  function update() {
    const running = new Map((state.summary?.versions || []).map((v) => [v.version, v.devices]));
    list.replaceChildren(state.releases.length
      ? table(["Release", "Size", ["Models", "wide"], ["Handler", "wide"], "Devices on it", ["Created", "wide"], ["SHA-256", "wide"]],
        [...state.releases].reverse().map((r) => h("tr", { "data-release": `${r.name}@${r.version}` },
          h("td", {}, h("strong", { text: r.name }), "@", r.version),
          h("td", { text: size(r.size) }),
          h("td", { class: "wide", text: r.models.join(", ") || "any" }),
          h("td", { class: "wide", text: r.handler }),
          h("td", { text: running.get(r.version) || 0 }),
          h("td", { class: "wide", title: when(r.created_at), text: ago(r.created_at) }),
          h("td", { class: "wide mono", title: r.sha256, text: r.sha256.slice(0, 12) }))), { class: "releases" })
      : h("p", { class: "muted", text: "No release uploaded yet." }));
  }
  update();
  return { el, update };
}
