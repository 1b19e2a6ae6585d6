"""Persistent state: the ``Store`` interface, its SQLite and PostgreSQL backends, and the
``Database`` that runs a store on worker threads for async code."""

from orchestrator.store.base import (
    ConflictError,
    Database,
    NotFoundError,
    SchemaError,
    Store,
    StoreCorruptError,
    StoreError,
    StoreUnavailableError,
)
from orchestrator.store.factory import open_database, open_store
from orchestrator.store.records import (
    AuditEntry,
    DeviceFilter,
    DeviceRecord,
    IngestResult,
    NoticeRecord,
    ReleaseRecord,
    RolloutRecord,
    TargetPreview,
    TargetRecord,
    TargetSelector,
    TokenRecord,
)
from orchestrator.store.sql.leases import LeaseLostError, ReplicaRecord
from orchestrator.store.sqlite import SQLiteStore

__all__ = [
    "AuditEntry",
    "ConflictError",
    "Database",
    "DeviceFilter",
    "DeviceRecord",
    "IngestResult",
    "LeaseLostError",
    "NotFoundError",
    "NoticeRecord",
    "ReleaseRecord",
    "ReplicaRecord",
    "RolloutRecord",
    "SQLiteStore",
    "SchemaError",
    "Store",
    "StoreCorruptError",
    "StoreError",
    "StoreUnavailableError",
    "TargetPreview",
    "TargetRecord",
    "TargetSelector",
    "TokenRecord",
    "open_database",
    "open_store",
]
