"""``/v1/devices``: the registry, filters, operator groups, model and tags.

Groups and model are facts from provisioning (the registry) and the operator; what a
device's inventory says is shown as its claims (``claimed_*``, ``claims_mismatch``).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from orchestrator.api.bodies import LabelDevice, decode_body
from orchestrator.api.common import audit, ctx, int_param, json_body, ok, requires
from orchestrator.api.context import ApiError
from orchestrator.security_status import missing_security
from orchestrator.store import DeviceFilter, Store

__all__ = ["routes"]

routes = web.RouteTableDef()

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _filter(q: dict[str, str]) -> DeviceFilter:
    online = None
    if "online" in q:
        if q["online"].lower() not in _BOOL:
            raise ApiError(400, "online: expected true or false")
        online = _BOOL[q["online"].lower()]
    unknown = set(q) - {"group", "model", "online", "version", "tag", "limit", "offset",
                        "after", "missing_security"}  # fmt: skip
    if unknown:
        raise ApiError(400, f"unknown filter {sorted(unknown)[0]!r}")
    return DeviceFilter(
        group=q.get("group"),
        model=q.get("model"),
        online=online,
        version=q.get("version"),
        tag=q.get("tag"),
        limit=min(int_param(q.get("limit", "1000"), "limit"), 100_000),
        offset=int_param(q.get("offset", "0"), "offset"),
        after=q.get("after") or None,
    )


@routes.get("/v1/devices")
@requires("viewer")
async def list_devices(request: web.Request) -> web.Response:
    """``missing_security=true``: only devices missing a security release, each with
    ``missing_security`` (the releases it misses)."""
    f = _filter(dict(request.query))
    missing_only = request.query.get("missing_security", "false").lower()
    if missing_only not in _BOOL:
        raise ApiError(400, "missing_security: expected true or false")
    await ctx(request).refresh_registry()
    devices = await ctx(request).db.run(lambda s: s.list_devices(f))
    # ``next``: the cursor of the following page (pass it as ``after``); null on the last
    # page. A full page may be followed by an empty one. With ``missing_security`` a page
    # holds those of the page's devices that miss one (it may be empty, and not the last).
    full = bool(devices) and len(devices) == f.limit
    after = devices[-1].device_id if full else None
    if not _BOOL[missing_only]:
        return ok({"devices": [d.to_json() for d in devices], "next": after})
    by_device: dict[str, list[dict[str, object]]] = {}
    for entry in await security_report(request):
        for device_id in entry["missing"]:
            by_device.setdefault(device_id, []).append(
                {**entry["release"], "cves": (entry["advisory"] or {}).get("cves", [])}
            )
    return ok({"devices": [{**d.to_json(), "missing_security": by_device[d.device_id]}
                           for d in devices if d.device_id in by_device],
               "next": after})  # fmt: skip


async def security_report(request: web.Request) -> list[dict[str, Any]]:
    """``missing_security`` over every registered device (on the DB thread)."""

    def run(s: Store) -> list[dict[str, Any]]:
        return missing_security(s.list_releases(), s.list_devices(DeviceFilter(limit=10**9)),
                                s.succeeded_releases())  # fmt: skip

    return await ctx(request).db.run(run)


@routes.get("/v1/security/missing")
@requires("viewer")
async def missing(request: web.Request) -> web.Response:
    """Per security release: its advisory and the devices that miss it."""
    await ctx(request).refresh_registry()
    return ok({"releases": await security_report(request)})


@routes.get("/v1/devices/{device_id}")
@requires("viewer")
async def show_device(request: web.Request) -> web.Response:
    device_id = request.match_info["device_id"]
    c = ctx(request)
    await c.refresh_registry()
    device = await c.db.run(lambda s: s.get_device(device_id))
    history = await c.db.run(lambda s: s.device_history(device_id))
    systems = await c.db.run(lambda s: s.device_components(device_id))
    # The newest failure's output (issue 18); the rest: GET /v1/devices/{id}/logs.
    last = await c.db.run(lambda s: s.device_outputs(device_id, None, 1))
    return ok({**device.to_json(), "reports": history, "systems": systems,
               "last_output": last[0].to_json() if last else None})  # fmt: skip


@routes.patch("/v1/devices/{device_id}")
@requires("operator")
async def label_device(request: web.Request) -> web.Response:
    """Set operator groups (``groups``), model (``model``; ``""`` falls back to the
    provisioned one) and/or tags (``tags``: string map)."""
    device_id = request.match_info["device_id"]
    body = decode_body(LabelDevice, await json_body(request))
    groups = list(body.groups) if body.groups is not None else None
    model, tags = body.model, body.tags
    c = ctx(request)
    await c.refresh_registry()
    device = await c.db.run(lambda s: s.set_device_labels(device_id, groups, tags, model))
    await audit(
        request, "device.label", f"device/{device_id}", groups=groups, tags=tags, model=model
    )
    return ok(device.to_json())
