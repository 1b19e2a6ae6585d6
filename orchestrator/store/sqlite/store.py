"""``SQLiteStore``: the shared SQL on one SQLite connection, used from one thread only."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleetpush_common.atomic import SECRET_FILE_MODE, make_private_dir
from fleetpush_protocol.messages import Inventory, Presence, Report
from orchestrator.rules import order_key
from orchestrator.store.base import StoreCorruptError, StoreUnavailableError
from orchestrator.store.records import IngestResult
from orchestrator.store.sql import Cursor, Dialect, SqlStore
from orchestrator.store.sqlite.checkpoint import BACKSTOP_PAGES, Checkpointer

__all__ = ["SQLITE", "SQLiteStore"]

logger = logging.getLogger(__name__)

# One connection on one thread: a transaction already excludes every other writer of this
# process, and the driver begins it with BEGIN IMMEDIATE (isolation_level below), so
# another process (the CLI) waits for the lock instead of failing halfway.
SQLITE = Dialect(
    name="sqlite", for_update="", integrity=(sqlite3.IntegrityError,),
    by_state=" INDEXED BY rollout_targets_state",
)  # fmt: skip


def _make_private_db(path: Path) -> None:
    """Create the database file 0600 (in a 0700 folder) before SQLite opens it.

    It holds signed payload URLs and token hashes. SQLite creates a missing file with
    0666 minus the umask, and gives ``-wal``/``-shm`` the main file's mode: creating it
    0600 first makes all three private whatever the umask. A file left group- or
    world-accessible by an older version is tightened, with a warning.
    """
    make_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, SECRET_FILE_MODE)
    try:
        loose = os.fstat(fd).st_mode & 0o077
        if loose:
            os.fchmod(fd, SECRET_FILE_MODE)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        try:
            if side.stat().st_mode & 0o077:
                os.chmod(side, SECRET_FILE_MODE)
                loose = 1
        except FileNotFoundError:
            continue
    if loose:
        logger.warning("%s was readable by group or others; made it 0600", path)


class SQLiteStore(SqlStore):
    """Implements ``Store`` on one SQLite file in WAL mode.

    Args:
        path: the database file; created with its folder if missing.
        synchronous: ``NORMAL`` (default: durable across process kills, WAL) or ``FULL``
            (durable across power loss too).

    Raises:
        StoreCorruptError: the file is not an SQLite database.
    """

    dialect = SQLITE
    threads = 1

    def __init__(self, path: Path, *, synchronous: str = "NORMAL") -> None:
        super().__init__()
        _make_private_db(path)
        self.path = path
        self._depth = 0
        self._checkpointer: Checkpointer | None = None
        with self._errors():
            # isolation_level: the driver opens each transaction (BEGIN IMMEDIATE) before
            # its first write; _tx commits or rolls it back through the driver.
            self.db = sqlite3.connect(path, isolation_level="IMMEDIATE", timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA busy_timeout=30000")
            # Ingestion commits a batch every ~100 ms: a larger page cache and fewer, larger
            # checkpoints (16 MiB of WAL instead of 4 MiB) keep COMMIT off the hot path.
            self.db.execute("PRAGMA cache_size=-65536")
            self.db.execute("PRAGMA temp_store=MEMORY")
            self.db.execute("PRAGMA wal_autocheckpoint=4096")
            # Rollout creation orders devices in SQL (Dialect.order_key) by this hash.
            self.db.create_function("fleetpush_order_key", 2, order_key, deterministic=True)

    def ingest(self, batch: Sequence[Report | Presence | Inventory], now: float) -> IngestResult:
        if self._checkpointer is None:
            # The ingestion writer hands its checkpoints to a thread of their own.
            self._checkpointer = Checkpointer(self.path)
            self._execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        return super().ingest(batch, now)

    def _where_am_i(self) -> str:
        return str(self.path)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The driver's errors as the store's; a duplicate stays the driver's, for the
        caller that expects it (``Dialect.integrity``)."""
        try:
            yield
        except sqlite3.IntegrityError:
            raise
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreUnavailableError(f"database {self.path}: {e}") from e
            raise StoreCorruptError(f"database {self.path}: {e}") from e
        except sqlite3.DatabaseError as e:  # not a database, malformed pages
            raise StoreCorruptError(f"database {self.path}: {e}") from e

    @contextmanager
    def _tx(self) -> Iterator[None]:
        self._depth += 1
        try:
            yield
        except BaseException:
            if self._depth == 1:
                self.db.rollback()
            raise
        else:
            if self._depth == 1:
                with self._errors():
                    self.db.commit()
        finally:
            self._depth -= 1

    def _execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        with self._errors():
            return self.db.execute(sql, args)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        with self._errors():
            return self.db.executemany(sql, rows).rowcount

    def _insert_returning(self, sql: str, rows: Sequence[Sequence[Any]]) -> list[Any]:
        out: list[Any] = []
        with self._errors():
            for row in rows:
                out.extend(self.db.execute(sql, row).fetchall())
        return out

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self.db.close()
