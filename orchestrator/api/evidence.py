"""``/v1/devices/{id}/logs``: the output tails of a device's failures (issue 18).

Newest first, each with the state, time, release and step it came from. Stored cleaned
and bounded at ingestion (``orchestrator.evidence``); served as JSON strings, which the
dashboard sets as text only.
"""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.common import ctx, int_param, ok, requires
from orchestrator.api.context import ApiError

__all__ = ["MAX_LOGS", "routes"]

routes = web.RouteTableDef()

MAX_LOGS = 100  # entries per request


@routes.get("/v1/devices/{device_id}/logs")
@requires("viewer")
async def device_logs(request: web.Request) -> web.Response:
    """``rollout``: only that rollout's; ``limit``: at most this many (default 20)."""
    device_id = request.match_info["device_id"]
    q = request.query
    unknown = set(q) - {"rollout", "limit"}
    if unknown:
        raise ApiError(400, f"unknown parameter {sorted(unknown)[0]!r}")
    rollout_id = int_param(q["rollout"], "rollout") if "rollout" in q else None
    limit = min(int_param(q.get("limit", "20"), "limit"), MAX_LOGS)
    db = ctx(request).db
    await db.run(lambda s: s.get_device(device_id))  # 404 for an unknown device
    logs = await db.run(lambda s: s.device_outputs(device_id, rollout_id, limit))
    return ok({"device_id": device_id, "logs": [r.to_json() for r in logs]})
