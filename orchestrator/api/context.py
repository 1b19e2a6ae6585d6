"""What the HTTP handlers share: the running service's parts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fleetpush_common.clock import Clock
from orchestrator.config import OrchestratorConfig
from orchestrator.deltas import DeltaMaker
from orchestrator.engine import RolloutEngine
from orchestrator.payloads import PayloadStore, UrlSigner
from orchestrator.registry_sync import RegistrySync
from orchestrator.security.auth import TokenAuth
from orchestrator.security.keystore import KeyStore
from orchestrator.store import Database

__all__ = ["CTX", "ApiContext", "ApiError"]


class ApiError(Exception):
    """A client error: answered as ``{"error": reason}`` with ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class ApiContext:
    config: OrchestratorConfig
    db: Database
    clock: Clock
    payloads: PayloadStore
    urls: UrlSigner
    keys: KeyStore
    auth: TokenAuth
    engine: RolloutEngine
    extra_metrics: dict[str, Any] = field(default_factory=dict)
    reload_keys: Any = None  # async callable: reload keys and publish keyrings
    registry: RegistrySync | None = None  # provisioned groups and models
    deltas: DeltaMaker | None = None  # makes and lists delta payloads

    async def refresh_registry(self) -> None:
        """Bring provisioned groups and models up to date before reading devices."""
        if self.registry is not None:
            await self.registry.refresh()


CTX = web.AppKey("fleetpush", ApiContext)
