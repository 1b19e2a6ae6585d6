"""Crash-safe file writes (temp file in the same folder, fsync, rename, fsync the folder),
and private files and folders for secrets (0600 in 0700, whatever the umask)."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = [
    "PRIVATE_DIR_MODE",
    "SECRET_FILE_MODE",
    "ExposedSecretError",
    "atomic_write",
    "check_private",
    "create_secret",
    "fsync_dir",
    "make_private_dir",
    "write_secret",
]


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fill(fd: int, data: bytes, mode: int, *, durable: bool = True) -> None:
    """Give the new file ``fd`` its mode and ``data`` (synced unless not ``durable``), and
    close it. The mode is set on the open file: the umask plays no part."""
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or new file.

    ``durable=False`` skips the fsyncs: the rename is still atomic for other processes,
    but a power loss may lose the write (simulations of thousands of devices use it).

    Raises:
        OSError: the write failed (e.g. ENOSPC); the old file is untouched and no
            temporary file is left behind.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _fill(fd, data, mode, durable=durable)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


# --- private files and folders ----------------------------------------------------------
# Secrets (keys, passwords, the database holding signed URLs) live in 0700 folders as 0600
# files. The modes are set explicitly (mkdir then chmod, fchmod on the open file) because a
# umask of 000 would otherwise leave them world-readable or world-writable.

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600


class ExposedSecretError(PermissionError):
    """A secret file is readable or writable by group or others; the message says what to
    chmod. A ``PermissionError``, so commands that report ``OSError`` already show it."""

    def __init__(self, path: Path, what: str, mode: int) -> None:
        self.path = Path(path)
        super().__init__(
            f"{what} {path} is accessible by group or others (mode {mode:04o}); "
            f"it holds a secret: run 'chmod 600 {path}'"
        )


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and any missing parents with mode 0700, whatever the umask.

    An existing folder keeps its mode: the operator may have made it group-readable on
    purpose (deploy/README.md gives the broker folder to Mosquitto's group).
    """
    path = Path(path)
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR_MODE)
        except FileExistsError:  # created meanwhile by another process: keep its mode
            continue
        os.chmod(folder, PRIVATE_DIR_MODE)
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is not a folder")
    return path


def write_secret(path: Path, data: bytes, *, durable: bool = True) -> None:
    """``atomic_write`` with mode 0600, in a folder created 0700 if it is missing."""
    path = Path(path)
    make_private_dir(path.parent)
    atomic_write(path, data, mode=SECRET_FILE_MODE, durable=durable)


def create_secret(path: Path, data: bytes) -> bool:
    """Create the secret ``path`` holding ``data`` unless it exists; True if this call made
    it. Exclusive, unlike ``write_secret``: processes that start at once on one folder
    (replicas sharing a data directory) each generate a secret, and with a check-then-rename
    each would keep its own in memory while the last rename won on disk. A hard link of
    the written temp file creates the name only if it is free, so one secret wins whole
    and everyone reads it."""
    path = Path(path)
    if path.exists():
        return False
    make_private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _fill(fd, data, SECRET_FILE_MODE)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in _NO_HARD_LINKS:
                raise
            return _create_in_place(path, data)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


# What link(2) says on a filesystem without hard links (SMB, some FUSE mounts).
_NO_HARD_LINKS = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK})


def _create_in_place(path: Path, data: bytes) -> bool:
    """``create_secret`` where hard links are missing: the name itself created exclusively
    (O_EXCL), then written. Still one winner; a reader in the instant between the create and
    the write sees a short file, which its parser refuses, and a restart reads it whole."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    except FileExistsError:
        return False
    _fill(fd, data, SECRET_FILE_MODE)
    fsync_dir(path.parent)
    return True


def check_private(path: Path, what: str) -> None:
    """Refuse a secret file that group or others may read or write, as ssh does.

    Raises:
        ExposedSecretError: the file's mode has any group or other bit set.
        OSError: the file cannot be examined (e.g. it does not exist).
    """
    mode = os.stat(path).st_mode & 0o7777
    if mode & 0o077:
        raise ExposedSecretError(Path(path), what, mode)
