"""The ``directory`` handler: each release is a slot folder; ``current`` points at one.

    slots_dir/
        slot-<notice id>/       one unpacked release per slot, never modified once complete
        .tmp-slot-<notice id>/  a slot being unpacked (removed on failure or at the next start)
        current -> slot-...     a relative symlink, replaced atomically (symlink + rename)

Unpacking (``extract.unpack``) first checks the whole member list (``archive.py``): no
name or link target may ever lead outside the slot, whatever the member order, and the
payload must stay within ``[unpack]``'s limits; only then does it write, never through a
link. The slot is renamed into place only when complete, and ``current`` switches only to
a complete slot, so ``current`` never points at a half-applied release. The previous slot
is kept for rollback (as snap keeps revisions); older ones go once the new one is healthy.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from device_client.config import InstallConfig
from device_client.errors import UpdateError
from device_client.handlers.archive import UnsafeMemberError, check_member
from device_client.handlers.base import InstallOutcome, InstallRequest, StepOptions, run_step
from device_client.handlers.extract import unpack
from fleetpush_common.atomic import fsync_dir
from fleetpush_protocol.messages import FailureCode

__all__ = [
    "CURRENT",
    "DirectoryHandler",
    "UnsafeMemberError",
    "check_member",
    "switch_current",
    "unpack",
]

CURRENT = "current"
TMP_PREFIX = ".tmp-"


def switch_current(slots_dir: Path, slot: str | None) -> None:
    """Point ``current`` at ``slot`` (None: remove it) in one atomic rename."""
    link = slots_dir / CURRENT
    if slot is None:
        link.unlink(missing_ok=True)
    else:
        tmp = slots_dir / f"{TMP_PREFIX}{CURRENT}"
        tmp.unlink(missing_ok=True)
        os.symlink(slot, tmp)
        os.replace(tmp, link)
    fsync_dir(slots_dir)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


class DirectoryHandler:
    name = "directory"
    can_rollback = True

    def __init__(self, config: InstallConfig) -> None:
        if config.slots_dir is None:
            raise ValueError("the directory handler needs slots_dir")
        self.config = config
        self.slots_dir = config.slots_dir

    def current_slot(self) -> str | None:
        try:
            return os.readlink(self.slots_dir / CURRENT)
        except (FileNotFoundError, OSError):
            return None

    def _slot(self, request: InstallRequest) -> str:
        if not request.slot:
            raise ValueError("the directory handler needs a slot name")
        return request.slot

    async def install(self, request: InstallRequest) -> InstallOutcome:
        c = self.config
        slot = self._slot(request)
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        final = self.slots_dir / slot
        tmp = self.slots_dir / f"{TMP_PREFIX}{slot}"
        values = request.values(str(final))
        common = StepOptions(timeout_s=c.step_timeout_s, env=request.env)
        reboot = await run_step(
            c.pre_install, values, failure=FailureCode.PRE_INSTALL_FAILED, step="pre_install",
            changed=False, options=common,
        )  # fmt: skip
        for leftover in (tmp, final):
            if leftover.exists() and slot != self.current_slot():
                await asyncio.to_thread(_remove, leftover)
        try:
            await asyncio.to_thread(unpack, request.payload, tmp, c.unpack)
        except BaseException:
            await asyncio.to_thread(_remove, tmp)
            raise
        os.replace(tmp, final)
        fsync_dir(self.slots_dir)
        switch_current(self.slots_dir, slot)
        reboot |= await run_step(
            c.post_install, values, failure=FailureCode.POST_INSTALL_FAILED,
            step="post_install", changed=True, options=common,
        )  # fmt: skip
        return InstallOutcome(reboot=reboot)

    async def rollback(self, request: InstallRequest) -> None:
        previous = request.previous_slot
        if previous is not None and not (self.slots_dir / previous).is_dir():
            raise UpdateError(FailureCode.ROLLBACK_FAILED, f"previous slot {previous!r} is gone")
        try:
            switch_current(self.slots_dir, previous)
        except OSError as e:
            raise UpdateError(FailureCode.ROLLBACK_FAILED, f"cannot switch back: {e}") from e
        if request.slot and request.slot != previous:
            for path in (
                self.slots_dir / request.slot,
                self.slots_dir / f"{TMP_PREFIX}{request.slot}",
            ):
                await asyncio.to_thread(_remove, path)

    async def commit(self, request: InstallRequest) -> None:
        keep = {CURRENT, self._slot(request), request.previous_slot}
        for entry in self.slots_dir.iterdir():
            if entry.name not in keep:
                await asyncio.to_thread(_remove, entry)
