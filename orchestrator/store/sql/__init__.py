"""The store's SQL, written once for SQLite and PostgreSQL; backends add a connection."""

from __future__ import annotations

from orchestrator.store.sql.admin import AdminMethods
from orchestrator.store.sql.base import Cursor, Dialect, SqlBase
from orchestrator.store.sql.devices import DeviceMethods
from orchestrator.store.sql.ingest import IngestMethods
from orchestrator.store.sql.leases import LeaseMethods
from orchestrator.store.sql.targeting import TargetingMethods

__all__ = ["Cursor", "Dialect", "SqlBase", "SqlStore"]


class SqlStore(DeviceMethods, IngestMethods, TargetingMethods, LeaseMethods, AdminMethods):
    """Every ``Store`` method; a backend subclass supplies ``_tx``, ``_execute``,
    ``_executemany``, ``close`` and its ``Dialect``."""

    def __init__(self) -> None:
        self._notice_owner: dict[str, tuple[str, int]] = {}
