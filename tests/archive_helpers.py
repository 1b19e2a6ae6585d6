"""Hostile tar payloads, built in memory and small, for the archive unit and attack tests.

* ``symlink_chain``: issue 12's escape through a symlink created after the link that
  points through it, in any member order;
* ``gzip_bomb``: about 1 MB of gzip that unpacks to 1 GiB of zeros (concatenated gzip
  members, each 1 MiB of zeros, so building it costs milliseconds);
* ``sparse_tar``: a GNU sparse member of 1 TiB apparent size stored in a few KB;
* ``many_entries``: ``n`` tiny files.
"""

from __future__ import annotations

import gzip
import io
import tarfile
from collections.abc import Iterable, Sequence

__all__ = [
    "CHAIN_DIRS",
    "chain_members",
    "gzip_bomb",
    "link",
    "many_entries",
    "regular",
    "sparse_tar",
    "symlink_chain",
    "tar_of",
]

CHAIN_DIRS = tuple("abcdefghijkl")  # 12 nested folders a/b/.../l


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


def folder(name: str) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    return info, b""


def tar_of(members: Iterable[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> bytes:
    """A tar (``mode`` "w", "w:gz", ...) of the members in exactly this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def chain_members(outside: str = "outside") -> dict[str, list[tuple[tarfile.TarInfo, bytes]]]:
    """The chain's three parts: ``t`` points through ``a/.../l/s``, which does not exist
    yet; the folders; ``s``, which climbs back to the slot's root, so ``t`` climbs one
    level (and more) above it to ``outside``."""
    deep = "/".join(CHAIN_DIRS)
    return {
        "t": [link("t", f"{deep}/s/" + "../" * 13 + outside)],
        "dirs": [folder("/".join(CHAIN_DIRS[: i + 1])) for i in range(len(CHAIN_DIRS))],
        "s": [link(f"{deep}/s", "../" * 12)],
    }


def symlink_chain(order: Sequence[str] = ("t", "dirs", "s"), outside: str = "outside") -> bytes:
    parts = chain_members(outside)
    return tar_of(m for name in order for m in parts[name])


def gzip_bomb(unpacked: int = 1 << 30) -> bytes:
    """A .tar.gz of one file of ``unpacked`` zero bytes (a multiple of 1 MiB)."""
    info = tarfile.TarInfo("zeros.bin")
    info.size = unpacked
    info.mode = 0o644
    mib = gzip.compress(b"\0" * (1 << 20), compresslevel=9)
    end = gzip.compress(b"\0" * 10240)  # end-of-archive blocks and record padding
    return gzip.compress(info.tobuf(tarfile.GNU_FORMAT)) + mib * (unpacked >> 20) + end


def _base256(value: int) -> bytes:
    return b"\x80" + value.to_bytes(11, "big")  # GNU's encoding for numbers past 8**11


def sparse_tar(apparent: int = 1 << 40, data: bytes = b"x" * 512) -> bytes:
    """An old-GNU sparse member ('S'): ``data`` stored at the end of a file of
    ``apparent`` bytes, the rest a hole."""
    info = tarfile.TarInfo("disk.img")
    info.type = tarfile.GNUTYPE_SPARSE
    info.size = len(data)
    info.mode = 0o644
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[386:398] = _base256(apparent - len(data))  # first sparse entry: offset
    header[398:410] = _base256(len(data))  # and length
    header[482] = 0  # no extension blocks
    header[483:495] = _base256(apparent)  # the real (apparent) size
    header[148:156] = b" " * 8
    header[148:155] = b"%06o\0" % sum(header)
    padded = data + b"\0" * (-len(data) % 512)
    return bytes(header) + padded + b"\0" * 1024


def many_entries(n: int) -> bytes:
    return tar_of(regular(f"app/f{i:06d}", b"") for i in range(n))
