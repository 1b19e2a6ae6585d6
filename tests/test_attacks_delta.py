"""Attacks on the delta payload path (issue 15), against the real codec and a real agent.

Codec tests feed hostile zstd frames straight to ``fleetpush_protocol.delta``; the agent
tests use the real agent, Mosquitto and HTTP server rig of tests/test_device_delta.py.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
import test_device_agent
import zstandard
from delta_helpers import delta_entry, delta_notice, releases
from device_helpers import wait_for
from test_device_agent import Rig

from device_client.transport.delta_fetch import BaseStore
from fleetpush_protocol import delta as codec
from fleetpush_protocol import tar_delta
from fleetpush_protocol.messages import Delta

rig = test_device_agent.rig
untrusted_rig = test_device_agent.untrusted_rig
start_device = test_device_agent.start_device


# --- the codec: bombs and lying headers ----------------------------------------------------


def _frame(data: bytes, *, content_size: bool, window_log: int | None = None) -> bytes:
    params = zstandard.ZstdCompressionParameters.from_level(
        3, write_content_size=content_size, window_log=window_log or 0
    )
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def test_bomb_without_declared_size_stops_at_max_output() -> None:
    """A frame that does not declare its size and inflates far beyond the signed size is
    cut at ``max_output``: no more than that ever reaches the output."""
    bomb = _frame(b"\0" * (64 << 20), content_size=False)
    assert len(bomb) < 1 << 20
    out = io.BytesIO()
    with pytest.raises(codec.DeltaError):
        codec.apply(b"base", io.BytesIO(bomb), out, max_output=1 << 20, max_memory=1 << 30)
    assert out.tell() <= 1 << 20


def test_declared_size_over_the_signed_size_is_refused_before_decoding() -> None:
    frame = _frame(b"\0" * (4 << 20), content_size=True)
    out = io.BytesIO()
    with pytest.raises(codec.DeltaError, match="rebuilds"):
        codec.apply(b"base", io.BytesIO(frame), out, max_output=1 << 20, max_memory=1 << 30)
    assert out.tell() == 0


def test_huge_window_counts_against_the_memory_limit() -> None:
    """A header asking for a 2 GiB window (and declaring 4 GiB of content, so the content
    size does not cap it) is refused by the memory limit before zstd allocates anything."""
    real = _frame(b"abc" * 1000, content_size=False)
    assert real[4] == 0  # no content size, not single-segment: a window descriptor follows
    fcs = (4 << 30).to_bytes(8, "little")
    frame = real[:4] + bytes([0xC0, 21 << 3]) + fcs + real[6:]  # window 2^(10+21) = 2 GiB
    assert codec.needed_memory(frame[: codec.HEADER_BYTES], 10) >= 1 << 31
    with pytest.raises(codec.DeltaError, match="memory"):
        codec.apply(b"x" * 10, io.BytesIO(frame), io.BytesIO(), max_output=1 << 40,
                    max_memory=512 << 20)  # fmt: skip


def test_frame_without_declared_size_is_refused() -> None:
    """zstd reports an unknown size as 2^64-1, so such a frame never passes max_output."""
    frame = _frame(b"abc", content_size=False)
    with pytest.raises(codec.DeltaError, match="rebuilds"):
        codec.apply(b"x", io.BytesIO(frame), io.BytesIO(), max_output=1 << 48,
                    max_memory=1 << 40)  # fmt: skip


@pytest.mark.parametrize("trailer", ["junk", "frame"])
def test_trailing_data_after_the_delta_is_refused(trailer: str) -> None:
    """Bytes after the first frame never add to the output: the delta is refused."""
    base = os.urandom(4096)
    target = base[:2000] + b"fix" + base[2003:]
    extra = b"junk" if trailer == "junk" else _frame(b"EVIL" * 4096, content_size=True)
    out = io.BytesIO()
    with pytest.raises(codec.DeltaError):
        codec.apply(base, io.BytesIO(codec.make(base, target) + extra), out,
                    max_output=1 << 30, max_memory=1 << 30)  # fmt: skip


_MULTI_FRAME_CHILD = r"""
import io, sys
from fleetpush_protocol import delta as codec
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
base = open(sys.argv[1], "rb").read()
patch = open(sys.argv[2], "rb").read()
class Null(io.RawIOBase):
    def writable(self): return True
    def write(self, b): return len(b)
before = hwm()
try:
    codec.apply(base, io.BytesIO(patch), Null(), max_output=256 << 20, max_memory=8 << 20)
except codec.DeltaError:
    pass
print(hwm() - before)
"""


def test_second_frame_cannot_bypass_the_memory_limit(tmp_path: Path) -> None:
    """VULNERABLE today. ``needed_memory`` reads only the first frame's header, but the
    reader goes on decoding the frames after it (``read_across_frames=False`` does not stop
    ``read()`` at the frame's end). A first frame declaring 1 byte passes an 8 MiB limit;
    a second frame with a 2 GiB window then makes zstd fill a window buffer of up to the
    signed payload size (here 200 MiB) before the size check at the end refuses it.
    Measured in a child process (VmHWM), so the test's own allocations do not count."""
    import subprocess
    import sys

    base = os.urandom(1 << 20)
    first = codec.make(base, base[:1])  # declares 1 byte: needs base + 1
    cobj = zstandard.ZstdCompressor(level=1).compressobj()
    zeros = b"\0" * (1 << 20)
    second = b"".join(cobj.compress(zeros) for _ in range(200)) + cobj.flush()
    assert second[4] == 0  # streaming frame: no size, a window descriptor at byte 5
    second = second[:5] + bytes([21 << 3]) + second[6:]  # window 2 GiB
    assert codec.needed_memory(first[: codec.HEADER_BYTES], len(base)) <= 2 << 20
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "patch").write_bytes(first + second)
    out = subprocess.run(
        [sys.executable, "-c", _MULTI_FRAME_CHILD, str(tmp_path / "base"),
         str(tmp_path / "patch")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    grew = int(out)
    assert grew <= 8 << 20, f"rebuild peak grew {grew >> 20} MiB past an 8 MiB limit"


def test_truncated_header_is_a_delta_error() -> None:
    for head in (b"", b"\x28\xb5", b"not zstd at all, really"):
        with pytest.raises(codec.DeltaError):
            codec.needed_memory(head, 1)


# --- base selection ------------------------------------------------------------------------


def test_base_sha_must_be_32_bytes_so_the_path_is_64_hex_digits(tmp_path: Path) -> None:
    """``base_sha256`` becomes a file name: the protocol only admits 32 bytes, so the name
    is always 64 hex digits inside the base folder (no traversal, no empty name)."""
    import msgspec

    # Decoding the notice (what the device does) enforces the length.
    bad = {"base_sha256": b"../../etc", "method": codec.METHOD, "sha256": b"\0" * 32,
           "size": 1, "urls": ["http://x/y"]}  # fmt: skip
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert(bad, Delta)
    store = BaseStore(tmp_path / "base")
    p = store.path(hashlib.sha256(b"x").digest())
    assert p.parent == tmp_path / "base"
    assert len(p.name) == 64


def test_keep_base_leaves_only_one_base(tmp_path: Path) -> None:
    store = BaseStore(tmp_path / "base")
    for i in range(5):
        f = tmp_path / f"p{i}"
        f.write_bytes(b"payload %d" % i)
        store.keep(f, hashlib.sha256(f.read_bytes()).digest())
    assert len(list((tmp_path / "base").iterdir())) == 1


# --- a real agent: what a superseded delta job leaves behind -------------------------------


@pytest.mark.integration
async def test_superseded_delta_download_leaves_no_files(rig: Rig) -> None:
    """VULNERABLE today. A delta job superseded while its delta downloads must not leave
    the partial delta in the downloads folder (state_dir is the device's disk budget;
    every supersede would otherwise leak up to one delta until the agent restarts)."""
    v1, v2 = releases(1 << 20)
    device = await rig.start_device()
    n1, d1 = rig.signer.notice(
        "dev-001", v1, [rig.server.add("v1.tar", v1)], version="1.0.0", topics=rig.topics
    )
    await rig.publish(d1)
    await rig.reports.wait_state("succeeded", n1.notice_id)
    # A slow delta (padded, so it takes a while; its hash pins the padded bytes): the job is
    # still downloading it when the next notice arrives.
    big = codec.make(v1, v2) + os.urandom(1 << 20)
    entry = delta_entry(v1, big, [rig.server.add("v2.delta", big, rate=32768, chunk=4096)])
    full = rig.server.add("v2.tar", v2)
    n2, d2 = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(d2)
    downloads = device.agent.downloads
    dpart = downloads / f"{n2.notice_id}.delta.part"
    await wait_for(lambda: rig.server.bytes_sent.get("v2.delta", 0) > 0, what="delta sent")
    await wait_for(dpart.exists, what="delta started")
    # A newer release supersedes it (full payload, no delta).
    _, v3 = releases(4096)
    n3, d3 = rig.signer.notice(
        "dev-001", v3, [rig.server.add("v3.tar", v3)], version="3.0.0", topics=rig.topics
    )
    await rig.publish(d3)
    await rig.reports.wait_state("canceled", n2.notice_id)
    await rig.reports.wait_state("succeeded", n3.notice_id)
    left = sorted(p.name for p in downloads.iterdir())
    assert left == [], f"files left behind by the superseded delta job: {left}"


# --- tar-bsdiff: hostile op streams ---------------------------------------------------------

_BASE = bytes(range(256)) * 64  # 16 KiB
_SIGNED = 4096  # the target size the notice signs


def _q(*values: int) -> bytes:
    return b"".join(v.to_bytes(8, "little") for v in values)


def _entry(x: int, y: int, z: int) -> bytes:
    return _q(x, y) + z.to_bytes(8, "little", signed=True)


def _tar_patch(ops: bytes, *, base: int = len(_BASE), target: int = _SIGNED,
               max_member: int = 1 << 20, huge_window: int = 0) -> bytes:  # fmt: skip
    stream = tar_delta.MAGIC + _q(base, target, max_member) + ops
    if not huge_window:
        return zstandard.ZstdCompressor(level=3).compress(stream)
    cobj = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    frame = cobj.compress(stream) + cobj.flush()
    assert frame[4] == 0  # a window descriptor at byte 5
    return frame[:5] + bytes([21 << 3]) + frame[6:]  # window 2^(10+21) = 2 GiB


class _GuardedBase(io.BytesIO):
    """The base file: a read outside it fails the test (the codec must check first)."""

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None
        assert size >= 0
        assert self.tell() + size <= len(_BASE), "read outside the base"
        return super().read(size)


_member_frame = zstandard.ZstdCompressor(
    dict_data=zstandard.ZstdCompressionDict(_BASE[:100], dict_type=zstandard.DICT_TYPE_RAWCONTENT)
).compress(b"A" * 100)

# name, op stream (or a whole patch), header overrides, the error
# fmt: off
TAR_ATTACKS: list[tuple[str, bytes, dict[str, int], str]] = [
    ("copy past the base's end", b"C" + _q(len(_BASE) - 10, 100) + b"E", {}, "outside the base"),
    ("copy at a huge offset", b"C" + _q(1 << 63, 1) + b"E", {}, "outside the base"),
    ("copy wrapping around 2^64", b"C" + _q(10, (1 << 64) - 5) + b"E", {}, "outside the base"),
    ("literal past the signed size", b"L" + _q(_SIGNED + 1) + b"x" * (_SIGNED + 1) + b"E", {},
     "past the signed size"),
    ("copy past the signed size", b"C" + _q(0, _SIGNED + 1) + b"E", {}, "past the signed size"),
    ("declares more than the signed size", b"E", {"target": _SIGNED + 1}, "rebuilds"),
    ("made from another base", b"E", {"base": len(_BASE) - 1}, "another base"),
    ("asks more memory than the limit", b"E", {"max_member": 1 << 40}, "memory"),
    ("unknown op", b"X" + _q(0), {}, "unknown op"),
    ("no end op", b"C" + _q(0, 10), {}, "ends early"),
    ("end op before the declared size", b"C" + _q(0, 10) + b"E", {}, "ended before"),
    ("target copy of bytes not written", b"C" + _q(0, 10) + b"T" + _q(5, 10) + b"E", {},
     "not yet written"),
    ("target copy at a huge offset", b"T" + _q(1 << 62, 1) + b"E", {}, "not yet written"),
    ("bsdiff member outside the base", b"B" + _q(len(_BASE) - 10, 100, 100, 1, 0), {},
     "outside the base"),
    ("bsdiff with 2^40 entries", b"B" + _q(0, 100, 100, 1 << 40, 0), {},
     "over its declared max_member"),
    ("bsdiff extra over max_member", b"B" + _q(0, 100, 100, 1, 1 << 30), {},
     "over its declared max_member"),
    ("bsdiff entry reading before its member",
     b"B" + _q(0, 100, 100, 2, 0) + _entry(10, 0, -20) + _entry(90, 0, 0), {},
     "outside its member"),
    ("bsdiff entry reading past its member", b"B" + _q(0, 100, 200, 1, 0) + _entry(200, 0, 0),
     {}, "outside its member"),
    ("bsdiff entries writing more than the member",
     b"B" + _q(0, 100, 10, 1, 0) + _entry(5, 6, 0), {}, "outside its member"),
    ("bsdiff entries short of the member", b"B" + _q(0, 100, 100, 1, 0) + _entry(50, 0, 0),
     {}, "do not fill"),
    ("bsdiff extra not used up", b"B" + _q(0, 100, 10, 1, 5) + _entry(10, 0, 0), {},
     "do not fill"),
    ("zstd member over max_member", b"Z" + _q(0, 100, 100, 10), {"max_member": 50},
     "over its declared max_member"),
    ("zstd member frame larger than its member", b"Z" + _q(0, 100, 100, 1 << 40), {},
     "larger than its member"),
    ("zstd member frame of another size",
     b"Z" + _q(0, 100, 99, len(_member_frame)) + _member_frame + b"E", {}, "another size"),
    ("zstd member that is not zstd", b"Z" + _q(0, 100, 100, 8) + b"notzstd!" + b"E", {},
     "bad member frame"),
    # Other base bytes rebuild other bytes: the codec cannot tell, the pinned hash does.
    ("zstd member against the wrong base bytes",
     b"Z" + _q(1000, 100, 100, len(_member_frame)) + _member_frame + b"E", {}, "ended before"),
    ("outer window of 2 GiB", b"E", {"huge_window": 1}, "not a valid tar-bsdiff"),
]
# fmt: on


@pytest.mark.parametrize(("name", "ops", "header", "error"), TAR_ATTACKS,
                         ids=[a[0] for a in TAR_ATTACKS])  # fmt: skip
def test_hostile_tar_delta_is_refused_within_bounds(
    name: str, ops: bytes, header: dict[str, int], error: str
) -> None:
    """Every hostile op stream ends in a DeltaError (a fallback to the full payload), never
    reads outside the base and never writes past the signed size."""
    patch = _tar_patch(ops, **header)
    out = io.BytesIO()
    with pytest.raises(codec.DeltaError, match=error):
        tar_delta.apply(_GuardedBase(_BASE), len(_BASE), io.BytesIO(patch), out,
                        max_output=_SIGNED, max_memory=64 << 20)  # fmt: skip
    assert out.tell() <= _SIGNED


def test_data_after_the_tar_delta_is_refused() -> None:
    patch = _tar_patch(b"C" + _q(0, _SIGNED) + b"E")
    for extra in (b"junk", _frame(b"EVIL" * 1024, content_size=True)):
        with pytest.raises(codec.DeltaError):
            tar_delta.apply(io.BytesIO(_BASE), len(_BASE), io.BytesIO(patch + extra),
                            io.BytesIO(), max_output=_SIGNED, max_memory=64 << 20)  # fmt: skip
    rebuilt = io.BytesIO()
    tar_delta.apply(io.BytesIO(_BASE), len(_BASE), io.BytesIO(patch), rebuilt,
                    max_output=_SIGNED, max_memory=64 << 20)  # fmt: skip
    assert rebuilt.getvalue() == _BASE[:_SIGNED]


def test_an_old_device_skips_a_method_it_does_not_know(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device from before tar-bsdiff (it knows only zstd-patch) holding the base passes
    over such a delta, so it fetches the full payload: the notice stays valid for it."""
    from device_client.transport import delta_fetch

    store = BaseStore(tmp_path / "base")
    payload = tmp_path / "p"
    payload.write_bytes(b"base payload")
    sha = hashlib.sha256(b"base payload").digest()
    store.keep(payload, sha)
    entry = Delta(base_sha256=sha, method=codec.TAR_METHOD, sha256=b"\0" * 32, size=1,
                  urls=("http://x/y",))  # fmt: skip
    assert store.find((entry,)) is not None
    monkeypatch.setattr(delta_fetch, "KNOWN_METHODS", frozenset({codec.METHOD}))
    assert store.find((entry,)) is None
