"""The web dashboard: its static pages, a few read endpoints and a server-sent event stream.

Pages (``/ui/``) hold no data and need no token. Everything they show comes from the JSON
API with the same bearer token as the CLI: the viewer role may look, the operator role may
act (the rollout endpoints check roles; the page only hides what a viewer may not do).

``GET /v1/events`` streams changes as server-sent events. Browsers' ``EventSource`` cannot
send an ``Authorization`` header, so the page reads the stream with ``fetch()`` and a
``ReadableStream`` reader instead: the token never appears in a URL (docs/dashboard.md).

One ``EventHub`` per application polls the database while at least one stream is open, and
shares each snapshot among all of them. A scan that took ``t`` seconds is not repeated for
``10 t`` seconds, so a large fleet slows the stream down instead of the database thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from fleetpush_common.tasks import cancel_and_wait
from orchestrator.api.common import ctx, int_param, ok, principal, requires
from orchestrator.api.context import CTX, ApiContext
from orchestrator.api.rollout_detail import routes as detail_routes
from orchestrator.api.rollout_detail import schedule
from orchestrator.rollouts import rollout_status
from orchestrator.rules import FAILURE_STATES
from orchestrator.security.auth import role_allows
from orchestrator.store import DeviceFilter, DeviceRecord, RolloutRecord, Store

__all__ = ["EventHub", "install", "routes"]

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

STATIC = {  # file -> content type; nothing else under /ui/ is served
    "index.html": "text/html",
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "chart.js": "text/javascript",
    "dom.js": "text/javascript",
    "forms.js": "text/javascript",
    "state.js": "text/javascript",
    "views/overview.js": "text/javascript",
    "views/devices.js": "text/javascript",
    "views/releases.js": "text/javascript",
    "views/rollouts.js": "text/javascript",
    "views/tokens.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
MAX_DEVICES_SCANNED = 100_000
MAX_FAILURES_SHOWN = 50
MAX_DEVICES_PER_EVENT = 100


# --- pages ---------------------------------------------------------------------------------


@routes.get("/")
async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


@routes.get("/ui")
async def ui_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/ui/")


@routes.get("/ui/")
@routes.get("/ui/{name:.+}")
async def static_file(request: web.Request) -> web.Response:
    name = request.match_info.get("name", "index.html")
    if name not in STATIC:  # the only check needed: no path is built from the request
        raise web.HTTPNotFound(reason="no such dashboard file")
    body = resources.files("orchestrator.web").joinpath("static", *name.split("/")).read_bytes()
    return web.Response(body=body, content_type=STATIC[name], headers=PAGE_HEADERS)


# --- read endpoints ------------------------------------------------------------------------


def rollout_view(s: Store, r: RolloutRecord, now: float) -> dict[str, Any]:
    """The API's status view plus the devices that failed, with their reasons, and when
    the next phase may open."""
    view = rollout_status(s, r)
    view["schedule"] = schedule(r, now)
    failures: list[dict[str, Any]] = []
    if any(view["states"].get(state) for state in FAILURE_STATES):
        for state in sorted(FAILURE_STATES):
            failures += [t.to_json() for t in s.list_targets(r.id, state, MAX_FAILURES_SHOWN)]
        failures.sort(key=lambda t: (t["phase"], t["device_id"]))
    view["failures"] = failures[:MAX_FAILURES_SHOWN]
    return view


def fleet_summary(s: Store, devices: Sequence[DeviceRecord] | None = None) -> dict[str, Any]:
    """Devices online and offline, and which versions and models run where (``devices``:
    the registry as already read by the caller)."""
    if devices is None:
        devices = s.list_devices(DeviceFilter(limit=MAX_DEVICES_SCANNED))
    online = sum(d.online for d in devices)
    versions = Counter(d.current_version or "unknown" for d in devices)
    online_versions = Counter(d.current_version or "unknown" for d in devices if d.online)
    return {
        "devices": len(devices),
        "online": online,
        "offline": len(devices) - online,
        "truncated": len(devices) >= MAX_DEVICES_SCANNED,
        "versions": [
            {"version": v, "devices": n, "online": online_versions.get(v, 0)}
            for v, n in versions.most_common()
        ],
        "models": dict(Counter(d.model or "unknown" for d in devices).most_common()),
        "groups": sorted({g for d in devices for g in d.groups}),
        # Versions are what devices report; groups and models are the registry's. Devices
        # whose inventory claims otherwise are counted here, never targeted by the claim.
        "claims_mismatch": sum(d.claims_mismatch for d in devices),
        "rollouts": s.rollout_state_counts(),
    }


@routes.get("/v1/dashboard/me")
@requires("viewer")
async def me(request: web.Request) -> web.Response:
    who = principal(request)
    return ok({"name": who.name, "role": who.role, "can_act": role_allows(who.role, "operator")})


@routes.get("/v1/dashboard/summary")
@requires("viewer")
async def summary(request: web.Request) -> web.Response:
    await ctx(request).refresh_registry()
    return ok(await ctx(request).db.run(fleet_summary))


@routes.get("/v1/dashboard/rollouts")
@requires("viewer")
async def rollouts(request: web.Request) -> web.Response:
    """The newest rollouts (``limit``, default 50) with progress and failures."""
    limit = min(int_param(request.query.get("limit", "50"), "limit"), 1000)
    now = ctx(request).clock.now()

    def views(s: Store) -> list[dict[str, Any]]:
        newest = sorted(s.list_rollouts(), key=lambda r: r.id, reverse=True)[:limit]
        return [rollout_view(s, r, now) for r in newest]

    return ok({"rollouts": await ctx(request).db.run(views)})


@routes.get("/v1/dashboard/rollouts/{rollout_id}")
@requires("viewer")
async def rollout(request: web.Request) -> web.Response:
    rollout_id = int_param(request.match_info["rollout_id"], "rollout id")
    now = ctx(request).clock.now()
    return ok(await ctx(request).db.run(lambda s: rollout_view(s, s.get_rollout(rollout_id), now)))


# --- events --------------------------------------------------------------------------------


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n".encode()


@dataclass
class _Snapshot:
    rollouts: dict[int, str] = field(default_factory=dict)  # id -> view JSON
    finished: dict[int, float] = field(default_factory=dict)  # id -> updated_at, inactive
    devices: dict[str, tuple[bool, str, float, bool]] = field(default_factory=dict)
    summary: str = ""


class EventHub:
    """Polls for changes while streams are open; fans each change out to all of them.

    Args:
        context: the API's context (database, clock).
        interval_s: seconds between two rollout scans.
        device_interval_s: least seconds between two device scans.
    """

    def __init__(
        self, context: ApiContext, interval_s: float = 0.5, device_interval_s: float = 1.0
    ) -> None:
        self.context = context
        self.interval_s = interval_s
        self.device_interval_s = device_interval_s
        self.closed = False
        self._queues: set[asyncio.Queue[bytes | None]] = set()
        self._greet: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._snap: _Snapshot | None = None
        self._next_device_scan = 0.0

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        """A queue of encoded events; it starts with ``hello`` once a baseline exists."""
        q: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1024)
        self._queues.add(q)
        self._greet.add(q)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="fleetpush-dashboard-events")
        return q

    def unsubscribe(self, q: asyncio.Queue[bytes | None]) -> None:
        self._queues.discard(q)
        self._greet.discard(q)

    async def close(self) -> None:
        """End every stream (at shutdown)."""
        self.closed = True
        for q in list(self._queues):
            self._put(q, None)
        await cancel_and_wait(self._task)

    def _put(self, q: asyncio.Queue[bytes | None], item: bytes | None) -> None:
        try:
            q.put_nowait(item)
        except asyncio.QueueFull:  # a stalled reader: end its stream; the page reconnects
            self.unsubscribe(q)
            with contextlib.suppress(asyncio.QueueEmpty):
                q.get_nowait()
            q.put_nowait(None)

    def _publish(self, event: str, data: Any) -> None:
        frame = _sse(event, data)
        for q in list(self._queues - self._greet):
            self._put(q, frame)

    async def _run(self) -> None:
        while self._queues and not self.closed:
            began = time.monotonic()
            try:
                await self.scan()
            except Exception:
                logger.exception("dashboard event scan failed")
            for q in list(self._greet):
                self._greet.discard(q)
                self._put(q, _sse("hello", {"at": self.context.clock.now()}))
            took = time.monotonic() - began
            await asyncio.sleep(max(self.interval_s, 10 * took))
        self._snap = None  # nobody listens: start from a fresh baseline next time

    async def scan(self) -> None:
        """Compare the stored state with the last snapshot; publish what changed."""
        first = self._snap is None
        snap = self._snap or _Snapshot()
        known_finished = dict(snap.finished)
        now = self.context.clock.now()

        def rollout_changes(s: Store) -> list[dict[str, Any]]:
            changed = []
            for r in s.list_rollouts():
                if not r.active and known_finished.get(r.id) == r.updated_at:
                    continue
                view = rollout_view(s, r, now)
                text = json.dumps(view, sort_keys=True, default=str)
                if snap.rollouts.get(r.id) != text:
                    snap.rollouts[r.id] = text
                    changed.append(view)
                if not r.active:
                    snap.finished[r.id] = r.updated_at
            return changed

        changed = await self.context.db.run(rollout_changes)
        self._snap = snap
        if not first:
            for view in changed:
                self._publish("rollout", view)
        now = time.monotonic()
        if first or now >= self._next_device_scan:
            await self._scan_devices(snap, first)
            took = time.monotonic() - now
            self._next_device_scan = time.monotonic() + max(self.device_interval_s, 10 * took)

    async def _scan_devices(self, snap: _Snapshot, first: bool) -> None:
        def scan(s: Store) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            changed = []
            devices = s.list_devices(DeviceFilter(limit=MAX_DEVICES_SCANNED))
            for d in devices:
                key = (d.online, d.current_version, d.last_seen, d.claims_mismatch)
                if snap.devices.get(d.device_id) != key:
                    snap.devices[d.device_id] = key
                    changed.append(d.to_json())
            return fleet_summary(s, devices), changed

        summary_, changed = await self.context.db.run(scan)
        text = json.dumps(summary_, sort_keys=True)
        if first:
            snap.summary = text
            return
        if changed:
            truncated = len(changed) > MAX_DEVICES_PER_EVENT
            payload = {"changed": [] if truncated else changed, "truncated": truncated}
            self._publish("devices", payload)
        if text != snap.summary:
            snap.summary = text
            self._publish("summary", summary_)


HUB = web.AppKey("fleetpush.dashboard.hub", EventHub)
HEARTBEAT_S = 15.0  # seconds of silence before a comment line keeps the stream open
RECHECK_S = 15.0  # seconds between two checks that the stream's token is still valid


@routes.get("/v1/events")
@requires("viewer")
async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: ``hello``, then ``rollout``, ``summary`` and ``devices``."""
    hub = request.app[HUB]
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache, no-transform",
        "X-Accel-Buffering": "no",
    })  # fmt: skip
    await resp.prepare(request)
    token = request.headers["Authorization"].partition(" ")[2].strip()  # checked by auth
    checked = time.monotonic()
    q = hub.subscribe()
    try:
        await resp.write(b"retry: 2000\n\n")
        while not hub.closed:
            try:
                frame = await asyncio.wait_for(q.get(), HEARTBEAT_S)
            except TimeoutError:
                frame = b": ping\n\n"
            if frame is None:
                break
            if time.monotonic() - checked > RECHECK_S:  # a revoked token stops the stream
                if await ctx(request).auth.check(token) is None:
                    break
                checked = time.monotonic()
            await resp.write(frame)
    except ConnectionResetError:
        return resp
    finally:
        hub.unsubscribe(q)
    with contextlib.suppress(ConnectionResetError, RuntimeError):
        await resp.write_eof()
    return resp


def install(app: web.Application) -> None:
    """Add the dashboard's routes and its event hub to the API application."""
    hub = EventHub(app[CTX])
    app[HUB] = hub
    app.add_routes(routes)
    app.add_routes(detail_routes)

    async def close(_: web.Application) -> None:
        await hub.close()

    app.on_shutdown.append(close)
