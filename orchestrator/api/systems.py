"""``POST /v1/payloads`` (a component's payload, stored by SHA-256) and ``POST /v1/systems``
(a system release of stored payloads, issue 18; orchestrator/systems.py)."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api.bodies import decode_body
from orchestrator.api.common import audit, ctx, json_body, ok, requires
from orchestrator.api.context import ApiError
from orchestrator.payloads import PayloadError, TooLargeError, check_tar
from orchestrator.store import ReleaseRecord
from orchestrator.support import release_warnings
from orchestrator.systems import (
    NewSystem,
    SystemReleaseError,
    pinned_components,
    store_manifest,
)

__all__ = ["routes"]

routes = web.RouteTableDef()


@routes.post("/v1/payloads")
@requires("operator")
async def upload_payload(request: web.Request) -> web.Response:
    """Query: ``handler`` (``directory``: the body must be a tar). Body: the bytes."""
    unknown = set(request.query) - {"handler"}
    if unknown:
        raise ApiError(400, f"unknown parameter {sorted(unknown)[0]!r}")
    handler = request.query.get("handler", "command")
    if handler not in ("directory", "command"):
        raise ApiError(400, "handler: one of directory, command")
    c = ctx(request)
    limit = c.config.http.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"payload is larger than {limit} bytes (http.max_upload_bytes)")
    try:
        sha, size = await c.payloads.store_stream(
            request.content.iter_chunked(1 << 20), limit,
            check=check_tar if handler == "directory" else None,
        )  # fmt: skip
    except TooLargeError as e:
        raise ApiError(413, str(e)) from None
    except PayloadError as e:
        raise ApiError(400, f"payload refused: handler 'directory' unpacks a tar archive "
                            f"and this is {e}") from None  # fmt: skip
    if size == 0:
        raise ApiError(400, "request body is empty: the payload is missing")
    await audit(request, "payload.upload", f"payload/{sha}", size=size, handler=handler)
    return ok({"sha256": sha, "size": size}, status=201)


@routes.post("/v1/systems")
@requires("operator")
async def create_system(request: web.Request) -> web.Response:
    """Body: ``NewSystem`` (name, version, models, meta, components in order)."""
    body = decode_body(NewSystem, await json_body(request))
    c = ctx(request)
    try:
        components = await pinned_components(c.payloads, body)
    except SystemReleaseError as e:
        raise ApiError(400, str(e)) from None
    sha, size = await store_manifest(c.payloads, components)
    now = c.clock.now()
    rec = ReleaseRecord(
        id=0, name=body.name, version=body.version, sha256=sha, size=size,
        models=body.models, handler="system", handler_args={}, metadata=dict(body.meta),
        created_at=now, components=components,
    )  # fmt: skip
    stored = await c.db.run(lambda s: s.add_release(rec))
    warnings = release_warnings(c.config.support, body.models, now)
    await audit(request, "release.upload", f"release/{stored.id}", name=body.name,
                version=body.version, sha256=sha, size=size,
                components=[x["name"] for x in components], warnings=warnings)  # fmt: skip
    return ok({**stored.to_json(), "warnings": warnings}, status=201)
