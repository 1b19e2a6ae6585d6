"""``/v1/rollouts``: create (or dry-run), list, status, targets, approve, reject, pause,
resume, cancel, retry, revert."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping

from aiohttp import web

from orchestrator.api.bodies import CreateRollout, Reason, RevertRollout, decode_body, spec_of
from orchestrator.api.common import audit, ctx, int_param, json_body, ok, principal, requires
from orchestrator.api.context import ApiError
from orchestrator.api.releases import find_release
from orchestrator.approval import ApprovalRefusedError, check_decider, decide, needs_approval
from orchestrator.revert import revert_groups
from orchestrator.rollouts import (
    Plan,
    TargetSpec,
    active_owners,
    phase_key,
    plan_rollout,
    rollout_status,
    selector,
)
from orchestrator.rules import AWAITING_APPROVAL, RolloutSpec
from orchestrator.store import (
    ConflictError,
    DeviceFilter,
    ReleaseRecord,
    RolloutRecord,
    Store,
    TargetPreview,
)
from orchestrator.supersede import security_conflicts, security_held

__all__ = ["routes"]

routes = web.RouteTableDef()


async def _rollout(request: web.Request) -> RolloutRecord:
    rollout_id = int_param(request.match_info["rollout_id"], "rollout id")
    return await ctx(request).db.run(lambda s: s.get_rollout(rollout_id))


async def _view(request: web.Request, r: RolloutRecord) -> dict[str, object]:
    return await ctx(request).db.run(lambda s: rollout_status(s, r))


def _approval(request: web.Request, value: bool | None) -> bool:
    """Whether the rollout being created waits for approval (body ``require_approval``,
    or the installation's ``[rollouts] require_approval``)."""
    try:
        return needs_approval(ctx(request).config.rollouts.require_approval, value)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


def conflict(held: Mapping[int, int], total: int) -> web.Response | None:
    """The 409 for a target of ``total`` devices, ``held[r]`` of them by other active
    rollout ``r`` (None when none are)."""
    if not held:
        return None
    others = sorted(held)
    n = sum(held.values())
    reason = (
        f"{n} of the {total} targeted device(s) are held by active "
        f"rollout(s) {', '.join(map(str, others))}: cancel or finish those first, or pass "
        "force (CLI --force) to target them anyway"
    )
    return web.json_response(
        {"error": reason, "status": 409, "rollouts": others, "devices": n}, status=409
    )


async def _plan(
    request: web.Request, release: ReleaseRecord, target: TargetSpec, spec: RolloutSpec,
    dry_run: bool,
) -> Plan:  # fmt: skip
    c = ctx(request)
    await c.refresh_registry()
    devices = await c.db.run(lambda s: s.list_devices(DeviceFilter(limit=10**9)))
    unknown = set(target.devices) - {d.device_id for d in devices}
    if unknown:
        raise ApiError(400, f"target.devices: unknown device {sorted(unknown)[0]!r}")
    owners = await c.db.run(active_owners)
    plan = plan_rollout(target, spec, release, devices, owners)
    if not plan.assignments and not spec.continuous and not dry_run:
        raise ApiError(400, "target matches no registered device")
    return plan


@routes.post("/v1/rollouts")
@requires("operator")
async def create(request: web.Request) -> web.Response:
    """``dry_run``: validate, create nothing, answer the plan; ``force``: create even when
    other active rollouts hold some of the devices (409 otherwise)."""
    body = decode_body(CreateRollout, await json_body(request))
    dry_run, force = body.dry_run, body.force
    approval = _approval(request, body.require_approval)
    release = await find_release(request, str(body.release))
    target, spec = body.target, spec_of(body)
    if dry_run:
        plan = await _plan(request, release, target, spec, dry_run)
        kept = plan.conflicts
        if release.security and plan.conflicts:  # feature rollouts' devices are superseded
            kept = await ctx(request).db.run(lambda s: security_conflicts(s, plan.conflicts))
        out = plan.to_json(spec.phases)
        for h in out["held"] if release.security else ():  # taken, not waited for
            h["superseded"] = h["device"] in plan.conflicts and h["device"] not in kept
        return ok({**out, "requires_approval": approval})
    preview = await _preview(request, release, target, spec)
    held = preview.held
    if release.security and held:  # feature rollouts' devices are superseded
        held = await ctx(request).db.run(lambda s: security_held(s, preview.held))
    refused = None if force else conflict(held, preview.total)
    if refused is not None:
        return refused
    r = await create_rollout(request, release, target, spec, preview, approval=approval)
    return ok(await _view(request, r), status=201)


async def _preview(
    request: web.Request, release: ReleaseRecord, target: TargetSpec, spec: RolloutSpec
) -> TargetPreview:
    """What a create will target, counted by the database (no device is read here: a
    million-device fleet stays in SQL)."""
    c = ctx(request)
    await c.refresh_registry()
    unknown = await c.db.run(lambda s: s.missing_devices(target.devices))
    if unknown:
        raise ApiError(400, f"target.devices: unknown device {unknown[0]!r}")
    preview = await c.db.run(lambda s: s.preview_targets(selector(target, release)))
    if not preview.total and not spec.continuous:
        raise ApiError(400, "target matches no registered device")
    return preview


async def create_rollout(
    request: web.Request, release: ReleaseRecord, target: TargetSpec, spec: RolloutSpec,
    preview: TargetPreview | Plan, *, approval: bool, **audit_detail: object,
) -> RolloutRecord:  # fmt: skip
    """Store the rollout (awaiting approval when ``approval``), audit it, and wake the
    engine. A ``Plan`` (revert: devices by id) is stored as planned; a ``TargetPreview``'s
    target is resolved by the database in the same order and phases ``plan_rollout``
    gives."""
    c = ctx(request)
    now = c.clock.now()
    who = principal(request).name
    # A security rollout is stored held (scheduled), then started with its take-over in
    # one transaction; should this replica die in between, the engine starts it.
    hold = release.security and not approval
    if isinstance(preview, Plan):
        plan = preview

        def store(s: Store) -> RolloutRecord:
            return s.create_rollout(release_id=release.id, target=target.to_json(), spec=spec,
                                    assignments=plan.assignments, now=now, actor=who,
                                    approval=approval, hold=hold)  # fmt: skip

        devices, forced = len(plan.assignments), sorted(set(plan.conflicts.values()))
    else:
        sel, key = selector(target, release), phase_key(release.id, target)

        def store(s: Store) -> RolloutRecord:
            return s.create_rollout_for(release_id=release.id, target=target.to_json(),
                                        spec=spec, selector=sel, key=key, now=now, actor=who,
                                        approval=approval, hold=hold)  # fmt: skip

        devices, forced = preview.total, sorted(preview.held)
    r = await c.db.run(store)
    await audit(request, "rollout.create", f"rollout/{r.id}", release=release.id,
                target=target.to_json(), spec=spec.to_json(), devices=devices,
                forced=forced, requires_approval=approval, **audit_detail)  # fmt: skip
    if hold and spec.start_state(now) == "running":  # a later one starts at its time (engine)
        async with c.engine.lock:
            try:
                fields = {"state": "running", "phase_started_at": now}
                r, _ = await c.engine.start_rollout(r, now, fields, actor=who)
            except ConflictError:  # another replica's engine started it first
                r = await c.db.run(lambda s: s.get_rollout(r.id))
    c.engine.wake()
    return r


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


async def _optional_body(request: web.Request) -> dict[str, object]:
    return await json_body(request) if request.can_read_body else {}


async def _reason(request: web.Request) -> str:
    return decode_body(Reason, await _optional_body(request)).reason


async def _decide(request: web.Request, approve: bool) -> web.Response:
    """Approve or reject a rollout awaiting approval; never its creator's own."""
    r = await _rollout(request)
    reason = await _reason(request)
    action = "approve" if approve else "reject"
    if not approve and not reason.strip():
        raise ApiError(400, "reason: say why the rollout is rejected (CLI --reason)")
    who = principal(request)

    def check(stored: RolloutRecord) -> None:
        try:
            check_decider(stored, who, action)
        except ApprovalRefusedError as e:
            raise ApiError(e.status, str(e)) from None

    try:
        r, taken = await decide(
            ctx(request).engine, r.id, check, approve=approve, actor=who.name,
            reason=reason or f"rejected by {who.name}",
        )  # fmt: skip
    except ApiError as e:
        # A refused decision is an event about a pending rollout too: who tried what.
        await audit(request, f"rollout.{action}_refused", f"rollout/{r.id}", error=e.reason)
        raise
    except ConflictError as e:
        # Another replica decided between the check and the compare-and-set: refused too.
        await audit(request, f"rollout.{action}_refused", f"rollout/{r.id}", error=str(e))
        raise ApiError(409, str(e)) from None
    await audit(request, f"rollout.{action}", f"rollout/{r.id}", reason=reason,
                created_by=r.created_by, state=r.state, superseded=sorted(taken))  # fmt: skip
    return ok(await _view(request, r))


@routes.post("/v1/rollouts/{rollout_id}/approve")
@requires("operator")
async def approve(request: web.Request) -> web.Response:
    return await _decide(request, True)


@routes.post("/v1/rollouts/{rollout_id}/reject")
@requires("operator")
async def reject(request: web.Request) -> web.Response:
    return await _decide(request, False)


@routes.post("/v1/rollouts/{rollout_id}/pause")
@requires("operator")
async def pause(request: web.Request) -> web.Response:
    r = await _rollout(request)
    reason = await _reason(request) or "paused by operator"
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
    reason = await _reason(request) or "canceled by operator"
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
    if r.state in ("canceled", "aborted", "rejected"):
        raise ApiError(409, f"rollout {r.id} is {r.state}; create a new rollout instead")
    if r.state == AWAITING_APPROVAL:  # a retry restarts it: that would skip the approval
        raise ApiError(409, f"rollout {r.id} is awaiting approval; nothing to retry yet")
    n = await ctx(request).engine.retry_failed(r)
    await audit(request, "rollout.retry", f"rollout/{r.id}", devices=n)
    r = await ctx(request).db.run(lambda s: s.get_rollout(r.id))
    return ok({**await _view(request, r), "retried": n})


@routes.post("/v1/rollouts/{rollout_id}/revert")
@requires("operator")
async def revert(request: web.Request) -> web.Response:
    """Put the devices the rollout updated back on the release each ran before: one new
    rollout per such release, targeting its devices by id. The body takes the settings of
    a create (``phases``, ``success_pct``, ...), ``dry_run`` and ``force``."""
    r = await _rollout(request)
    body = decode_body(RevertRollout, await _optional_body(request))
    dry_run, force, spec = body.dry_run, body.force, spec_of(body)
    approval = _approval(request, body.require_approval)
    if r.active:
        raise ApiError(
            409, f"rollout {r.id} is {r.state}; cancel it first (its devices stay where "
            "they are), then revert"
        )  # fmt: skip
    c = ctx(request)
    groups, skipped = await c.db.run(lambda s: revert_groups(s, r))
    if not groups and not dry_run:
        reasons = "; ".join(f"{k['device']}: {k['reason']}" for k in skipped[:5])
        raise ApiError(409, f"rollout {r.id}: no device to revert ({reasons or 'none succeeded'})")
    plans = []
    for release, device_ids in groups:
        target = TargetSpec(devices=tuple(device_ids))
        plans.append((release, target, await _plan(request, release, target, spec, True)))
    if dry_run:
        return ok({"dry_run": True, "reverts": r.id, "skipped": skipped, "rollouts": [
            {"release": {"id": rel.id, "name": rel.name, "version": rel.version},
             **plan.to_json(spec.phases)} for rel, _, plan in plans]})  # fmt: skip
    if not force:
        held = Counter(v for *_, p in plans for v in p.conflicts.values())
        refused = conflict(held, sum(len(p.assignments) for *_, p in plans))
        if refused is not None:
            return refused
    created = []
    for release, target, plan in plans:
        if not plan.assignments:  # every device left out for its model: see the dry run
            continue
        new = await create_rollout(request, release, target, spec, plan, approval=approval,
                                   reverts=r.id)  # fmt: skip
        created.append(await _view(request, new))
    await audit(request, "rollout.revert", f"rollout/{r.id}",
                rollouts=[v["id"] for v in created], skipped=len(skipped))  # fmt: skip
    return ok({"reverts": r.id, "rollouts": created, "skipped": skipped}, status=201)
