// The fleetpush dashboard: sign-in, routing between the views, live updates from /v1/events.
import { api, ApiError, stream, token } from "./api.js";
import { $ } from "./dom.js";
import { loadAll, showError, state } from "./state.js";
import { deviceView, devicesView } from "./views/devices.js";
import { overviewView } from "./views/overview.js";
import { releasesView } from "./views/releases.js";
import { rolloutsView } from "./views/rollouts.js";
import { tokensView } from "./views/tokens.js";

const VIEWS = ["devices", "releases", "rollouts", "tokens"];

function onEvent(name, data) {
  if (name === "unauthorized") return signOut("Your token is no longer valid.");
  if (name === "hello") return loadAll().catch(showError);
  if (name === "rollout") state.rollouts.set(data.id, data);
  else if (name === "summary") state.summary = data;
  else if (name === "devices") {
    if (data.truncated) {
      api("GET", "/v1/devices?limit=5000").then((r) => {
        state.devices = new Map(r.devices.map((d) => [d.device_id, d]));
        state.view?.update("devices", { changed: r.devices });
      }).catch(showError);
      return;
    }
    for (const d of data.changed) state.devices.set(d.device_id, d);
  }
  state.view?.update(name, data);
}

function route() {
  const [name = "overview", arg] = location.hash.replace(/^#\/?/, "").split("/");
  const id = arg === undefined || arg === "" ? undefined : decodeURIComponent(arg);
  let view;
  if (name === "devices" && id) view = deviceView(id);
  else if (name === "devices") view = devicesView();
  else if (name === "releases") view = releasesView();
  else if (name === "rollouts") view = rolloutsView(id);
  else if (name === "tokens" && state.me.role === "admin") view = tokensView();
  else view = overviewView();
  state.view = view;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.view === (VIEWS.includes(name) ? name : "overview"));
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
  $("#nav a[data-view=tokens]").hidden = state.me.role !== "admin";
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
  state.me = null;
  token.clear();
  setLive("offline");
  showSignIn(message);
}

state.onUnauthorized = signOut;
$("#signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  token.set($("#token").value.trim());
  $("#token").value = "";
  start();
});
$("#signout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", () => { if (state.me) route(); });
if (token.get()) start(); else showSignIn();
