"""The store's SQL, written once for SQLite and PostgreSQL; backends add a connection."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from orchestrator.store.sql.admin import AdminMethods
from orchestrator.store.sql.base import Cursor, Dialect, SqlBase
from orchestrator.store.sql.devices import DeviceMethods
from orchestrator.store.sql.ingest import IngestMethods
from orchestrator.store.sql.leases import LeaseMethods
from orchestrator.store.sql.targeting import TargetingMethods

if TYPE_CHECKING:
    from orchestrator.store.base import Store

__all__ = ["Cursor", "Dialect", "SqlBase", "SqlStore"]

_T = TypeVar("_T")


class SqlStore(DeviceMethods, IngestMethods, TargetingMethods, LeaseMethods, AdminMethods):
    """Every ``Store`` method; a backend subclass supplies ``_tx``, ``_execute``,
    ``_executemany``, ``close`` and its ``Dialect``."""

    def __init__(self) -> None:
        self._notice_owner: dict[str, tuple[str, int]] = {}
        self._rollout_parts: dict[int, tuple[str, ...]] = {}

    def atomic(self, fn: Callable[[Store], _T]) -> _T:
        """``fn(self)`` in one transaction: the store calls it makes commit together, or
        not at all when it raises (a crash, a lost compare-and-set, another replica)."""
        with self._tx():
            return fn(self)
