"""Authentication and error mapping: every failure is a JSON ``{"error": ...}``."""

from __future__ import annotations

import logging

from aiohttp import web

from orchestrator.api.common import PRINCIPAL, Handler, ctx
from orchestrator.api.context import ApiError
from orchestrator.security.keystore import KeyStoreError
from orchestrator.store import ConflictError, NotFoundError

__all__ = ["auth_middleware", "error_middleware"]

logger = logging.getLogger(__name__)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        status, reason = e.status, e.reason
    except NotFoundError as e:
        status, reason = 404, str(e)
    except ConflictError as e:
        status, reason = 409, str(e)
    except KeyStoreError as e:
        status, reason = 409, str(e)
    except (ValueError, TypeError) as e:
        status, reason = 400, str(e) or "invalid request"
    except web.HTTPException as e:
        if e.status < 400:
            raise
        status, reason = e.status, e.reason
    except Exception:
        logger.exception("%s %s failed", request.method, request.path)
        status, reason = 500, "internal error; see the orchestrator log"
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": reason, "status": status}, status=status, headers=headers)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)")
        found = await ctx(request).auth.check(token.strip())
        if found is None:
            raise ApiError(401, "invalid or revoked token")
        request[PRINCIPAL] = found
    return await handler(request)
