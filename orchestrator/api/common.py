"""Handler helpers: role checks, JSON bodies, audit entries."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchestrator.api.context import CTX, ApiContext, ApiError
from orchestrator.auth import Principal, role_allows

__all__ = ["Handler", "audit", "ctx", "json_body", "ok", "principal", "requires"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
PRINCIPAL = web.RequestKey("fleetpush.principal", Principal)


def ctx(request: web.Request) -> ApiContext:
    return request.app[CTX]


def principal(request: web.Request) -> Principal:
    found: Principal | None = request.get(PRINCIPAL)
    if found is None:
        raise ApiError(401, "missing or invalid bearer token")
    return found


def requires(role: str) -> Callable[[Handler], Handler]:
    """Refuse (403) callers whose token's role is below ``role``."""

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def checked(request: web.Request) -> web.StreamResponse:
            who = principal(request)
            if not role_allows(who.role, role):
                raise ApiError(403, f"this needs the {role} role; token {who.name!r} is {who.role}")
            return await handler(request)

        return checked

    return wrap


async def json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # json's C decoder recurses on nesting: "[[[[..." was a 500
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    return body


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, default=str))


async def audit(request: web.Request, action: str, subject: str, **detail: Any) -> None:
    """Record an operator action (who, what, on what, with which arguments)."""
    c = ctx(request)
    who = principal(request)
    now = c.clock.now()
    await c.db.run(
        lambda s: s.add_audit(at=now, actor=who.name, action=action, subject=subject,
                              detail=detail)
    )  # fmt: skip


def int_param(value: str, what: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise ApiError(400, f"{what}: expected a positive integer")
    return int(value)
