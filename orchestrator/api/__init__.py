"""The HTTP API (aiohttp, JSON): everything the CLI does, described in docs/openapi.yaml."""

from orchestrator.api.app import build_app
from orchestrator.api.context import ApiContext, ApiError

__all__ = ["ApiContext", "ApiError", "build_app"]
