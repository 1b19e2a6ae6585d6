"""Unpacking a payload into a new, empty slot folder: checked first, then written safely.

1. The archive (plain, gzip, bzip2 or xz) is read once, headers only, through a reader
   that refuses to go further into the unpacked stream than the members accepted so far
   allow: a compression bomb stops at its first header, whether its bytes hide in a
   file, in padding or in an oversized pax or long-name header.
2. ``ArchiveCheck`` judges the whole member list (``archive.py``); nothing is written
   before it passes.
3. Members are written by this module, not by ``tarfile``: every folder is opened with
   ``O_NOFOLLOW`` from the slot's own descriptor, files are created with ``O_EXCL`` and
   ``O_NOFOLLOW``, symlinks are made last, and the bytes actually written are counted
   against the limit again.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import gzip
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

from device_client.config import UnpackLimits
from device_client.errors import UpdateError
from device_client.handlers.archive import (
    DEFAULT_LIMITS,
    ArchiveCheck,
    UnsafeMemberError,
    allowed_bytes,
)
from fleetpush_common.atomic import fsync_dir
from fleetpush_protocol.messages import FailureCode

__all__ = ["check_archive", "unpack"]

CHUNK = 1 << 16  # bytes copied per read
BLOCK = 512  # tar block, bytes
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_CORRUPT = (OSError, EOFError, zlib.error, lzma.LZMAError)


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, pos: int, /) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...


class _Bounded:
    """The unpacked tar stream, readable only up to ``limit`` bytes from its start, and
    in reads of at most ``max_read`` bytes (tarfile reads a pax or long-name header in
    one piece: a huge one would otherwise be held in memory whole)."""

    def __init__(self, stream: _Stream, header_bytes: int) -> None:
        self.stream = stream
        self.header_bytes = header_bytes  # the most one member's headers may take
        self.limit = header_bytes
        self.max_read = max(header_bytes, CHUNK)

    def _check(self, end: int) -> None:
        if end > self.limit:
            raise UnsafeMemberError("the archive's headers and padding unpack to too much")

    def read(self, size: int, /) -> bytes:
        if not 0 <= size <= self.max_read:
            raise UnsafeMemberError(f"the archive has headers of more than {self.max_read} bytes")
        self._check(self.tell() + size)
        try:
            return self.stream.read(size)
        except _CORRUPT as e:
            raise UnsafeMemberError(f"corrupt compressed data: {e}") from e

    def seek(self, pos: int, /) -> int:
        if pos < 0:
            raise UnsafeMemberError("the archive points before its own start")
        self._check(pos)
        try:
            return self.stream.seek(pos)
        except _CORRUPT as e:
            raise UnsafeMemberError(f"corrupt compressed data: {e}") from e

    def tell(self) -> int:
        return self.stream.tell()

    def write(self, b: bytes, /) -> int:
        raise OSError(errno.EBADF, "read only")

    def close(self) -> None:
        self.stream.close()


def _decompressed(raw: IO[bytes]) -> _Stream:
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


@contextlib.contextmanager
def _checked(payload: Path, limits: UnpackLimits) -> Iterator[tuple[tarfile.TarFile, ArchiveCheck]]:
    with payload.open("rb") as raw:
        size = os.fstat(raw.fileno()).st_size
        stream = _Bounded(_decompressed(raw), 4096 + 2 * limits.max_path_bytes)
        check = ArchiveCheck(limits, allowed_bytes(limits, size))
        blocks = 0
        try:
            with tarfile.open(fileobj=stream, mode="r:") as tar:
                for member in tar:  # data is skipped, never read, in this pass
                    check.add(member)
                    if member.isreg():
                        blocks += -(-member.size // BLOCK) * BLOCK
                    stream.limit = (len(check.members) + 2) * stream.header_bytes + blocks
                yield tar, check
        finally:
            stream.close()


def check_archive(payload: Path, limits: UnpackLimits = DEFAULT_LIMITS) -> list[tarfile.TarInfo]:
    """The first pass alone: the members in extraction order (benchmarks time it).

    Raises:
        UnsafeMemberError, tarfile.TarError: the archive is refused.
    """
    with _checked(payload, limits) as (_tar, check):
        return check.finish()


def _file_mode(mode: int) -> int:
    # As tarfile's "data" filter: no setuid/sticky bits, no group or other write, owner
    # may read and write; group and other may execute only what the owner may.
    mode = (mode & 0o755) | 0o600
    return mode if mode & 0o100 else mode & ~0o011


class _Writer:
    """Writes members under ``root`` without ever following a link on the way."""

    def __init__(self, root: int, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.written = 0
        self._made: set[tuple[str, ...]] = {()}
        self._cached: tuple[tuple[str, ...], int] | None = None

    def folder(self, parts: tuple[str, ...]) -> int:
        """A descriptor of the folder ``parts``, made if needed; owned by the writer."""
        if self._cached is not None and self._cached[0] == parts:
            return self._cached[1]
        fd = os.dup(self.root)
        try:
            for i, part in enumerate(parts):
                if parts[: i + 1] not in self._made:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    self._made.add(parts[: i + 1])
                inner = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = inner
        except BaseException:
            os.close(fd)
            raise
        self.close()
        self._cached = (parts, fd)
        return fd

    def close(self) -> None:
        if self._cached is not None:
            os.close(self._cached[1])
            self._cached = None

    def file(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        source = tar.extractfile(member)
        if source is None:  # only for non-regular members, which never come here
            raise UnsafeMemberError(f"{member.name!r}: no data")
        fd = os.open(parts[-1], _FILE_FLAGS, 0o600, dir_fd=self.folder(parts[:-1]))
        try:
            while block := source.read(CHUNK):
                self.written += len(block)
                if self.written > self.max_bytes:
                    raise UnsafeMemberError(f"{member.name!r}: unpacks past {self.max_bytes} bytes")
                view = memoryview(block)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, _file_mode(member.mode))
            with contextlib.suppress(OverflowError, ValueError, OSError):
                os.utime(fd, (member.mtime, member.mtime))
            os.fsync(fd)  # the slot must be on disk before `current` may point at it
        finally:
            os.close(fd)

    def link(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        target = tuple(p for p in member.linkname.split("/") if p not in ("", "."))
        source = os.open(".", _DIR_FLAGS, dir_fd=self.folder(target[:-1]))
        try:
            os.link(target[-1], parts[-1], src_dir_fd=source,
                    dst_dir_fd=self.folder(parts[:-1]), follow_symlinks=False)  # fmt: skip
        finally:
            os.close(source)


def _write(tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path, limit: int) -> None:
    root = os.open(dest, _DIR_FLAGS)
    writer = _Writer(root, limit)
    try:
        for member in members:
            parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
            if member.isdir():
                writer.folder(parts)
            elif member.isreg():
                writer.file(tar, member, parts)
            elif member.islnk():
                writer.link(member, parts)
            else:
                os.symlink(member.linkname, parts[-1], dir_fd=writer.folder(parts[:-1]))
    finally:
        writer.close()
        os.close(root)
    for folder, _dirs, _files in os.walk(dest):
        fsync_dir(Path(folder))


def unpack(payload: Path, dest: Path, limits: UnpackLimits = DEFAULT_LIMITS) -> None:
    """Unpack a (possibly compressed) tar into the new folder ``dest``.

    Raises:
        UpdateError: ``payload_invalid`` for a bad or unsafe archive, ``disk_full``.
    """
    dest.mkdir(mode=0o755)
    try:
        with _checked(payload, limits) as (tar, check):
            _write(tar, check.finish(), dest, check.max_bytes)
    except (tarfile.TarError, ValueError) as e:  # UnsafeMemberError, or tarfile's own
        raise UpdateError(FailureCode.PAYLOAD_INVALID, f"payload refused: {e}") from e
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UpdateError(FailureCode.DISK_FULL, "no space left to unpack the payload") from e
        raise UpdateError(FailureCode.INSTALL_FAILED, f"unpacking failed: {e.strerror}") from e
