"""What every backend gives the shared SQL: a transaction, statements, and its dialect.

The shared methods write SQL once, with ``?`` placeholders and the subset of SQL that
SQLite >= 3.35 and PostgreSQL >= 13 both run (``ON CONFLICT``, ``RETURNING``, row values);
the backend binds the values with its driver's placeholders. The few differences (column
types, how to lock a row, which exceptions mean "duplicate") are the ``Dialect``.
"""

# SQL text is built only from constant column lists and "?" marks; values are bound.

# ruff: noqa: S608

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from orchestrator.store.base import SchemaError
from orchestrator.store.schema import MIGRATIONS

__all__ = ["Cursor", "Dialect", "SqlBase", "listed", "marks"]

logger = logging.getLogger(__name__)


class Cursor(Protocol):
    """The part of a DB-API cursor the shared SQL uses (sqlite3's and psycopg's agree)."""

    @property
    def rowcount(self) -> int: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...
    def __iter__(self) -> Iterator[Any]: ...


@dataclass(frozen=True, slots=True)
class Dialect:
    """Where the backends' SQL differs.

    Attributes:
        name: ``sqlite`` or ``postgresql``.
        for_update: appended to a SELECT whose rows the transaction will change ("" where
            the transaction already excludes other writers).
        integrity: the driver's exceptions for a violated unique or foreign key.
        migration_lock: run first in each migration transaction, so two processes
            starting together do not both migrate ("" when the transaction is enough).
        registry_lock: run first in a registry sync, so two syncs (two replicas) apply
            one after the other, without locking every device row.
        replicas_lock: run first when a replica registers, so two replicas starting
            together each see the other's row (the URL signing key check).
        analyze: refreshes a table's planner statistics (``{table}``), run after a bulk
            write; "" where the planner keeps none.
        fleet_settings: run first in a transaction that reads or sorts the whole fleet
            (target resolution), for its duration only.
        snapshot: first statement of a transaction whose statements must all see the
            same data (a count, then the rows counted); "" where a transaction already
            excludes every other writer.
        by_state: written after ``rollout_targets`` in a query for a rollout's targets in
            a few states, to have them found by the state index ("" where the planner
            finds it alone; SQLite, without statistics, walked the rollout's whole key).
    """

    name: str
    for_update: str
    integrity: tuple[type[Exception], ...]
    migration_lock: str = ""
    registry_lock: str = ""
    replicas_lock: str = ""
    analyze: str = ""
    fleet_settings: tuple[str, ...] = ()
    snapshot: str = ""
    by_state: str = ""

    def ddl(self, sql: str) -> str:
        """The migration text for this backend; the history itself is SQLite's text."""
        return sql

    # JSON held in TEXT columns (groups, tags), read where a query filters by it. Both
    # forms give rows with a ``value`` column (and ``key`` for an object).

    def json_array(self, expr: str, alias: str) -> str:
        """A FROM item: one row per element of the JSON array ``expr``."""
        return f"json_each({expr}) AS {alias}"

    def json_object(self, expr: str, alias: str) -> str:
        """A FROM item: one row (key, value) per member of the JSON object ``expr``."""
        return f"json_each({expr}) AS {alias}"

    def order_key(self, key: str, device_id: str) -> str:
        """``policy.order_key(key, device_id)`` in SQL: a rollout's device order. SQLite
        has no SHA-256: its store registers the Python function under this name."""
        return f"fleetpush_order_key({key}, {device_id})"


BULK_ROWS = 10_000  # rows written at once from which the planner's statistics are renewed


def marks(n: int) -> str:
    return ",".join("?" * n)


def listed(dialect: Dialect, alias: str = "l") -> str:
    """A sub-select of the elements of the JSON array bound to its one ``?``: a batch of
    ids in one value, so one statement serves a batch of any size on every driver."""
    return f"SELECT {alias}.value FROM {dialect.json_array('?', alias)}"


class SqlBase:
    """The transaction and statement primitives each backend implements."""

    dialect: Dialect
    threads = 1

    def _tx(self) -> AbstractContextManager[None]:
        """One transaction; a nested use joins the outer one. Reads need not use it."""
        raise NotImplementedError

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run ``sql`` once per row; return the number of rows changed in all."""
        raise NotImplementedError

    def _bulk_insert(
        self, table: str, cols: Sequence[str], rows: Sequence[Sequence[Any]], suffix: str = ""
    ) -> int:
        """``INSERT INTO table (cols) … suffix`` (an ``ON CONFLICT`` clause) for many rows
        at once; returns the rows inserted or updated. On SQLite one prepared statement in
        the writer's transaction is the fast way; PostgreSQL overrides it with COPY."""
        return self._executemany(
            f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks(len(cols))}) {suffix}",
            rows,
        )

    def _fleet_wide(self) -> None:
        """Settings for this transaction, which reads the whole fleet (``Dialect``)."""
        for statement in self.dialect.fleet_settings:
            self._execute(statement)

    def _analyzed(self, table: str, changed: int) -> None:
        """After a bulk write of ``changed`` rows, refresh the planner's statistics: until
        autovacuum gets to it (a minute or more), PostgreSQL plans the next engine pass
        for the table as it was, e.g. an empty one."""
        if self.dialect.analyze and changed >= BULK_ROWS:
            self._execute(self.dialect.analyze.format(table=table))

    def _insert_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        """Run an ``INSERT … RETURNING`` once per row; return the rows it returned (none
        for a row ``ON CONFLICT DO NOTHING`` skipped)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _where_am_i(self) -> str:
        """The database, for error messages (never with a password)."""
        raise NotImplementedError

    # --- schema --------------------------------------------------------------------------

    def migrate(self) -> int:
        """Apply the migrations this database has not seen; return the schema version.

        Raises:
            SchemaError: the database is newer than this fleetpush.
        """
        with self._tx():
            if self.dialect.migration_lock:
                self._execute(self.dialect.migration_lock)
            self._execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = self._execute("SELECT version FROM schema_version").fetchone()
            version = int(row[0]) if row else 0
            if version > len(MIGRATIONS):
                raise SchemaError(
                    f"{self._where_am_i()}: schema version {version} is newer than this "
                    f"fleetpush ({len(MIGRATIONS)}); upgrade fleetpush"
                )
            for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
                logger.info("applying schema migration %d", number)
                # The version row first: it opens the write transaction, so the DDL after
                # it commits or rolls back with it on both backends.
                self._execute("DELETE FROM schema_version")
                self._execute("INSERT INTO schema_version VALUES (?)", (number,))
                text = sql if isinstance(sql, str) else sql[self.dialect.name]
                for statement in self.dialect.ddl(text).split(";"):
                    if statement.strip():
                        self._execute(statement)
        return len(MIGRATIONS)

    # --- counters ------------------------------------------------------------------------

    def _bump(self, name: str, n: int) -> None:
        if n:
            self._execute(
                "INSERT INTO counters VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value",
                (name, n),
            )

    def counters(self) -> dict[str, int]:
        return {
            r[0]: int(r[1]) for r in self._execute("SELECT name, value FROM counters").fetchall()
        }
