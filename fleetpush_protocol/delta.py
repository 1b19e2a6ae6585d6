"""The delta codec: a target payload as a zstd frame that uses the base payload as reference.

Method ``zstd-patch`` is what ``zstd --patch-from`` writes: one zstd frame compressed with
the whole base payload loaded as raw-content reference, a window large enough to reach
across it, and long-distance matching. ``zstd --patch-from=BASE -d`` decodes it and this
module decodes the tool's output, so an operator can check one with the other.
The choice against bsdiff and xdelta3 is measured in benchmarks/delta.py
(docs/performance.md, "Delta payloads").

Both sides share this module so the device never imports the orchestrator. It does no I/O
of its own: callers hand it bytes and binary streams. Memory while applying is the base
(one copy, held by the decoder) plus the frame's window buffer, which zstd caps at the
target's size; ``needed_memory`` tells it before anything is decoded, so a device can
refuse a delta that would not fit and fetch the full payload instead.
"""

from __future__ import annotations

from typing import BinaryIO

import zstandard

__all__ = [
    "METHOD",
    "METHODS",
    "TAR_METHOD",
    "DeltaError",
    "apply",
    "make",
    "needed_memory",
    "window_log_for",
]

METHOD = "zstd-patch"
TAR_METHOD = "tar-bsdiff"  # member by member over a tar payload: fleetpush_protocol/tar_delta.py
METHODS = frozenset({METHOD, TAR_METHOD})
MIN_WINDOW_LOG = 10
MAX_WINDOW_LOG = 31  # zstd's limit on 64-bit hosts (2 GiB)
MAX_SEARCH_LOG = 27  # 2^27-entry hash and chain tables: about 1 GiB for the maker at most
HEADER_BYTES = 18  # the longest zstd frame header
CHUNK = 1 << 20


class DeltaError(ValueError):
    """The delta is not a valid patch for this base, or rebuilds more than allowed.

    A content error: retrying the same bytes cannot help; the caller falls back to the
    full payload.
    """


def window_log_for(base_size: int, target_size: int) -> int:
    """The window ``zstd --patch-from`` picks: one bit above the larger of the two sizes."""
    largest = max(base_size, target_size, 1)
    return max(MIN_WINDOW_LOG, min(MAX_WINDOW_LOG, largest.bit_length() + 1))


def make(base: bytes, target: bytes, *, level: int = 19) -> bytes:
    """A ``zstd-patch`` delta that rebuilds ``target`` from ``base``."""
    window_log = window_log_for(len(base), len(target))
    params = zstandard.ZstdCompressionParameters.from_level(
        level,
        source_size=len(target),
        window_log=window_log,
        enable_ldm=True,
        # Search tables as large as the window: with the reference loaded as a dictionary,
        # long-distance matching does not index it, so only these find matches across a
        # large base (47 MB git pair: 1.04 MB at level 19's own tables, 174 KB with these;
        # the zstd tool's 186 KB). Costs the maker up to ~8 bytes per window byte.
        hash_log=min(window_log, MAX_SEARCH_LOG),
        chain_log=min(window_log, MAX_SEARCH_LOG),
        write_content_size=True,
        write_checksum=True,
        write_dict_id=False,
    )
    reference = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    compressor = zstandard.ZstdCompressor(dict_data=reference, compression_params=params)
    return compressor.compress(target)


def _frame(head: bytes) -> zstandard.FrameParameters:
    try:
        return zstandard.get_frame_parameters(head)
    except zstandard.ZstdError as e:
        raise DeltaError(f"not a zstd-patch delta: {e}") from None


def needed_memory(head: bytes, base_size: int) -> int:
    """Bytes of memory applying the delta whose first bytes are ``head`` will take.

    Raises:
        DeltaError: ``head`` is not the start of a zstd frame.
    """
    frame = _frame(head[:HEADER_BYTES])
    window = frame.window_size
    if frame.content_size > 0:
        window = min(window, frame.content_size)
    return base_size + window


def apply(base: bytes, patch: BinaryIO, out: BinaryIO, *, max_output: int, max_memory: int) -> int:
    """Rebuild the target from ``base`` and the delta read from ``patch`` into ``out``.

    Returns the number of bytes written. The caller checks the pinned hash and size of
    what was written: a valid delta for another target rebuilds that other target.

    Raises:
        DeltaError: the delta is corrupt, made from another base, would rebuild more than
            ``max_output`` bytes, or needs more than ``max_memory`` bytes to apply.
    """
    start = patch.tell()  # a seekable stream: the header is read twice
    head = patch.read(HEADER_BYTES)
    patch.seek(start)
    frame = _frame(head)
    if frame.content_size > max_output:
        raise DeltaError(f"delta rebuilds {frame.content_size} bytes, limit is {max_output}")
    need = needed_memory(head, len(base))
    if need > max_memory:
        raise DeltaError(f"delta needs {need} bytes of memory to apply, limit is {max_memory}")
    reference = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    # The decoder's own window limit, from what may be spent: the check above reads only
    # the first frame's header, and decoding would go on into a second frame asking for
    # a larger window (found by tests/test_attacks_delta.py).
    window_limit = min(1 << MAX_WINDOW_LOG, 1 << max(10, (max_memory - len(base)).bit_length() - 1))
    decompressor = zstandard.ZstdDecompressor(dict_data=reference, max_window_size=window_limit)
    written = 0
    try:
        reader = decompressor.stream_reader(patch, read_across_frames=False)
        with reader:
            while chunk := reader.read(CHUNK):
                written += len(chunk)
                if written > max_output:
                    raise DeltaError(f"delta rebuilds more than {max_output} bytes")
                out.write(chunk)
    except zstandard.ZstdError as e:
        raise DeltaError(f"delta does not apply to this base: {e}") from None
    # An unknown size comes back as 2**64 - 1 and was refused above (over max_output).
    if frame.content_size and written != frame.content_size:
        raise DeltaError("delta ended before its declared size")
    return written
