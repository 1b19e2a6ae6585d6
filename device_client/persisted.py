"""The agent's state in memory and its one way to disk.

Every part of the agent (the message router, the job runner, the reporter) reads and changes
``Persisted.state`` and writes it through ``save``: one atomic write of everything that must
agree after a crash (docs/device.md, "Crash safety"). Parts never keep their own copy of the
state object: ``load`` replaces it.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Protocol

from device_client.store import AgentState
from fleetpush_common.atomic import make_private_dir
from fleetpush_protocol.driver import DeviceTrust
from fleetpush_protocol.verify import TrustedKeyring, VerifyPolicy

__all__ = ["ACK_FLUSH_S", "Persisted", "Store"]

logger = logging.getLogger(__name__)

ACK_FLUSH_S = 1.0  # seconds: confirmed reports are dropped from disk at most this late


class Store(Protocol):
    """Where the state lives between runs (``device_client.store.StateStore``)."""

    def load(self) -> AgentState: ...

    def save(self, state: AgentState) -> None: ...


class Persisted:
    """The loaded state, the trust driver it carries, and the writes that persist both.

    Args:
        store: loads and saves the state.
        anchor: the root keys from the configuration (the trust anchor).
        policy: verification limits.
        downloads: the folder of partial and verified payloads.
    """

    def __init__(
        self, store: Store, anchor: TrustedKeyring, policy: VerifyPolicy, downloads: Path
    ) -> None:
        self.store = store
        self.downloads = downloads
        self.state = AgentState()
        self._anchor = anchor
        self._policy = policy
        self.trust = DeviceTrust(trusted=anchor, policy=policy)
        self._flush: asyncio.TimerHandle | None = None

    def load(self) -> None:
        """Read the state and drop downloads that belong to no current job."""
        self.state = self.store.load()
        if self.state.trust:
            self.trust = DeviceTrust.from_state(self.state.trust, self._anchor, self._policy)
        make_private_dir(self.downloads)
        keep = {self.state.job.notice_id} if self.state.job else set()
        for f in self.downloads.iterdir():
            if f.name.split(".", 1)[0] not in keep:
                f.unlink(missing_ok=True)

    def save(self) -> None:
        """Write everything now (cancels a pending coalesced write)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self.state.trust = self.trust.to_state()
        self.store.save(self.state)

    def save_soon(self) -> None:
        """Write within ``ACK_FLUSH_S``: for changes a crash may lose (confirmed reports)."""
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(ACK_FLUSH_S, self.save)

    @property
    def save_pending(self) -> bool:
        """A coalesced save is scheduled and not yet written."""
        return self._flush is not None

    def flush(self) -> None:
        """Write now if a coalesced write is pending (at shutdown)."""
        if self._flush is not None:
            self.save()
