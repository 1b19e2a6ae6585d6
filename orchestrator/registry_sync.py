"""The device registry's facts in the database: provisioned groups and model.

``fleetpush devices provision --model M --groups G`` and ``devices set-groups`` write the
broker's identity registry (``identities.json``, which also generates the broker ACL). The
orchestrator reads that file, never a device's inventory, for the groups and model it
targets by: ``RegistrySync.refresh`` copies it into the database whenever the file changed
(a ``stat`` otherwise). Rollout creation, the device API and continuous rollouts refresh
before they read devices, so a device provisioned a moment ago is targeted by its
provisioned groups.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from fleetpush_common.backoff import Backoff
from fleetpush_common.clock import Clock
from orchestrator.broker.credentials import DEVICE_ROLE
from orchestrator.broker.registry import IdentityRegistry
from orchestrator.store import Database, Store, StoreUnavailableError

__all__ = ["RegistrySync", "read_registry"]

logger = logging.getLogger(__name__)
WRITE_TRIES = 4  # a deadlock aborted by PostgreSQL is tried again this many times in all

_Identities = list[tuple[str, tuple[str, ...], str]]


def read_registry(path: Path) -> _Identities:
    """``(device_id, groups, model)`` of every device identity; a missing file has none.

    Raises:
        ValueError: the file is not a registry fleetpush can read.
    """
    try:
        registry = IdentityRegistry(path)
    except (OSError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: unreadable registry ({e})") from None
    return [
        (i.username, i.groups, i.model or "")
        for i in registry.identities.values()
        if i.role == DEVICE_ROLE
    ]


class RegistrySync:
    """Copies the registry file into the database when it changes.

    Args:
        db: the database.
        path: the registry file (``identities.json``).
        clock: stamps devices first seen in the registry.
    """

    def __init__(self, db: Database, path: Path, clock: Clock) -> None:
        self.db = db
        self.path = path
        self.clock = clock
        self._seen: tuple[int, int, int, int] | None = None
        self._digest: bytes | None = None  # of the content last applied; None: never
        self._lock = asyncio.Lock()

    def _signature(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)

    def _changed(self) -> bytes | None:
        """The content's digest when it may differ from what was applied, else None.

        A ``stat`` decides, except when the file changed within the last seconds: file
        times are coarse and inodes are reused, so two quick writes can look alike; then
        the content is compared (as git does for "racily clean" files).
        """
        sig = self._signature()
        # File times are wall-clock times, so this compares them with the wall clock.
        recent = sig is not None and time.time() - sig[1] / 1e9 < 2.0
        if self._digest is not None and sig == self._seen and not recent:
            return None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = b""
        digest = hashlib.sha256(data).digest()
        self._seen = sig
        return None if digest == self._digest else digest

    async def refresh(self) -> int:
        """Re-read the registry if it changed; return how many devices changed.

        A registry that cannot be read keeps the last facts and is logged: it is written
        atomically, so this means it is damaged, and guessing would target wrongly.
        """
        async with self._lock:
            try:
                digest = await asyncio.to_thread(self._changed)
            except OSError as e:
                logger.warning("device registry %s not readable: %s", self.path, e)
                return 0
            if digest is None:
                return 0
            try:
                identities = await asyncio.to_thread(read_registry, self.path)
            except ValueError as e:
                self._seen = None
                logger.warning("device registry not applied: %s", e)
                return 0
            now = self.clock.now()

            def write(s: Store) -> int:
                return s.sync_registry(identities, now)

            changed = await self._write(write)
            if changed is None:
                return 0  # the digest stays old: the next refresh tries again
            self._digest = digest
        if changed:
            logger.info("device registry: %d device(s) changed", changed)
        return changed

    async def _write(self, write: Callable[[Store], int]) -> int | None:
        """Apply the registry in one transaction, again after a transient database error.

        Concurrent writers of the same device rows (ingestion, another replica's refresh)
        can deadlock with the registry's one-statement upsert on PostgreSQL, which then
        aborts one of them; the transaction is whole, so trying it again is safe. After
        the last try the last facts stay and the error is logged, not raised into a
        request that only wanted to read devices.
        """
        backoff = Backoff(base_s=0.05, cap_s=1.0)
        for attempt in range(1, WRITE_TRIES + 1):
            try:
                return await self.db.run(write)
            except StoreUnavailableError as e:
                if attempt == WRITE_TRIES:
                    logger.warning("device registry not applied: %s", e)
                    return None
                await asyncio.sleep(backoff.next_delay())
        return None
