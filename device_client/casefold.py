"""Refuse a case-folding ``slots_dir``: the payload checker's names must be the kernel's.

The checker (``handlers/archive.py``) compares member names byte for byte, as ext4, XFS
and btrfs do. In a folder with ext4's (or tmpfs's, or f2fs's) case-folding attribute
(``chattr +F``, ``FS_CASEFOLD_FL``) the kernel treats ``A`` and ``a`` as one name, so a
member ``A/x`` would be written through a symlink member ``a``, which the checker never
saw coming. Comparing names case-blind instead would have to follow the kernel's Unicode
folding rules exactly (its version included); refusing is simpler and cannot drift. The
attribute is inherited by every folder made inside, so the folder that matters is
``slots_dir`` or, while it does not exist yet, the nearest existing folder above it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["FS_CASEFOLD_FL", "FS_IOC_GETFLAGS", "check_slots_dir", "is_casefold", "read_flags"]

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long) on 64-bit Linux (linux/fs.h)
FS_CASEFOLD_FL = 0x40000000  # the folder's names are looked up case-insensitively
_UNSUPPORTED = {errno.ENOTTY, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


def is_casefold(flags: int) -> bool:
    """Whether an inode's ``FS_IOC_GETFLAGS`` value has the case-folding attribute."""
    return bool(flags & FS_CASEFOLD_FL)


def read_flags(folder: Path) -> int:
    """The folder's inode flags (``lsattr``'s), 0 where the filesystem keeps none.

    Raises:
        OSError: the folder cannot be opened.
    """
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = array.array("l", [0])  # the kernel writes an int; a long leaves room
        try:
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        except OSError as e:
            if e.errno in _UNSUPPORTED:  # tmpfs without casefold, FAT, network file systems
                return 0
            raise
        return int(buf[0]) & 0xFFFFFFFF
    finally:
        os.close(fd)


def _existing(folder: Path) -> Path:
    """``folder``, or the nearest folder above it that exists (whose attribute it gets)."""
    path = folder.absolute()
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def check_slots_dir(slots_dir: Path, read: Callable[[Path], int] = read_flags) -> str | None:
    """The problem with ``slots_dir`` as a slot folder, or None when there is none.

    ``read`` gives a folder's inode flags (injected by tests: this machine's file system
    may not support case folding at all)."""
    folder = _existing(slots_dir)
    try:
        flags = read(folder)
    except OSError as e:
        return f"{folder}: cannot read its attributes ({e.strerror})"
    if not is_casefold(flags):
        return None
    inherited = "" if folder == slots_dir.absolute() else f" (its folder {folder} is)"
    return (
        f"{slots_dir} is case-folding (chattr +F){inherited}: payload member names are "
        "checked byte for byte, so 'A' could be written through a symlink 'a'; use a "
        "case-sensitive folder"
    )
