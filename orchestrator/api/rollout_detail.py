"""What the dashboard shows about one rollout beyond its counts: when its next phase may
open, a timeline of its devices' states, and its failures grouped by error code.

Everything is derived from what is already stored (the rollout record and its targets), so
nothing is recorded twice. The timeline is built from each target's ``notified_at`` (it
left ``pending``) and ``updated_at`` (when it reached a final state): a device's steps in
between (downloading, installing) are counted as in flight. It is bounded by
``MAX_TARGETS_READ`` and ``TIMELINE_POINTS`` whatever the rollout's size.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from orchestrator.api.common import ctx, int_param, ok, requires
from orchestrator.rules import CANCELED, FAILURE_STATES, SUCCEEDED, TERMINAL_STATES
from orchestrator.store import RolloutRecord, Store, TargetRecord

__all__ = ["failure_groups", "routes", "schedule", "timeline"]

routes = web.RouteTableDef()

MAX_TARGETS_READ = 100_000
TIMELINE_POINTS = 60
MAX_GROUPS = 20
MAX_DEVICES_PER_GROUP = 20
_CODE = re.compile(r"^([a-z][a-z0-9_]{0,63}): ?(.*)$", re.DOTALL)
_DAY_S = 86400


def _next_window_start(r: RolloutRecord, now: float) -> float | None:
    """The next moment a maintenance window opens (None: no window, or inside one)."""
    windows = r.spec.windows
    if not windows or any(w.contains(now) for w in windows):
        return None
    midnight = now - now % _DAY_S
    starts = [
        midnight + day * _DAY_S + w.start_min * 60 for day in range(8) for w in windows
    ]  # a window repeats weekly at most, so the next 8 days hold its next start
    later = [t for t in starts if t > now and any(w.contains(t) for w in windows)]
    return min(later, default=None)


def schedule(r: RolloutRecord, now: float) -> dict[str, Any]:
    """When the current phase's soak ends and what happens then.

    Only absolute times, so the view changes when the rollout does, not with each second
    (the page counts down itself).
    """
    spec = r.spec
    last = r.phase + 1 >= len(spec.phases)
    soak_ends_at = None
    if r.state == "running" and r.gate_met_at is not None:
        soak_ends_at = r.gate_met_at + spec.soak_s
    return {
        "phase": r.phase + 1,
        "phases": len(spec.phases),
        "gate_met_at": r.gate_met_at,
        "soak_s": spec.soak_s,
        "soak_ends_at": soak_ends_at,
        "next_phase": None if last else r.phase + 2,
        "starts_at": spec.start_at if r.state == "scheduled" else None,
        "next_window_at": _next_window_start(r, now) if r.active else None,
    }


def timeline(
    targets: Sequence[TargetRecord], start: float, end: float, points: int = TIMELINE_POINTS
) -> dict[str, Any]:
    """Counts of pending, in-flight, succeeded, failed and canceled devices at ``points``
    evenly spaced moments from ``start`` to ``end``."""
    end = max(end, start + 1.0)
    final: dict[str, list[float]] = {"succeeded": [], "failed": [], "canceled": []}
    left_pending: list[float] = []  # when each device stopped being pending
    for t in targets:
        reached = t.state in TERMINAL_STATES
        if t.notified_at is not None:
            left_pending.append(t.notified_at)
        elif reached:  # canceled before it was ever notified
            left_pending.append(t.updated_at)
        if not reached:
            continue
        kind = (
            "succeeded" if t.state == SUCCEEDED else "canceled" if t.state == CANCELED else "failed"
        )
        final[kind].append(max(t.updated_at, t.notified_at or t.updated_at))
    for values in (*final.values(), left_pending):
        values.sort()
    step = (end - start) / max(1, points - 1)
    rows = []
    for i in range(points):
        at = start + i * step
        done = {k: bisect.bisect_right(v, at) for k, v in final.items()}
        moved = bisect.bisect_right(left_pending, at)
        rows.append({
            "at": round(at, 3),
            "pending": len(targets) - moved,
            "in_flight": max(0, moved - sum(done.values())),
            **done,
        })  # fmt: skip
    return {"start": start, "end": end, "devices": len(targets), "points": rows}


def failure_groups(targets: Sequence[TargetRecord]) -> list[dict[str, Any]]:
    """Failed devices grouped by the error code they reported (or by their state when they
    reported none, e.g. ``timed_out``), largest group first; each with its message."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in targets:
        if t.state not in FAILURE_STATES:
            continue
        m = _CODE.match(t.reason)
        code, message = (m.group(1), m.group(2)) if m else (t.state, t.reason)
        groups.setdefault(code, []).append(
            {
                "device_id": t.device_id,
                "state": t.state,
                "phase": t.phase + 1,
                "message": message,
                "at": t.updated_at,
            }
        )
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_GROUPS]
    return [
        {"code": code, "count": len(devices), "devices": devices[:MAX_DEVICES_PER_GROUP]}
        for code, devices in ordered
    ]


def detail(s: Store, rollout_id: int, now: float) -> dict[str, Any]:
    r = s.get_rollout(rollout_id)
    targets = s.list_targets(r.id, None, MAX_TARGETS_READ)
    end = now if r.active else r.updated_at
    groups = failure_groups(targets)
    # Each failed device's latest output tail (issue 18), shown under its message.
    shown = [d["device_id"] for g in groups for d in g["devices"]]
    outputs = s.rollout_outputs(r.id, shown)
    for d in (d for g in groups for d in g["devices"]):
        out = outputs.get(d["device_id"])
        d["output"] = out.to_json()["output"] if out is not None else []
    return {
        "id": r.id,
        "state": r.state,
        "schedule": schedule(r, now),
        "timeline": timeline(targets, r.created_at, end),
        "failure_groups": groups,
        "truncated": len(targets) >= MAX_TARGETS_READ,
    }


@routes.get("/v1/dashboard/rollouts/{rollout_id}/detail")
@requires("viewer")
async def rollout_detail(request: web.Request) -> web.Response:
    """The schedule, timeline and grouped failures of one rollout."""
    rollout_id = int_param(request.match_info["rollout_id"], "rollout id")
    now = ctx(request).clock.now()
    return ok(await ctx(request).db.run(lambda s: detail(s, rollout_id, now)))
