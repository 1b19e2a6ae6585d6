"""Checks of a tar archive's member list, made before anything is written (no I/O here).

Extraction must be safe whatever the member order, so every member is judged against the
whole tree the archive will create, not against what happens to be on disk when it comes
(the slot starts empty, so the archive is all there will ever be in it):

* names: relative, no ``..``, no control characters, bounded length and depth;
* types: regular files (a sparse one counts at its full size), folders, symlinks, and hard
  links to an earlier regular file; no devices, FIFOs or unknown types; no name twice;
* nothing below a name the archive makes a file or a link, so no write goes through a
  link and no later symlink can redirect an earlier member;
* every symlink followed as the kernel would in the finished slot, hop by hop through the
  archive's other symlinks: refused if it is absolute, leaves the slot or loops;
* the limits of ``UnpackLimits``: members, total bytes, bytes per payload byte.

Python's own ``tarfile`` filters are not relied on: several bypasses of them (symlinks
created before the path they point through) were fixed only in later 3.11 releases.
"""

from __future__ import annotations

import re
import tarfile
from collections.abc import Mapping

from device_client.config import UnpackLimits

__all__ = [
    "MAX_HOPS",
    "ArchiveCheck",
    "UnsafeMemberError",
    "allowed_bytes",
    "check_member",
    "resolve_symlink",
]

MAX_HOPS = 40  # symlinks followed in one resolution (Linux's MAXSYMLINKS)
NAME_MAX = 255  # bytes in one path component (Linux)
RATIO_FLOOR = 1 << 20  # bytes: a smaller payload counts as this big for max_ratio
DEFAULT_LIMITS = UnpackLimits()
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc: newline, ESC, DEL...

Parts = tuple[str, ...]


class UnsafeMemberError(ValueError):
    """The archive is refused: a member could escape the slot, break a limit, or the
    archive cannot be read. The message names the member."""


def allowed_bytes(limits: UnpackLimits, payload_bytes: int) -> int:
    """The most a payload of ``payload_bytes`` may unpack to, in bytes."""
    return min(limits.max_bytes, limits.max_ratio * max(payload_bytes, RATIO_FLOOR))


def _text(path: str, what: str, limits: UnpackLimits) -> None:
    if not path:
        raise UnsafeMemberError(f"empty {what}")
    if _CONTROL.search(path):
        raise UnsafeMemberError(f"{path!r}: control character in {what}")
    if _bytes(path) > limits.max_path_bytes:
        raise UnsafeMemberError(
            f"{path[:64]!r}...: {what} longer than {limits.max_path_bytes} bytes"
        )
    if path.startswith(("/", "\\")):
        raise UnsafeMemberError(f"{path!r}: absolute {what}")


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogateescape"))


def _split(path: str) -> Parts:
    return tuple(p for p in path.split("/") if p not in ("", "."))


def _name(path: str, limits: UnpackLimits) -> Parts:
    _text(path, "name", limits)
    parts = _split(path)
    if ".." in parts:
        raise UnsafeMemberError(f"{path!r}: '..' in name")
    if len(parts) > limits.max_depth:
        raise UnsafeMemberError(f"{path!r}: deeper than {limits.max_depth} components")
    if _bytes(path) > NAME_MAX and any(_bytes(p) > NAME_MAX for p in parts):
        raise UnsafeMemberError(f"{path!r}: a component longer than {NAME_MAX} bytes")
    return parts


def resolve_symlink(link: Parts, symlinks: Mapping[Parts, str]) -> Parts:
    """Where the symlink ``link`` leads in the finished slot, as components under it.

    Each component is walked from the link's folder; one that is itself a symlink of the
    archive is replaced by that link's target, as the kernel does, so ``..`` after it
    climbs from where the link really leads, not from its name.

    Raises:
        UnsafeMemberError: the walk leaves the slot, or takes more than ``MAX_HOPS`` links.
    """
    name = "/".join(link)
    pending = list(reversed(symlinks[link].split("/")))
    here = list(link[:-1])
    hops = 1
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                raise UnsafeMemberError(
                    f"{name!r}: symlink {symlinks[link]!r} leads out of the slot"
                )
            here.pop()
            continue
        here.append(part)
        target = symlinks.get(tuple(here))
        if target is None:
            continue
        hops += 1
        if hops > MAX_HOPS:
            raise UnsafeMemberError(f"{name!r}: symlink loop or more than {MAX_HOPS} hops")
        if target.startswith("/"):
            raise UnsafeMemberError(f"{name!r}: symlink through an absolute link")
        here.pop()
        pending.extend(reversed(target.split("/")))
    return tuple(here)


def check_member(member: tarfile.TarInfo, limits: UnpackLimits = DEFAULT_LIMITS) -> Parts:
    """Refuse a member that is unsafe on its own; return its name as components.

    A symlink is followed as if it were the archive's only one; ``ArchiveCheck`` follows
    it again through all of them.

    Raises:
        UnsafeMemberError: naming the member and the reason.
    """
    parts = _name(member.name, limits)
    name = member.name
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeMemberError(f"{name!r}: device or FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMemberError(f"{name!r}: unsupported member type {member.type!r}")
    if not parts and not member.isdir():
        raise UnsafeMemberError(f"{name!r}: names the slot itself")
    if member.size < 0:  # base-256 sizes can be negative, and would lower the total
        raise UnsafeMemberError(f"{name!r}: negative size")
    if member.issym():
        _text(member.linkname, "symlink target", limits)
        resolve_symlink(parts, {parts: member.linkname})
    if member.islnk():
        _name(member.linkname, limits)  # hard link targets are relative to the archive root
    return parts


def _kind(member: tarfile.TarInfo) -> str:
    return "symlink" if member.issym() else "hard link" if member.islnk() else "file"


class ArchiveCheck:
    """Members fed one at a time, as the headers are read; ``finish`` judges the tree.

    Counting and sizes are checked on each ``add``, so a bomb stops at the first header
    that breaks a limit, before the archive is read any further.
    """

    def __init__(self, limits: UnpackLimits, max_bytes: int) -> None:
        self.limits = limits
        self.max_bytes = max_bytes  # allowed_bytes() for this payload
        self.members: list[tarfile.TarInfo] = []
        self.total_bytes = 0  # what the regular files unpack to
        self._paths: dict[Parts, tarfile.TarInfo] = {}

    def add(self, member: tarfile.TarInfo) -> None:
        """Raises: UnsafeMemberError."""
        if len(self.members) >= self.limits.max_members:
            raise UnsafeMemberError(f"more than {self.limits.max_members} members")
        parts = check_member(member, self.limits)
        if member.isreg():
            self.total_bytes += member.size
            if self.total_bytes > self.max_bytes:
                raise UnsafeMemberError(
                    f"{member.name!r}: the payload unpacks to more than {self.max_bytes} bytes"
                )
        earlier = self._paths.get(parts)
        if earlier is not None and not (earlier.isdir() and member.isdir()):
            raise UnsafeMemberError(f"{member.name!r}: appears twice in the archive")
        if member.islnk():
            target = self._paths.get(_split(member.linkname))
            if target is None or not target.isreg():
                raise UnsafeMemberError(
                    f"{member.name!r}: hard link to {member.linkname!r}, "
                    "which is not an earlier regular file of the archive"
                )
        if parts:
            self._paths[parts] = member
        self.members.append(member)

    def finish(self) -> list[tarfile.TarInfo]:
        """The members in a safe extraction order: symlinks last.

        Raises:
            UnsafeMemberError: a member lies below a file or link, or a symlink leaves
            the slot or loops.
        """
        paths = self._paths
        for parts, member in paths.items():
            for i in range(1, len(parts)):
                above = paths.get(parts[:i])
                if above is not None and not above.isdir():
                    raise UnsafeMemberError(
                        f"{member.name!r}: below {above.name!r}, which is a {_kind(above)}"
                    )
        symlinks = {parts: m.linkname for parts, m in paths.items() if m.issym()}
        for parts in symlinks:
            resolve_symlink(parts, symlinks)
        return [m for m in self.members if not m.issym()] + [m for m in self.members if m.issym()]
