"""Health, metrics, payload downloads, keys, tokens and the audit log."""

from __future__ import annotations

import logging

from aiohttp import web

from orchestrator.api.bodies import NewToken, decode_body
from orchestrator.api.common import audit, ctx, int_param, json_body, ok, requires
from orchestrator.api.context import ApiError
from orchestrator.api.devices import security_report
from orchestrator.rules import ACTIVE_ROLLOUT_STATES, ROLLOUT_STATES
from orchestrator.security.auth import hash_token, new_token
from orchestrator.security.keystore import describe
from orchestrator.store import Store

logger = logging.getLogger(__name__)

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    c = ctx(request)
    mqtt_up = bool(c.extra_metrics.get("mqtt_connected", lambda: False)())
    await c.db.run(lambda s: s.counters())  # the database answers
    return ok({"status": "ok" if mqtt_up else "degraded", "mqtt_connected": mqtt_up,
               "database": "ok", "replica": c.engine.holder},
              status=200 if mqtt_up else 503)  # fmt: skip


def _metric(lines: list[str], name: str, kind: str, help_: str, values: dict[str, float]) -> None:
    lines.append(f"# HELP {name} {help_}")
    lines.append(f"# TYPE {name} {kind}")
    for labels, value in values.items():
        lines.append(f"{name}{labels} {value:g}")


def _bytes_saved(s: Store) -> list[tuple[int, int]]:
    out = []
    for r in s.list_rollouts(sorted(ACTIVE_ROLLOUT_STATES)):
        devices, downloaded = s.download_totals(r.id)
        out.append((r.id, devices * s.get_release(r.release_id).size - downloaded))
    return out


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    c = ctx(request)
    online = await c.db.run(lambda s: s.online_count())
    rollouts = await c.db.run(lambda s: s.rollout_state_counts())
    counters = await c.db.run(lambda s: s.counters())
    await c.refresh_registry()
    mismatched = await c.db.run(lambda s: s.claims_mismatch_count())
    lines: list[str] = []
    _metric(lines, "fleetpush_devices_online", "gauge", "Devices whose presence is online.",
            {"": online})  # fmt: skip
    _metric(lines, "fleetpush_devices_claims_mismatch", "gauge",
            "Devices whose inventory claims groups or a model the registry does not give them.",
            {"": mismatched})  # fmt: skip
    states = ROLLOUT_STATES
    _metric(lines, "fleetpush_rollouts", "gauge", "Rollouts by state.",
            {f'{{state="{s}"}}': rollouts.get(s, 0) for s in states})  # fmt: skip
    saved = await c.db.run(_bytes_saved)
    _metric(lines, "fleetpush_rollout_bytes_saved", "gauge",
            "Bytes an active rollout's devices did not download thanks to deltas.",
            {f'{{rollout="{rid}"}}': n for rid, n in saved})  # fmt: skip
    security = await security_report(request)
    _metric(lines, "fleetpush_devices_missing_security", "gauge",
            "Devices with no record of installing a security release (or a later one).",
            {f'{{release="{e["release"]["name"]}@{e["release"]["version"]}"}}': e["count"]
             for e in security})  # fmt: skip
    for key, help_ in (
        ("reports_ingested", "Reports accepted and stored."),
        ("reports_duplicate", "Reports dropped as duplicates (same device and counter)."),
        ("reports_rejected", "Reports about a notice that was not sent to that device."),
        ("notices_published", "Signed notices acknowledged by the broker."),
        ("messages_rate_limited", "Device messages dropped over the device's rate limit."),
        ("messages_oversized", "Device messages dropped over the size or unknown-field cap."),
        ("reports_pruned", "Stored reports deleted by the retention policy."),
        ("outputs_pruned", "Stored failure outputs deleted by the retention policy."),
        ("payload_bytes_downloaded", "Payload and delta bytes devices said they downloaded."),
        (
            "payload_bytes_saved",
            "Bytes devices did not download thanks to deltas (full minus "
            "downloaded; negative when a delta failed and the full payload followed).",
        ),
    ):
        _metric(lines, f"fleetpush_{key}_total", "counter", help_, {"": counters.get(key, 0)})
    for key, fn in c.extra_metrics.items():
        if key != "mqtt_connected":
            _metric(lines, f"fleetpush_{key}", "gauge", key.replace("_", " ") + ".",
                    {"": float(fn())})  # fmt: skip
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain",
                        charset="utf-8", headers={"X-Content-Type-Options": "nosniff"})  # fmt: skip


@routes.get("/payloads/{sha256}")
async def payload(request: web.Request) -> web.StreamResponse:
    """A payload by signed URL; Range requests are honoured (resumable downloads)."""
    c = ctx(request)
    sha = request.match_info["sha256"]
    try:
        path = c.payloads.path(sha)  # a digest's shape, before anything is logged
    except ValueError:
        raise ApiError(404, "no such payload") from None
    problem = c.urls.check(sha, request.query.get("exp", ""), request.query.get("sig", ""),
                           c.clock.now())  # fmt: skip
    if problem is not None:
        # Named by the payload, never the URL (its signature is a credential). A "bad
        # signature" from real devices means replicas sign with different keys.
        logger.info("payload %s: URL refused (%s)", sha[:16], problem)
        raise ApiError(403, f"payload URL refused: {problem}")
    if not path.is_file():
        raise ApiError(404, "no such payload")
    return web.FileResponse(path, headers={"Content-Type": "application/octet-stream",
                                           "Cache-Control": "private, no-transform"})  # fmt: skip


@routes.get("/v1/keys")
@requires("viewer")
async def keys(request: web.Request) -> web.Response:
    c = ctx(request)
    ring = c.keys.current()
    return ok({"current": describe(ring), "anchor": {
        "root_keys": [k.hex() for k in c.keys.anchor().keyring.root_keys],
        "threshold": c.keys.anchor().keyring.root_threshold}})  # fmt: skip


@routes.post("/v1/keys/reload")
@requires("admin")
async def reload_keys(request: web.Request) -> web.Response:
    """Re-read the keys folder after ``fleetpush keys rotate``; publish every keyring."""
    c = ctx(request)
    published = await c.reload_keys()
    ring = c.keys.current()
    await audit(request, "keys.reload", f"keyring/{ring.version}", published=published)
    return ok({"version": ring.version, "published": published})


@routes.get("/v1/audit")
@requires("admin")
async def audit_log(request: web.Request) -> web.Response:
    limit = min(int_param(request.query.get("limit", "100"), "limit"), 10_000)
    after = int_param(request.query.get("after", "0"), "after")
    entries = await ctx(request).db.run(lambda s: s.list_audit(limit, after))
    return ok({"entries": [e.to_json() for e in entries]})


@routes.get("/v1/tokens")
@requires("admin")
async def list_tokens(request: web.Request) -> web.Response:
    tokens = await ctx(request).db.run(lambda s: s.list_tokens())
    return ok({"tokens": [t.to_json() for t in tokens]})


@routes.post("/v1/tokens")
@requires("admin")
async def create_token(request: web.Request) -> web.Response:
    body = decode_body(NewToken, await json_body(request))
    name, role = body.name, body.role
    token = new_token()
    c = ctx(request)
    now = c.clock.now()
    await c.db.run(lambda s: s.add_token(name, str(role), hash_token(token), now))
    await audit(request, "token.create", f"token/{name}", role=role)
    return ok({"name": name, "role": role, "token": token}, status=201)


@routes.delete("/v1/tokens/{name}")
@requires("admin")
async def revoke_token(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    await ctx(request).db.run(lambda s: s.revoke_token(name))
    await audit(request, "token.revoke", f"token/{name}")
    return ok({"revoked": name})
