// What the page knows, loaded from the API and kept current by the event stream.
import { api, ApiError } from "./api.js";
import { flash } from "./dom.js";

export const FAILED = ["failed", "rolled_back", "rejected", "timed_out"];
export const IN_FLIGHT = ["sent", "notified", "deferred", "downloading", "downloaded", "installing", "installed"];
export const ACTIVE = ["awaiting_approval", "scheduled", "running", "paused"];

export const state = {
  me: null,
  summary: null,
  rollouts: new Map(), // id -> dashboard rollout view
  devices: new Map(), // device_id -> device
  releases: [],
  filters: { q: "", online: "", version: "", group: "", model: "", security: "" },
  missingSecurity: new Map(), // device_id -> security releases it has no record of installing
  view: null, // { el, update(kind, data) }
  stopStream: null,
  onUnauthorized: () => {},
};

export const canAct = () => Boolean(state.me?.can_act);
export const isAdmin = () => state.me?.role === "admin";

export async function loadAll() {
  const [summary, rollouts, devices, releases, security] = await Promise.all([
    api("GET", "/v1/dashboard/summary"),
    api("GET", "/v1/dashboard/rollouts"),
    api("GET", "/v1/devices?limit=5000"),
    api("GET", "/v1/releases"),
    api("GET", "/v1/security/missing"),
  ]);
  state.missingSecurity = new Map();
  for (const entry of security.releases) {
    for (const id of entry.missing) {
      if (!state.missingSecurity.has(id)) state.missingSecurity.set(id, []);
      state.missingSecurity.get(id).push(`${entry.release.name} ${entry.release.version}`);
    }
  }
  state.summary = summary;
  state.rollouts = new Map(rollouts.rollouts.map((r) => [r.id, r]));
  state.devices = new Map(devices.devices.map((d) => [d.device_id, d]));
  state.releases = releases.releases;
  state.view?.update("all");
}

export async function reloadReleases() {
  state.releases = (await api("GET", "/v1/releases")).releases;
}

export function showError(e) {
  if (e instanceof ApiError && e.status === 401) return state.onUnauthorized("Your token is no longer valid.");
  flash(e.message || String(e), true);
}

export function rolloutCounts(r) {
  const s = r.states || {};
  const sumOf = (keys) => keys.reduce((a, k) => a + (s[k] || 0), 0);
  return {
    succeeded: s.succeeded || 0,
    failed: sumOf(FAILED),
    in_flight: sumOf(IN_FLIGHT),
    pending: s.pending || 0,
    canceled: s.canceled || 0,
    total: r.devices,
  };
}
