"""The ``directory`` handler: each release is a slot folder; ``current`` points at one.

    slots_dir/
        slot-<notice id>/       one unpacked release per slot, never modified once complete
        .tmp-slot-<notice id>/  a slot being unpacked (removed on failure or at the next start)
        current -> slot-...     a relative symlink, replaced atomically (symlink + rename)

Unpacking refuses any member that could write outside the slot: absolute names, ``..``,
symlinks or hard links pointing out, devices and FIFOs (``check_member``), and extraction
also runs Python's ``data`` tar filter, which checks the real paths on disk. The slot is
renamed into place only when complete, and ``current`` switches only to a complete slot,
so ``current`` never points at a half-applied release. The previous slot is kept for
rollback (as snap keeps revisions); older ones are removed once the new one is healthy.
"""

from __future__ import annotations

import asyncio
import errno
import os
import posixpath
import shutil
import tarfile
from pathlib import Path

from device_client.config import InstallConfig
from device_client.errors import UpdateError
from device_client.handlers.base import InstallOutcome, InstallRequest, StepOptions, run_step
from fleetpush_protocol.atomic import fsync_dir
from fleetpush_protocol.messages import FailureCode

__all__ = ["CURRENT", "DirectoryHandler", "UnsafeMemberError", "check_member", "switch_current"]

CURRENT = "current"
TMP_PREFIX = ".tmp-"
MAX_MEMBERS = 1_000_000


class UnsafeMemberError(ValueError):
    """A tar member that could escape the slot or is not a plain file, folder or link."""


def _escapes(path: str) -> bool:
    norm = posixpath.normpath(path)
    return norm == ".." or norm.startswith("../") or posixpath.isabs(norm)


def check_member(member: tarfile.TarInfo) -> None:
    """Refuse a tar member whose extraction could reach outside the slot.

    Raises:
        UnsafeMemberError: naming the member and the reason.
    """
    name = member.name
    if not name or "\x00" in name:
        raise UnsafeMemberError(f"{name!r}: empty or NUL in name")
    if posixpath.isabs(name) or name.startswith("\\"):
        raise UnsafeMemberError(f"{name!r}: absolute path")
    if ".." in Path(name).parts or _escapes(name):
        raise UnsafeMemberError(f"{name!r}: '..' in path")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeMemberError(f"{name!r}: device or FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMemberError(f"{name!r}: unsupported member type")
    if member.issym():
        target = member.linkname
        if posixpath.isabs(target):
            raise UnsafeMemberError(f"{name!r}: symlink to absolute path {target!r}")
        if _escapes(posixpath.join(posixpath.dirname(name), target)):
            raise UnsafeMemberError(f"{name!r}: symlink {target!r} points outside the slot")
    if member.islnk():
        target = member.linkname  # hard link targets are relative to the archive root
        if posixpath.isabs(target) or _escapes(target):
            raise UnsafeMemberError(f"{name!r}: hard link to {target!r} outside the slot")


def _checked_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    members = []
    for member in tar:
        check_member(member)
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise UnsafeMemberError(f"more than {MAX_MEMBERS} members")
    return members


def unpack(payload: Path, dest: Path) -> None:
    """Unpack a (possibly compressed) tar into the new folder ``dest``.

    Raises:
        UpdateError: ``payload_invalid`` for a bad or unsafe archive, ``disk_full``.
    """
    dest.mkdir(mode=0o755)
    try:
        with tarfile.open(payload, "r:*") as tar:
            members = _checked_members(tar)
            tar.extractall(dest, members=members, filter="data")
    except (UnsafeMemberError, tarfile.TarError) as e:
        raise UpdateError(FailureCode.PAYLOAD_INVALID, f"payload refused: {e}") from e
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UpdateError(FailureCode.DISK_FULL, "no space left to unpack the payload") from e
        raise UpdateError(FailureCode.INSTALL_FAILED, f"unpacking failed: {e.strerror}") from e
    _sync_tree(dest)


def _sync_tree(root: Path) -> None:
    # The slot must be on disk before `current` may point at it.
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        fsync_dir(Path(folder))


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
            await asyncio.to_thread(unpack, request.payload, tmp)
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
