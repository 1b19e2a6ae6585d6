"""The aiohttp application: routes, authentication and error middleware."""

from __future__ import annotations

from aiohttp import web

from orchestrator.api import admin, dashboard, devices, evidence, releases, rollouts, systems
from orchestrator.api.context import CTX, ApiContext
from orchestrator.api.middleware import auth_middleware, error_middleware

__all__ = ["build_app"]


def build_app(context: ApiContext) -> web.Application:
    """The HTTP API (docs/openapi.yaml) over ``context``."""
    app = web.Application(
        middlewares=[error_middleware, auth_middleware],
        # Bodies read whole (JSON) stop here; the upload streams to disk under its own
        # limit (max_upload_bytes) and is not bound by this one.
        client_max_size=context.config.http.max_json_bytes,
    )
    app[CTX] = context
    for module in (admin, devices, evidence, releases, rollouts, systems):
        app.add_routes(module.routes)
    dashboard.install(app)  # the web dashboard (/ui/, /v1/events, /v1/dashboard/*)
    return app
