"""Handler helpers: role checks, JSON bodies, audit entries."""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from orchestrator.api.context import CTX, ApiContext, ApiError
from orchestrator.security.auth import Principal, role_allows

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


# SQLite's INTEGER: a larger number would reach the store and fail there in Python's words.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class _Huge:
    """An integer literal with more digits than any field takes: not converted at all (a
    100,000-digit literal costs quadratic time in ``int``)."""

    def __init__(self, text: str) -> None:
        self.text = text


def _parse_int(text: str) -> int | _Huge:
    return int(text) if len(text) <= 20 else _Huge(text)


def _refuse_constant(name: str) -> None:
    raise ApiError(400, f"request body: {name} is not a JSON number")


def _check_numbers(body: Any) -> None:
    """Refuse integers outside 64 bits and non-finite numbers, naming the field."""
    stack: list[tuple[str, Any]] = [("", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            stack += [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(f"{path}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, _Huge) or (
            isinstance(value, int) and not isinstance(value, bool)
            and not INT_MIN <= value <= INT_MAX
        ):  # fmt: skip
            text = value.text if isinstance(value, _Huge) else str(value)
            shown = text if len(text) <= 40 else f"a {len(text.lstrip('-'))}-digit number"
            small = text.startswith("-")
            bound = f"too small (min {INT_MIN})" if small else f"too large (max {INT_MAX})"
            raise ApiError(400, f"{path or 'body'}: {shown} is {bound}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(400, f"{path or 'body'}: the number is too large")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object, at most ``[http] max_json_bytes`` long (else 413).

    A body announced larger is refused before any of it is read; a chunked one stops
    being read at the limit.
    """
    limit = ctx(request).config.http.max_json_bytes
    too_large = f"request body is larger than {limit} bytes (http.max_json_bytes)"
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, too_large)
    try:
        text = await request.text()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, too_large) from None
    try:
        body = json.loads(text, parse_int=_parse_int, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "request body is not valid JSON") from None
    except RecursionError:  # json's C decoder recurses on nesting: "[[[[..." was a 500
        raise ApiError(400, "request body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    _check_numbers(body)
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
