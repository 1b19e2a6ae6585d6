"""``/v1/releases``: upload (raw body, metadata in the query), list, show, delete; a
release's SBOM (``PUT``/``GET /v1/releases/{ref}/sbom``); the deltas to a release (made on
upload and on demand)."""

from __future__ import annotations

import asyncio
import functools
import re
from typing import Any

from aiohttp import web

from fleetpush_protocol.messages import MAX_DELTAS, NAME_PATTERN
from orchestrator.advisories import AdvisoryError, parse_advisory
from orchestrator.api.common import audit, ctx, json_body, ok, requires
from orchestrator.api.context import ApiError
from orchestrator.deltas import field_bases
from orchestrator.hold_limits import HoldLimitsError, parse_hold_limits
from orchestrator.payloads import PayloadError, TooLargeError, check_tar
from orchestrator.sbom import SbomError, parse_sbom
from orchestrator.store import ReleaseRecord, Store
from orchestrator.support import release_warnings, support_view

__all__ = ["HANDLERS", "routes"]

routes = web.RouteTableDef()

HANDLERS = ("directory", "command")


def _name(value: str, what: str) -> str:
    if not re.match(NAME_PATTERN, value):
        raise ApiError(400, f"{what}: {value!r} is not a valid name ([A-Za-z0-9_.:-], 1-128)")
    return value


def _pairs(values: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key or len(key) > 64 or len(value) > 4096:
            raise ApiError(400, f"{what}: expected key=value, got {item!r}")
        out[key] = value
    return out


@routes.post("/v1/releases")
@requires("operator")
async def upload(request: web.Request) -> web.Response:
    """Query: ``name``, ``version``, ``model`` (repeatable), ``handler``, ``arg`` (k=v,
    repeatable), ``meta`` (k=v, repeatable), ``security=true`` with ``advisory`` (its
    JSON), ``urgent=true`` or ``max_hold``/``max_hold_total`` (durations: caps on device
    holds, issue 18). Body: the payload bytes."""
    q = request.query
    unknown = set(q) - {"name", "version", "model", "handler", "arg", "meta", "security",
                        "advisory", "urgent", "max_hold", "max_hold_total"}  # fmt: skip
    if unknown:
        raise ApiError(400, f"unknown parameter {sorted(unknown)[0]!r}")
    name = _name(q.get("name", ""), "name")
    version = q.get("version", "")
    if not 1 <= len(version) <= 128:
        raise ApiError(400, "version: 1..128 characters")
    if not version.isprintable():  # it reaches devices' environments and terminals
        raise ApiError(400, "version: printable characters only (no control characters)")
    models = tuple(_name(m, "model") for m in q.getall("model", []))
    handler = q.get("handler", "directory")
    if handler not in HANDLERS:
        raise ApiError(400, f"handler: one of {', '.join(HANDLERS)}")
    args = _pairs(q.getall("arg", []), "arg")
    meta = _pairs(q.getall("meta", []), "meta")
    advisory = _advisory(q.get("security", ""), q.get("advisory"))
    holds = _holds(q.get("urgent", ""), q.get("max_hold"), q.get("max_hold_total"))
    c = ctx(request)
    limit = c.config.http.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"payload is larger than {limit} bytes (http.max_upload_bytes)")
    try:
        # Streamed to disk in 1 MiB chunks: never the whole payload in memory, and not
        # bound by client_max_size (the JSON limit), which only applies to read().
        sha, size = await c.payloads.store_stream(
            request.content.iter_chunked(1 << 20), limit,
            check=check_tar if handler == "directory" else None,
        )  # fmt: skip
    except TooLargeError as e:
        raise ApiError(413, str(e)) from None
    except PayloadError as e:
        raise ApiError(
            400,
            f"payload refused: handler 'directory' unpacks a tar archive (plain, gzip, "
            f"bz2 or xz) and this is {e}; upload a tar, or use --handler command",
        ) from None
    if size == 0:
        raise ApiError(400, "request body is empty: the payload is missing")
    rec = ReleaseRecord(
        id=0, name=name, version=version, sha256=sha, size=size, models=models,
        handler=handler, handler_args=args, metadata=meta, created_at=c.clock.now(),
        update_class="security" if advisory else "feature", advisory=advisory, holds=holds,
    )  # fmt: skip
    stored = await c.db.run(lambda s: s.add_release(rec))
    warnings = release_warnings(c.config.support, models, c.clock.now())
    await audit(request, "release.upload", f"release/{stored.id}", name=name, version=version,
                sha256=sha, size=size, update_class=rec.update_class,
                cves=advisory["cves"] if advisory else [], holds=holds,
                warnings=warnings)  # fmt: skip
    body = {**stored.to_json(), "warnings": warnings}
    if c.deltas is not None and c.config.deltas.on_upload:
        body["deltas"] = await make_deltas(request, stored, None)
    return ok(body, status=201)


@routes.get("/v1/support")
@requires("viewer")
async def support(request: web.Request) -> web.Response:
    """Until when each hardware model gets security updates ([support])."""
    c = ctx(request)
    return ok({"models": support_view(c.config.support, c.clock.now())})


def _holds(urgent: str, max_hold: str | None, total: str | None) -> dict[str, int] | None:
    """A release's caps on device holds (issue 18), checked; None: the devices' own."""
    if urgent not in ("", "true", "false"):
        raise ApiError(400, "urgent: true or false")
    try:
        return parse_hold_limits(urgent=urgent == "true", max_hold=max_hold,
                                 max_hold_total=total)  # fmt: skip
    except HoldLimitsError as e:
        raise ApiError(400, str(e)) from None


def _advisory(security: str, text: str | None) -> dict[str, object] | None:
    """The checked advisory of a security upload; None for a feature release."""
    if security not in ("", "true", "false"):
        raise ApiError(400, "security: true or false")
    if security != "true":
        if text is not None:
            raise ApiError(400, "advisory: only a security release (security=true) has one")
        return None
    if text is None:
        raise ApiError(400, "advisory: a security release needs one (CLI --advisory FILE): "
                            "cves, severity, summary")  # fmt: skip
    try:
        return parse_advisory(text)
    except AdvisoryError as e:
        raise ApiError(400, str(e)) from None


async def make_deltas(
    request: web.Request, target: ReleaseRecord, versions: list[str] | None
) -> dict[str, Any]:
    """Make deltas to ``target`` from ``versions`` (None: the field's most common ones).

    Runs in a thread: level 19 on a large payload takes seconds to minutes, and the answer
    waits for it so that the caller knows what the next notices will list.
    """
    c = ctx(request)
    maker = c.deltas
    if maker is None:
        raise ApiError(409, "deltas are not available on this server")
    if target.components:  # its notices list no deltas: components are fetched in full
        raise ApiError(409, f"release {target.id} is a system: its components have no deltas")
    limit = c.config.deltas.max_bases
    if versions is None:
        bases = await c.db.run(lambda s: field_bases(s, target, limit))
    else:
        bases = [await c.db.run(functools.partial(_find, target.name, v)) for v in versions]
    made, skipped = await asyncio.to_thread(maker.make, target, bases)
    if made:
        await audit(request, "release.deltas", f"release/{target.id}",
                    bases=[d.base_version for d in made])  # fmt: skip
    return {
        "made": [d.to_json() for d in made],
        "skipped": [k.to_json() for k in skipped],
        "stored": [d.to_json() for d in maker.index.records(target.sha256)],
    }


def _find(name: str, version: str, store: Store) -> ReleaseRecord:
    return store.find_release(name, version)


@routes.post("/v1/releases/{ref}/deltas")
@requires("operator")
async def post_deltas(request: web.Request) -> web.Response:
    """Body (optional): ``{"from": [VERSION, ...]}``; without it, the field's versions."""
    rec = await find_release(request, request.match_info["ref"])
    body = await json_body(request) if request.can_read_body else {}
    versions = body.get("from")
    if versions is not None:
        if not isinstance(versions, list) or not 1 <= len(versions) <= MAX_DELTAS:
            raise ApiError(400, f"from: a list of 1..{MAX_DELTAS} versions")
        if not all(isinstance(v, str) and 1 <= len(v) <= 128 for v in versions):
            raise ApiError(400, "from: each version is a string of 1..128 characters")
    if set(body) - {"from"}:
        raise ApiError(400, f"unknown field {sorted(set(body) - {'from'})[0]!r}")
    return ok(await make_deltas(request, rec, versions))


@routes.get("/v1/releases/{ref}/deltas")
@requires("viewer")
async def list_deltas(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = await find_release(request, request.match_info["ref"])
    stored = c.deltas.index.records(rec.sha256) if c.deltas is not None else []
    return ok({"stored": [d.to_json() for d in stored]})


@routes.get("/v1/releases")
@requires("viewer")
async def list_releases(request: web.Request) -> web.Response:
    releases = await ctx(request).db.run(lambda s: s.list_releases())
    return ok({"releases": [r.to_json() for r in releases]})


async def find_release(request: web.Request, ref: str) -> ReleaseRecord:
    """A release by id or ``name@version``."""
    c = ctx(request)
    if "@" in ref:
        name, _, version = ref.partition("@")
        return await c.db.run(lambda s: s.find_release(name, version))
    if not ref.isdigit() or len(ref) > 18:
        raise ApiError(
            400, f"release {ref!r}: use NAME@VERSION (like app@2.0) or a release id; "
            "`fleetpush release list` shows both"
        )  # fmt: skip
    release_id = int(ref)
    return await c.db.run(lambda s: s.get_release(release_id))


@routes.get("/v1/releases/{ref}")
@requires("viewer")
async def show_release(request: web.Request) -> web.Response:
    rec = await find_release(request, request.match_info["ref"])
    found = await ctx(request).db.run(lambda s: s.get_sbom(rec.id))
    return ok({**rec.to_json(), "sbom": found[0] if found else None})


@routes.put("/v1/releases/{ref}/sbom")
@requires("operator")
async def put_sbom(request: web.Request) -> web.Response:
    """Attach (or replace) the release's SBOM: SPDX or CycloneDX JSON, checked to be
    well-formed, stored byte for byte; at most ``http.max_sbom_bytes``."""
    c = ctx(request)
    rec = await find_release(request, request.match_info["ref"])
    limit = c.config.http.max_sbom_bytes
    too_large = f"sbom is larger than {limit} bytes (http.max_sbom_bytes)"
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, too_large)
    data = bytearray()
    async for chunk in request.content.iter_chunked(1 << 20):  # not bound by the JSON limit
        data += chunk
        if len(data) > limit:
            raise ApiError(413, too_large)
    try:
        sbom = parse_sbom(bytes(data))
    except SbomError as e:
        raise ApiError(400, str(e)) from None
    components = [x.to_json() for x in sbom.components]
    now = c.clock.now()
    await c.db.run(
        lambda s: s.put_sbom(rec.id, format=sbom.format, spec_version=sbom.spec_version,
                             components=components, body=data.decode(), now=now)
    )  # fmt: skip
    await audit(request, "release.sbom", f"release/{rec.id}", **sbom.summary())
    return ok({"release": rec.id, **sbom.summary()})


@routes.get("/v1/releases/{ref}/sbom")
@requires("viewer")
async def get_sbom(request: web.Request) -> web.Response:
    """The SBOM as uploaded."""
    rec = await find_release(request, request.match_info["ref"])
    found = await ctx(request).db.run(lambda s: s.get_sbom(rec.id))
    if found is None:
        raise ApiError(404, f"release {rec.id} has no SBOM (fleetpush release sbom REF FILE)")
    return web.Response(text=found[1], content_type="application/json")


@routes.delete("/v1/releases/{ref}")
@requires("operator")
async def delete_release(request: web.Request) -> web.Response:
    c = ctx(request)
    rec = await find_release(request, request.match_info["ref"])
    now = c.clock.now()
    await c.db.run(lambda s: s.delete_release(rec.id, now))
    for sha in sorted({str(x["sha256"]) for x in rec.components}):  # a system's parts
        if not await c.db.run(functools.partial(_in_use, sha)):
            c.payloads.delete(sha)
    if not await c.db.run(lambda s: s.sha256_in_use(rec.sha256)):
        c.payloads.delete(rec.sha256)
        if c.deltas is not None:  # the deltas to it lead nowhere now
            for d in c.deltas.index.remove(rec.sha256):
                c.payloads.delete(d.sha256)
    await audit(request, "release.delete", f"release/{rec.id}", name=rec.name,
                version=rec.version)  # fmt: skip
    return ok({"deleted": rec.id})


def _in_use(sha256: str, store: Store) -> bool:
    return store.sha256_in_use(sha256)
