// API tokens (admin): list, create (the secret is shown once), revoke.
import { api } from "../api.js";
import { badge, flash, h, option, table, when } from "../dom.js";
import { showError } from "../state.js";

export function tokensView() {
  const list = h("div");
  const created = h("div");
  const name = h("input", { name: "name", required: true, maxlength: 64, placeholder: "ci-pipeline" });
  const role = h("select", { name: "role" }, option("viewer", "viewer", "viewer"),
    option("operator", "operator", "viewer"), option("admin", "admin", "viewer"));
  const form = h("form", { class: "card form", "data-form": "token", onsubmit: async (e) => {
    e.preventDefault();
    try {
      const t = await api("POST", "/v1/tokens", { name: name.value.trim(), role: role.value });
      form.reset();
      created.replaceChildren(h("div", { class: "card secret", "data-new-token": t.name },
        h("strong", { text: `Token ${t.name} (${t.role}): ` }), "copy it now, it is not shown again.",
        h("input", { readonly: true, class: "mono", value: t.token, "data-token-value": "",
          onfocus: (ev) => ev.target.select(), "aria-label": "the new token" })));
      await load();
    } catch (err) {
      showError(err);
    }
  } },
  h("h2", { text: "New token" }),
  h("div", { class: "form-grid" },
    h("label", { class: "field" }, h("span", { class: "label", text: "Name" }), name),
    h("label", { class: "field" }, h("span", { class: "label", text: "Role" }), role)),
  h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary", text: "Create token" })));

  async function revoke(t) {
    if (!confirm(`Revoke token ${t.name}? Whatever uses it is refused from now on.`)) return;
    try {
      await api("DELETE", `/v1/tokens/${encodeURIComponent(t.name)}`);
      flash(`Token ${t.name} revoked.`);
      await load();
    } catch (err) {
      showError(err);
    }
  }

  async function load() {
    const { tokens } = await api("GET", "/v1/tokens");
    list.replaceChildren(tokens.length ? table(["Name", "Role", "Created", "State", ""],
      tokens.map((t) => h("tr", { "data-token": t.name },
        h("td", { text: t.name }), h("td", { text: t.role }),
        h("td", { text: when(t.created_at) }),
        h("td", {}, t.revoked ? badge("revoked", "canceled") : badge("active", "succeeded")),
        h("td", {}, t.revoked ? null : h("button", { type: "button", class: "danger", "data-action": "revoke",
          onclick: () => revoke(t), text: "Revoke" })))), { class: "tokens" })
      : h("p", { class: "muted", text: "No token in the database (the tokens file's are not listed here)." }));
  }

  const el = h("section", {}, h("h1", { text: "Tokens" }), form, created, list);
  load().catch(showError);
  return { el, update: () => {} };
}
