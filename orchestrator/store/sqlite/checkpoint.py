"""WAL checkpoints off the writer's thread, so a commit never waits for one.

In WAL mode a commit appends pages to the ``-wal`` file; a checkpoint copies them back into
the database and fsyncs it. SQLite's automatic checkpoint runs inside the commit that
crosses its threshold, on the writer's thread: under ingestion that is one commit in a few
stalled by a copy and an fsync of several MiB while reports queue up (docs/performance.md).
A ``Checkpointer`` runs passive checkpoints on a connection of its own, on a thread of its
own; passive checkpoints never block the writer, nor wait for it. The writer keeps a
larger automatic threshold as a backstop, should this thread ever fall behind.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from pathlib import Path

__all__ = ["BACKSTOP_PAGES", "Checkpointer"]

logger = logging.getLogger(__name__)

INTERVAL_S = 0.5  # seconds between two passive checkpoints
BACKSTOP_PAGES = 16384  # the writer checkpoints itself past this WAL size (64 MiB of pages)


class Checkpointer:
    """Checkpoints ``path`` every ``interval`` seconds until ``stop``."""

    def __init__(self, path: Path, interval: float = INTERVAL_S) -> None:
        self.path = path
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="fleetpush-db-checkpoint", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self.path, timeout=1.0)
        except sqlite3.Error as e:
            logger.warning("cannot open %s for checkpoints: %s", self.path, e)
            return
        with contextlib.closing(db):
            while not self._stop.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as e:  # busy or gone: the writer's backstop remains
                    logger.debug("checkpoint of %s skipped: %s", self.path, e)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
