"""Open the configured store: SQLite (the default) or PostgreSQL."""

from __future__ import annotations

from orchestrator.config import DatabaseConfig
from orchestrator.store.base import Database, Store
from orchestrator.store.postgres import PostgresStore
from orchestrator.store.sqlite import SQLiteStore

__all__ = ["open_database", "open_store"]


def open_store(cfg: DatabaseConfig, *, migrate: bool = True) -> Store:
    """The store ``cfg`` names, with its schema brought up to date.

    Raises:
        StoreError: the database cannot be opened or migrated (``StoreUnavailableError``
            when it cannot be reached, ``StoreCorruptError`` when it is damaged).
    """
    store: Store
    if cfg.backend == "postgresql":
        store = PostgresStore(
            cfg.url,
            pool_min=cfg.pool_min,
            pool_max=cfg.pool_max,
            connect_timeout_s=cfg.connect_timeout_s,
            password=cfg.password,
        )
    else:
        store = SQLiteStore(cfg.sqlite_path)
    if migrate:
        try:
            store.migrate()
        except BaseException:
            store.close()
            raise
    return store


def open_database(cfg: DatabaseConfig) -> Database:
    """``open_store`` behind a ``Database``, for async code."""
    return Database(lambda: open_store(cfg))
