// Releases: what was uploaded, how many devices run each, its security advisory and SBOM
// components (fetched when opened), and the upload form.
import { api } from "../api.js";
import { ago, badge, h, size, table, when } from "../dom.js";
import { uploadForm } from "../forms.js";
import { canAct, showError, state } from "../state.js";

function security(r) {
  if (r.update_class !== "security" || !r.advisory) return h("span", { class: "muted", text: "feature" });
  const a = r.advisory;
  return h("span", { "data-security": a.severity, title: a.summary },
    badge(`security ${a.severity}`, "failed"), " ", a.cves.join(", ") || "no CVE id");
}

function sbom(r) {
  const box = h("details", { "data-sbom": r.id }, h("summary", { text: "SBOM" }));
  box.addEventListener("toggle", async () => {
    if (!box.open || box.dataset.loaded) return;
    try {
      const full = await api("GET", `/v1/releases/${r.id}`);
      box.dataset.loaded = "1";
      box.append(full.sbom
        ? table(["Component", "Version"], full.sbom.components.map((c) => h("tr", {},
          h("td", { text: c.name }), h("td", { text: c.version || "—" }))), { class: "sbom" })
        : h("p", { class: "muted small", text: "No SBOM (fleetpush release sbom REF FILE)." }));
    } catch (e) {
      showError(e);
    }
  });
  return box;
}

export function releasesView() {
  const list = h("div");
  const form = canAct() ? uploadForm(() => update()) : null;
  const el = h("section", {}, h("h1", { text: "Releases" }), form, list);
  function update() {
    const running = new Map((state.summary?.versions || []).map((v) => [v.version, v.devices]));
    list.replaceChildren(state.releases.length
      ? table(["Release", "Class", "Size", ["Models", "wide"], ["Handler", "wide"], "Devices on it", ["Created", "wide"], ["SHA-256", "wide"], "SBOM"],
        [...state.releases].reverse().map((r) => h("tr", { "data-release": `${r.name}@${r.version}` },
          h("td", {}, h("strong", { text: r.name }), "@", r.version),
          h("td", {}, security(r)),
          h("td", { text: size(r.size) }),
          h("td", { class: "wide", text: r.models.join(", ") || "any" }),
          h("td", { class: "wide", "data-handler": r.handler,
            text: r.components?.length ? `system: ${r.components.map((c) => `${c.name} (${c.handler})`).join(", ")}` : r.handler }),
          h("td", { text: running.get(r.version) || 0 }),
          h("td", { class: "wide", title: when(r.created_at), text: ago(r.created_at) }),
          h("td", { class: "wide mono", title: r.sha256, text: r.sha256.slice(0, 12) }),
          h("td", {}, sbom(r)))), { class: "releases" })
      : h("p", { class: "muted", text: "No release uploaded yet." }));
  }
  update();
  return { el, update };
}
