"""The ``tar-bsdiff`` delta method: a target tar rebuilt member by member from the base tar.

Payloads are tars in the layout the ``directory`` handler installs, and an update changes
a few members. A whole-file delta (``zstd-patch``) needs the base and a window as large as
the target in memory; this one walks the target tar's bytes as a stream of operations:

- ``C`` copy a range of the base file (a member whose data is unchanged, or a header);
- ``T`` copy a range of the target already written (a member identical to an earlier one:
  a program installed under two paths);
- ``L`` literal bytes (headers that changed, new files);
- ``B`` a member's data as bsdiff's control entries over one base member's data, then its
  extra bytes, then its diff bytes (added byte-wise to the base's), streamed;
- ``Z`` a member's data as a zstd frame with one base member's data as raw dictionary.

The whole op stream is one zstd frame. The layout, all integers little-endian u64 (the
bsdiff seek ``z`` is a signed i64)::

    "FPTARD1\\n" base_size target_size max_member
    ( "C" offset length | "T" offset length | "L" length bytes
    | "B" offset base_length length count extra_length (x y z){count} extra diff
    | "Z" offset base_length length frame_length frame )*  "E"

Applying streams: the base is read by offset, a ``B`` op reads it through a seek per
entry and holds only its entries and extra bytes (bsdiff's blocks kept apart compress
6% better than interleaved), and a ``Z`` op holds one base member and its output. Everything is
untrusted until the rebuilt target's pinned SHA-256 matches, so every length and offset
is checked against the base's size, the declared member bound and the signed target size
before it is used; ``max_member`` (the most one op holds: a ``Z`` op's larger member, a ``B``
op's entries and extra bytes) gives the memory
up front (``needed_memory``), so a device refuses a delta that would not fit before
rebuilding anything. The maker is in ``orchestrator/tar_delta_make.py`` (bsdiff4 is an
orchestrator dependency only). docs/protocol.md has the layout and a test vector.
"""

from __future__ import annotations

import io
import struct
from typing import BinaryIO

import zstandard

from fleetpush_protocol.delta import DeltaError

__all__ = ["MAGIC", "METHOD", "OUTER_WINDOW_LOG", "apply", "is_tar_delta", "needed_memory",
           "read_header"]  # fmt: skip

METHOD = "tar-bsdiff"
MAGIC = b"FPTARD1\n"
OUTER_WINDOW_LOG = 22  # the op stream's zstd window (4 MiB); the maker uses no more
CHUNK = 1 << 16
_U64 = struct.Struct("<Q")
_HEAD = struct.Struct("<8sQQQ")
_ENTRY = struct.Struct("<QQq")
HEADER_BYTES = _HEAD.size


def needed_memory(max_member: int) -> int:
    """Bytes a rebuild holds besides the interpreter: the op stream's window and buffers,
    and for a ``Z`` op one base member, its dictionary copy, the frame and the output."""
    return (1 << OUTER_WINDOW_LOG) + 8 * CHUNK + 4 * max_member


class _Ops:
    """The decompressed op stream, read exactly, never past what was asked."""

    def __init__(self, reader: BinaryIO) -> None:
        self.reader = reader

    def read(self, n: int) -> bytes:
        data = self.reader.read(n)
        while len(data) < n:
            more = self.reader.read(n - len(data))
            if not more:
                raise DeltaError("tar-bsdiff delta ends early")
            data += more
        return data

    def u64(self) -> int:
        return int(_U64.unpack(self.read(8))[0])


def read_header(head: bytes) -> tuple[int, int, int]:
    """``(base_size, target_size, max_member)`` from the first decompressed bytes."""
    if len(head) < HEADER_BYTES:
        raise DeltaError("not a tar-bsdiff delta: short header")
    magic, base_size, target_size, max_member = _HEAD.unpack(head[:HEADER_BYTES])
    if magic != MAGIC:
        raise DeltaError("not a tar-bsdiff delta: bad magic")
    return int(base_size), int(target_size), int(max_member)


def is_tar_delta(patch: BinaryIO) -> bool:
    """Whether the seekable ``patch`` starts like a ``tar-bsdiff`` delta (a ``zstd-patch``
    one does not decode without its base); the position is left where it was."""
    start = patch.tell()
    try:
        decoder = zstandard.ZstdDecompressor(max_window_size=1 << OUTER_WINDOW_LOG)
        with decoder.stream_reader(patch, read_size=CHUNK, closefd=False) as reader:
            return reader.read(len(MAGIC)) == MAGIC
    except zstandard.ZstdError:
        return False
    finally:
        patch.seek(start)


def _add(diff: bytes, old: bytes) -> bytes:
    """``diff + old`` byte-wise modulo 256, 8 bits at a time in one big-integer pass: the
    low 7 bits of each byte sum without reaching the next byte, the top bit is an XOR."""
    if diff.count(0) == len(diff):
        return old
    n = len(diff)
    low, high = int.from_bytes(b"\x7f" * n), int.from_bytes(b"\x80" * n)
    a, b = int.from_bytes(diff), int.from_bytes(old)
    return (((a & low) + (b & low)) ^ ((a ^ b) & high)).to_bytes(n)


class _Rebuild:
    def __init__(self, base: BinaryIO, base_size: int, out: BinaryIO, limits: tuple[int, int]):
        self.base, self.base_size, self.out = base, base_size, out
        self.target_size, self.max_member = limits
        self.written = 0

    def emit(self, data: bytes) -> None:
        if self.written + len(data) > self.target_size:
            raise DeltaError("tar-bsdiff delta writes past the signed size")
        self.out.write(data)
        self.written += len(data)

    def room(self, length: int) -> None:
        if length > self.target_size - self.written:
            raise DeltaError("tar-bsdiff delta writes past the signed size")

    def base_range(self, offset: int, length: int) -> None:
        if offset > self.base_size or length > self.base_size - offset:
            raise DeltaError("tar-bsdiff delta reads outside the base")

    def read_base(self, offset: int, length: int) -> bytes:
        self.base.seek(offset)
        data = self.base.read(length)
        if len(data) != length:
            raise DeltaError("the base file is shorter than it was")
        return data

    def copy(self, ops: _Ops) -> None:
        offset, length = ops.u64(), ops.u64()
        self.base_range(offset, length)
        self.room(length)
        for at in range(offset, offset + length, CHUNK):
            self.emit(self.read_base(at, min(CHUNK, offset + length - at)))

    def again(self, ops: _Ops) -> None:
        offset, length = ops.u64(), ops.u64()
        if offset > self.written or length > self.written - offset:
            raise DeltaError("tar-bsdiff delta copies target bytes not yet written")
        self.room(length)
        for at in range(offset, offset + length, CHUNK):
            self.out.seek(at)
            data = self.out.read(min(CHUNK, offset + length - at))
            self.out.seek(self.written)
            self.emit(data)

    def literal(self, ops: _Ops) -> None:
        length = ops.u64()
        self.room(length)
        while length:
            n = min(CHUNK, length)
            self.emit(ops.read(n))
            length -= n

    def member(self, ops: _Ops) -> tuple[int, int, int]:
        offset, base_length, length = ops.u64(), ops.u64(), ops.u64()
        self.base_range(offset, base_length)
        self.room(length)
        return offset, base_length, length

    def bsdiff(self, ops: _Ops) -> None:
        offset, base_length, length = self.member(ops)
        count, extra_length = ops.u64(), ops.u64()
        if count > length + 1 or count * _ENTRY.size + extra_length > self.max_member:
            raise DeltaError("tar-bsdiff delta: a bsdiff member over its declared max_member")
        entries = list(_ENTRY.iter_unpack(ops.read(count * _ENTRY.size)))
        old, left, extras = 0, length, extra_length
        for x, y, z in entries:  # all checked before any byte is written
            if x > left or y > left - x or y > extras or old < 0 or x > base_length - old:
                raise DeltaError("tar-bsdiff delta: a bsdiff entry outside its member")
            left, extras, old = left - x - y, extras - y, old + x + z
        if left or extras:
            raise DeltaError("tar-bsdiff delta: bsdiff entries do not fill the member")
        extra = ops.read(extra_length)
        old = at = 0
        for x, y, z in entries:
            for done in range(0, x, CHUNK):
                n = min(CHUNK, x - done)
                self.emit(_add(ops.read(n), self.read_base(offset + old + done, n)))
            self.emit(extra[at : at + y])
            old, at = old + x + z, at + y

    def zstd(self, ops: _Ops) -> None:
        offset, base_length, length = self.member(ops)
        frame_length = ops.u64()
        if max(base_length, length) > self.max_member:
            raise DeltaError("tar-bsdiff delta: a member over its declared max_member")
        if frame_length > length + length // 64 + 1024:
            raise DeltaError("tar-bsdiff delta: a zstd member frame larger than its member")
        frame = ops.read(frame_length)
        try:
            params = zstandard.get_frame_parameters(frame)
        except zstandard.ZstdError as e:
            raise DeltaError(f"tar-bsdiff delta: bad member frame: {e}") from None
        if params.content_size != length:
            raise DeltaError("tar-bsdiff delta: member frame declares another size")
        reference = zstandard.ZstdCompressionDict(
            self.read_base(offset, base_length), dict_type=zstandard.DICT_TYPE_RAWCONTENT
        )
        try:
            data = zstandard.ZstdDecompressor(dict_data=reference).decompress(
                frame, max_output_size=length, allow_extra_data=False
            )
        except zstandard.ZstdError as e:
            raise DeltaError(f"tar-bsdiff delta: member does not apply: {e}") from None
        if len(data) != length:
            raise DeltaError("tar-bsdiff delta: member rebuilt to another size")
        self.emit(data)


def apply(
    base: BinaryIO, base_size: int, patch: BinaryIO, out: BinaryIO, *,
    max_output: int, max_memory: int,
) -> int:  # fmt: skip
    """Rebuild the target from the seekable ``base`` (``base_size`` bytes) and the delta
    read from ``patch`` into ``out`` (readable and seekable too: ``T`` ops read it back);
    returns the bytes written. The caller checks the
    pinned hash and size of what was written.

    Raises:
        DeltaError: the delta is corrupt, made from another base, would rebuild more than
            ``max_output`` bytes, or needs more than ``max_memory`` bytes to apply.
    """
    decoder = zstandard.ZstdDecompressor(max_window_size=1 << OUTER_WINDOW_LOG)
    try:
        with decoder.stream_reader(patch, read_size=CHUNK, read_across_frames=False) as reader:
            ops = _Ops(reader)
            declared_base, target_size, max_member = read_header(ops.read(HEADER_BYTES))
            if declared_base != base_size:
                raise DeltaError("tar-bsdiff delta was made from another base (size differs)")
            if target_size > max_output:
                raise DeltaError(f"delta rebuilds {target_size} bytes, limit is {max_output}")
            need = needed_memory(max_member)
            if need > max_memory:
                raise DeltaError(
                    f"delta needs {need} bytes of memory to apply, limit is {max_memory}"
                )
            job = _Rebuild(base, base_size, out, (target_size, max_member))
            steps = {b"C": job.copy, b"T": job.again, b"L": job.literal, b"B": job.bsdiff,
                     b"Z": job.zstd}  # fmt: skip
            while (tag := ops.read(1)) != b"E":
                step = steps.get(tag)
                if step is None:
                    raise DeltaError(f"tar-bsdiff delta: unknown op {tag!r}")
                step(ops)
            if reader.read(1):
                raise DeltaError("tar-bsdiff delta: data after the end op")
    except zstandard.ZstdError as e:
        raise DeltaError(f"not a valid tar-bsdiff delta: {e}") from None
    except io.UnsupportedOperation:
        raise DeltaError("tar-bsdiff needs an output it can read back") from None
    if job.written != target_size:
        raise DeltaError("tar-bsdiff delta ended before its declared size")
    return job.written
