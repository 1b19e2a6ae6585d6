"""The SQLite backend: one file in WAL mode, one connection, one thread (see ``Database``)."""

from orchestrator.store.sqlite.store import SQLITE, SQLiteStore

__all__ = ["SQLITE", "SQLiteStore"]
