"""``/v1/rollouts``: create, list, status, targets, pause, resume, cancel, retry."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.common import audit, ctx, int_param, json_body, ok, principal, requires
from orchestrator.api.context import ApiError
from orchestrator.api.releases import find_release
from orchestrator.policy import assign_phases
from orchestrator.rollouts import TargetSpec, resolve_targets, rollout_status, spec_from_request
from orchestrator.store import DeviceFilter, DeviceRecord, RolloutRecord, Store

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _rollout(request: web.Request) -> RolloutRecord:
    rollout_id = int_param(request.match_info["rollout_id"], "rollout id")
    return await ctx(request).db.run(lambda s: s.get_rollout(rollout_id))


async def _view(request: web.Request, r: RolloutRecord) -> dict[str, object]:
    return await ctx(request).db.run(lambda s: rollout_status(s, r))


@routes.post("/v1/rollouts")
@requires("operator")
async def create(request: web.Request) -> web.Response:
    body = await json_body(request)
    dry_run = body.pop("dry_run", False) is True
    body.pop("force", None)
    if "release" not in body:
        raise ApiError(400, "release: missing (an id or name@version)")
    release = await find_release(request, str(body["release"]))
    target = TargetSpec.from_json(body.get("target"))
    spec = spec_from_request(body)
    c = ctx(request)
    await c.refresh_registry()
    devices = await c.db.run(lambda s: s.list_devices(DeviceFilter(limit=10**9)))
    unknown = set(target.devices) - {d.device_id for d in devices}
    if unknown:
        raise ApiError(400, f"target.devices: unknown device {sorted(unknown)[0]!r}")
    chosen = resolve_targets(target, devices, release)
    if not chosen and not spec.continuous:
        raise ApiError(400, "target matches no registered device")
    now = c.clock.now()
    key = f"{release.id}:{now}"
    assignments = assign_phases(chosen, key, spec.phases)
    if dry_run:
        return ok(await c.db.run(lambda s: _dry_run(s, assignments, devices, spec.phases)))
    who = principal(request).name
    r = await c.db.run(
        lambda s: s.create_rollout(release_id=release.id, target=target.to_json(), spec=spec,
                                   assignments=assignments, now=now, actor=who)
    )  # fmt: skip
    await audit(request, "rollout.create", f"rollout/{r.id}", release=release.id,
                target=target.to_json(), spec=spec.to_json(), devices=len(chosen))  # fmt: skip
    c.engine.wake()
    return ok(await _view(request, r), status=201)


def _dry_run(
    s: Store,
    assignments: list[tuple[str, int, int]],
    devices: list[DeviceRecord],
    percents: tuple[float, ...],
) -> dict[str, object]:
    """Stand-in (h-dash) for h-cli's dry run: the devices each phase would take, and the
    ones held back (offline, or in another active rollout)."""
    online = {d.device_id: d.online for d in devices}
    holder: dict[str, int] = {}
    for other in s.list_rollouts(("scheduled", "running", "paused")):
        for t in s.list_targets(other.id, None, 10**6):
            holder.setdefault(t.device_id, other.id)
    phases: list[list[str]] = [[] for _ in percents]
    held = []
    for device, _, phase in assignments:
        phases[phase].append(device)
        reasons = [r for r, on in (("offline", not online.get(device, False)),
                                   ("other_rollout", device in holder)) if on]  # fmt: skip
        if reasons:
            held.append({"device": device, "phase": phase + 1, "reasons": reasons,
                         "rollout_id": holder.get(device)})  # fmt: skip
    return {
        "dry_run": True,
        "total": len(assignments),
        "phases": [
            {"phase": i + 1, "percent": percents[i], "devices": sorted(p)}
            for i, p in enumerate(phases)
        ],
        "held": held,
    }


@routes.get("/v1/rollouts")
@requires("viewer")
async def list_rollouts(request: web.Request) -> web.Response:
    states = tuple(request.query.getall("state", []))
    rollouts = await ctx(request).db.run(lambda s: s.list_rollouts(states))
    return ok({"rollouts": [await _view(request, r) for r in rollouts]})


@routes.get("/v1/rollouts/{rollout_id}")
@requires("viewer")
async def show(request: web.Request) -> web.Response:
    return ok(await _view(request, await _rollout(request)))


@routes.get("/v1/rollouts/{rollout_id}/targets")
@requires("viewer")
async def targets(request: web.Request) -> web.Response:
    r = await _rollout(request)
    state = request.query.get("state")
    limit = min(int_param(request.query.get("limit", "1000"), "limit"), 100_000)
    rows = await ctx(request).db.run(lambda s: s.list_targets(r.id, state, limit))
    return ok({"targets": [t.to_json() for t in rows]})


def _reason(body: dict[str, object]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise ApiError(400, "reason: a string of at most 500 characters")
    return reason


async def _optional_body(request: web.Request) -> dict[str, object]:
    return await json_body(request) if request.can_read_body else {}


@routes.post("/v1/rollouts/{rollout_id}/pause")
@requires("operator")
async def pause(request: web.Request) -> web.Response:
    r = await _rollout(request)
    reason = _reason(await _optional_body(request)) or "paused by operator"
    if r.state not in ("running", "scheduled"):
        raise ApiError(409, f"rollout {r.id} is {r.state}; only running rollouts pause")
    r = await ctx(request).engine.pause(r, reason)
    await audit(request, "rollout.pause", f"rollout/{r.id}", reason=reason)
    return ok(await _view(request, r))


@routes.post("/v1/rollouts/{rollout_id}/resume")
@requires("operator")
async def resume(request: web.Request) -> web.Response:
    r = await _rollout(request)
    if r.state != "paused":
        raise ApiError(409, f"rollout {r.id} is {r.state}; only paused rollouts resume")
    r = await ctx(request).engine.resume(r)
    await audit(request, "rollout.resume", f"rollout/{r.id}")
    return ok(await _view(request, r))


@routes.post("/v1/rollouts/{rollout_id}/cancel")
@requires("operator")
async def cancel(request: web.Request) -> web.Response:
    r = await _rollout(request)
    reason = _reason(await _optional_body(request)) or "canceled by operator"
    if not r.active:
        raise ApiError(409, f"rollout {r.id} is already {r.state}")
    sent = await ctx(request).engine.cancel_by_operator(r, reason)
    await audit(request, "rollout.cancel", f"rollout/{r.id}", reason=reason, cancels_sent=sent)
    r = await ctx(request).db.run(lambda s: s.get_rollout(r.id))
    return ok({**await _view(request, r), "cancels_sent": sent})


@routes.post("/v1/rollouts/{rollout_id}/retry")
@requires("operator")
async def retry(request: web.Request) -> web.Response:
    r = await _rollout(request)
    if r.state in ("canceled", "aborted"):
        raise ApiError(409, f"rollout {r.id} is {r.state}; create a new rollout instead")
    n = await ctx(request).engine.retry_failed(r)
    await audit(request, "rollout.retry", f"rollout/{r.id}", devices=n)
    r = await ctx(request).db.run(lambda s: s.get_rollout(r.id))
    return ok({**await _view(request, r), "retried": n})
