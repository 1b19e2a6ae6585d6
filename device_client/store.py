"""The agent's persistent state: one msgpack file, replaced atomically on every change.

Everything that must agree after a crash lives in the same file (the trust state, the
current job, the queued notice, the installed release, the report outbox and its counter),
so one atomic write moves the device from one consistent state to the next: no crash can
leave a job persisted without its report, or a report without its job.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from device_client.jobs.states import Job
from device_client.transport.outbox import Outbox
from fleetpush_common.atomic import atomic_write, make_private_dir
from fleetpush_protocol.messages import Release

__all__ = ["SCHEMA", "AgentState", "StateStore"]

logger = logging.getLogger(__name__)

SCHEMA = 1
MAX_STATE_BYTES = 16 << 20  # bytes; a state file larger than this is corrupt
CORRUPT_COUNTER_BASE = 1 << 41  # report counters restart above this after a corrupt state
MAX_REJECTED = 32  # digests of rejected messages remembered, so retained ones report once


@dataclass
class AgentState:
    """What a device remembers between runs."""

    trust: dict[str, Any] = field(default_factory=dict)  # DeviceTrust.to_state()
    job: Job | None = None
    queued: bytes = b""  # a verified notice waiting for the current job to finish
    installed: Release | None = None
    outbox: Outbox = field(default_factory=Outbox)
    rejected: list[bytes] = field(default_factory=list)  # SHA-256 of rejected messages
    last_job: Job | None = None  # the last finished job, for status and inventory

    @property
    def current_version(self) -> str:
        return self.installed.version if self.installed else ""

    def remember_rejected(self, digest: bytes) -> bool:
        """Record a rejected message; False if it was already reported."""
        if digest in self.rejected:
            return False
        self.rejected = [*self.rejected[-(MAX_REJECTED - 1) :], digest]
        return True

    def to_bytes(self) -> bytes:
        body = {
            "schema": SCHEMA,
            "trust": self.trust,
            "job": self.job.to_map() if self.job else None,
            "queued": self.queued,
            "installed": {"name": self.installed.name, "version": self.installed.version}
            if self.installed
            else None,
            "outbox": self.outbox.to_list(),
            "counter": self.outbox.counter,
            "rejected": self.rejected,
            "last_job": self.last_job.to_map() if self.last_job else None,
        }
        data: bytes = msgpack.packb(body, use_bin_type=True)
        return data

    @classmethod
    def from_bytes(cls, data: bytes) -> AgentState:
        body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(body, dict) or body.get("schema") != SCHEMA:
            raise ValueError("not a fleetpush device state file of schema 1")
        installed = body.get("installed")
        return cls(
            trust=dict(body.get("trust") or {}),
            job=Job.from_map(body["job"]) if body.get("job") else None,
            queued=bytes(body.get("queued") or b""),
            installed=Release(name=str(installed["name"]), version=str(installed["version"]))
            if installed
            else None,
            outbox=Outbox.from_list(
                list(body.get("outbox") or []),
                int(body.get("counter", 0)),
                body.get("last_report"),  # written by agents before end-to-end acks
            ),
            rejected=[bytes(d) for d in body.get("rejected") or []],
            last_job=Job.from_map(body["last_job"]) if body.get("last_job") else None,
        )


def _parse(data: bytes) -> AgentState:
    if len(data) > MAX_STATE_BYTES:
        raise ValueError(f"state file larger than {MAX_STATE_BYTES} bytes")
    return AgentState.from_bytes(data)


class StateStore:
    """Loads and saves ``AgentState`` in ``state_dir/state.msgpack``.

    Args:
        state_dir: the device's state folder; created if missing (mode 0700).
        durable: fsync each write (True on real devices).
        clock: Unix time in seconds (the agent's clock).
    """

    FILE = "state.msgpack"

    def __init__(
        self, state_dir: Path, *, durable: bool = True, clock: Callable[[], float] = time.time
    ) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / self.FILE
        self.durable = durable
        self.clock = clock

    def load(self) -> AgentState:
        """Read the state; a missing file is a fresh device.

        A corrupt file (which atomic writes make unlikely: a disk fault or a hand edit) is
        moved aside and the device starts fresh, rather than never updating again.
        """
        make_private_dir(self.dir)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AgentState()
        try:
            return _parse(data)
        except (ValueError, KeyError, TypeError, msgpack.UnpackException) as e:
            aside = self.path.with_name(self.FILE + ".corrupt")
            os.replace(self.path, aside)
            logger.error(  # noqa: TRY400 - a traceback would say nothing more
                "state file %s is corrupt (%s); moved to %s", self.path, e, aside
            )
            # The report counters already used are unknown. The orchestrator deduplicates on
            # (device, counter), so restarting at 1 would make it drop every new report as
            # a copy of an old one: start above any counter this device can have used.
            counter = CORRUPT_COUNTER_BASE + int(self.clock() * 1000)
            return AgentState(outbox=Outbox(counter=counter))

    def save(self, state: AgentState) -> None:
        """Write the whole state atomically, then let the outbox publish what it holds.

        Raises:
            OSError: e.g. ENOSPC; the previous state file is untouched.
        """
        atomic_write(self.path, state.to_bytes(), durable=self.durable)
        state.outbox.mark_persisted()
