"""SQL straight through the driver, behind the store's back: what a test needs to break a
store's data on purpose or to read what it wrote, on either backend."""

from __future__ import annotations

import contextlib
import sqlite3

import psycopg

from orchestrator.config import DatabaseConfig


def raw_sql(database: DatabaseConfig, sql: str) -> None:
    """One statement, committed."""
    if database.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(database.sqlite_path)) as db:
            db.execute(sql)
            db.commit()
    else:
        with psycopg.connect(database.url, autocommit=True) as conn:
            conn.execute(sql.encode())


def sql_rows(database: DatabaseConfig, sql: str) -> list[tuple[object, ...]]:
    """A query's rows, as tuples."""
    if database.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(database.sqlite_path)) as db:
            return [tuple(r) for r in db.execute(sql).fetchall()]
    with psycopg.connect(database.url) as conn:
        return [tuple(r) for r in conn.execute(sql.encode()).fetchall()]
