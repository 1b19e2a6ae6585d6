"""Making ``tar-bsdiff`` deltas (the format and the applier: fleetpush_protocol/tar_delta.py).

Each target member's data is, in order of preference: a copy of identical data anywhere
in the base (found by SHA-256) or earlier in the target (the same program under two
paths, which a 4 MiB zstd window does not reach across), the smaller of a bsdiff and a
zstd patch against the base member of the same path, or literal bytes. bsdiff wins on
executables whose code shifted (every call displacement changes by a little, which its
byte-wise diff turns into mostly zero bytes), zstd with the member as dictionary on text
and small members; the choice is made per member on the compressed size of each.
Headers are copied from the base when identical, else literal; the whole op stream is
compressed with zstd.

bsdiff's suffix sort takes about 17 bytes of memory per base byte and is O(n log n) in
time, so a member pair larger than ``max_bsdiff_member`` (``[deltas]
max_bsdiff_member_bytes``) is patched with zstd only: the orchestrator's peak memory for
one delta stays about 17x that bound plus the two payloads.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from collections.abc import Iterator

import bsdiff4.core  # type: ignore[import-untyped]
import zstandard

from fleetpush_protocol import delta as zstd_delta
from fleetpush_protocol import tar_delta

__all__ = ["NotATarError", "make"]

_SIGN = 1 << 63
_Q3 = struct.Struct("<QQQ")
_RANGE_LIMIT = 1 << 20  # at most this many members: more is not a payload the handler installs


class NotATarError(ValueError):
    """The payload is not a plain tar: only ``zstd-patch`` applies."""


def _data_ranges(data: bytes) -> list[tuple[str, int, int]]:
    """``(name, start, end)`` of each regular member's data, in file order."""
    ranges: list[tuple[str, int, int]] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar:
                if m.isreg() and not m.issparse() and m.size > 0:
                    ranges.append((m.name, m.offset_data, m.offset_data + m.size))
                if len(ranges) > _RANGE_LIMIT:
                    raise NotATarError("too many members")
    except tarfile.TarError as e:
        raise NotATarError(f"not a tar: {e}") from None
    last = 0
    for _, start, end in ranges:
        if start < last or end > len(data):
            raise NotATarError("tar members out of order")
        last = end
    return ranges


def _gaps(ranges: list[tuple[str, int, int]], size: int) -> Iterator[tuple[str | None, int, int]]:
    """The bytes between member data (headers, padding, data-less members), each keyed by
    the member whose data follows it (``None``: the archive's end)."""
    last = 0
    for name, start, end in ranges:
        yield name, last, start
        last = end
    yield None, last, size


class _Ops:
    """The op stream, with adjacent copies and literals merged."""

    def __init__(self) -> None:
        self.out = io.BytesIO()
        self.copy_at = self.copy_len = 0
        self.literal = bytearray()

    def _flush(self) -> None:
        if self.copy_len:
            self.out.write(b"C" + struct.pack("<QQ", self.copy_at, self.copy_len))
            self.copy_len = 0
        if self.literal:
            self.out.write(b"L" + struct.pack("<Q", len(self.literal)) + self.literal)
            self.literal = bytearray()

    def copy(self, at: int, length: int) -> None:
        if self.literal or self.copy_at + self.copy_len != at:
            self._flush()
            self.copy_at = at
        self.copy_len += length

    def again(self, at: int, length: int) -> None:
        self._flush()
        self.out.write(b"T" + struct.pack("<QQ", at, length))

    def add_literal(self, data: bytes) -> None:
        if self.copy_len:
            self._flush()
        self.literal += data

    def raw(self, op: bytes) -> None:
        self._flush()
        self.out.write(op)

    def finish(self) -> bytes:
        self._flush()
        self.out.write(b"E")
        return self.out.getvalue()


def _bsdiff_op(at: int, old: bytes, new: bytes) -> tuple[bytes, int] | None:
    """The ``B`` op and the bytes it holds on the device (entries and extra bytes)."""
    control, diff, extra = bsdiff4.core.diff(old, new)
    if len(control) % 24 or len(control) > len(new):
        return None  # a tiny member: more control than data is never the smaller patch
    entries = []
    for x, y, z in _Q3.iter_unpack(control):
        if x & _SIGN or y & _SIGN:
            return None
        entries.append(struct.pack("<QQq", x, y, -(z & ~_SIGN) if z & _SIGN else z))
    head = struct.pack("<QQQQQ", at, len(old), len(new), len(entries), len(extra))
    return b"B" + head + b"".join(entries) + extra + diff, len(control) + len(extra)


def _zstd_op(at: int, old: bytes, new: bytes, level: int) -> tuple[bytes, int]:
    window_log = zstd_delta.window_log_for(len(old), len(new))
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(new), window_log=window_log, enable_ldm=True,
        hash_log=min(window_log, zstd_delta.MAX_SEARCH_LOG),
        chain_log=min(window_log, zstd_delta.MAX_SEARCH_LOG),
        write_content_size=True, write_checksum=False, write_dict_id=False,
    )  # fmt: skip
    reference = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    frame = zstandard.ZstdCompressor(dict_data=reference, compression_params=params).compress(new)
    return b"Z" + struct.pack("<QQQQ", at, len(old), len(new), len(frame)) + frame, max(
        len(old), len(new)
    )


def make(
    base: bytes, target: bytes, *, level: int = 19, max_bsdiff_member: int = 32 << 20
) -> bytes:
    """A ``tar-bsdiff`` delta that rebuilds ``target`` from ``base``.

    Raises:
        NotATarError: either payload is not a plain tar.
    """
    base_ranges, target_ranges = _data_ranges(base), _data_ranges(target)
    by_hash = {hashlib.sha256(base[s:e]).digest(): (s, e) for _, s, e in base_ranges}
    by_name = {name: (s, e) for name, s, e in base_ranges}
    base_gaps = {name: (s, e) for name, s, e in _gaps(base_ranges, len(base))}
    small = zstandard.ZstdCompressor(level=level)
    ops, max_member = _Ops(), 0
    written: dict[bytes, int] = {}  # changed member data already in the target, by hash
    data_at = {start: (name, end) for name, start, end in target_ranges}
    for name, start, end in _gaps(target_ranges, len(target)):
        gap = target[start:end]
        if name in base_gaps and base[slice(*base_gaps[name])] == gap:
            ops.copy(base_gaps[name][0], end - start)
        elif gap:
            ops.add_literal(gap)
        if name is None:
            break
        data_end = data_at[end][1]
        new = target[end:data_end]
        digest = hashlib.sha256(new).digest()
        if digest in by_hash:
            s, e = by_hash[digest]
            ops.copy(s, e - s)
            continue
        if digest in written:
            ops.again(written[digest], len(new))
            continue
        written[digest] = end
        if name not in by_name:
            ops.add_literal(new)
            continue
        s, e = by_name[name]
        old = base[s:e]
        op, holds = _best(s, old, new, level=level, cap=max_bsdiff_member, small=small)
        if not op:
            ops.add_literal(new)
            continue
        ops.raw(op)
        max_member = max(max_member, holds)
    head = struct.pack("<8sQQQ", tar_delta.MAGIC, len(base), len(target), max_member)
    stream = head + ops.finish()
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(stream), window_log=min(tar_delta.OUTER_WINDOW_LOG,
        max(10, len(stream).bit_length())), write_content_size=True, write_checksum=True,
    )  # fmt: skip
    return zstandard.ZstdCompressor(compression_params=params).compress(stream)


def _best(
    at: int, old: bytes, new: bytes, *, level: int, cap: int, small: zstandard.ZstdCompressor
) -> tuple[bytes, int]:
    """The op for one changed member (``b""``: a literal) and the bytes it holds on the
    device; the smallest by each one's compressed size."""
    choices: list[tuple[int, bytes, int]] = [(len(small.compress(new)), b"", 0)]
    z, holds = _zstd_op(at, old, new, level)
    choices.append((len(z), z, holds))
    if max(len(old), len(new)) <= cap and (b := _bsdiff_op(at, old, new)) is not None:
        choices.append((len(small.compress(b[0])), *b))
    choices.sort(key=lambda c: c[0])
    return choices[0][1], choices[0][2]
