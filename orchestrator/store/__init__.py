"""Persistent state: the ``Store`` interface, its SQLite backend and the writer thread."""

from orchestrator.store.base import ConflictError, Database, NotFoundError, Store, StoreError
from orchestrator.store.records import (
    AuditEntry,
    DeviceFilter,
    DeviceRecord,
    IngestResult,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    TargetRecord,
    TokenRecord,
)
from orchestrator.store.sqlite import SQLiteStore

__all__ = [
    "AuditEntry",
    "ConflictError",
    "Database",
    "DeviceFilter",
    "DeviceRecord",
    "IngestResult",
    "NotFoundError",
    "NoticeRecord",
    "ReleaseRecord",
    "RolloutRecord",
    "SQLiteStore",
    "Store",
    "StoreError",
    "TargetRecord",
    "TokenRecord",
]
