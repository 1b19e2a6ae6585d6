"""The delta codecs (fleetpush_protocol/delta.py, tar_delta.py), ``fleetpush delta make|apply``."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner

from fleetpush_protocol import delta, tar_delta
from fleetpush_sim.release import make_tar
from orchestrator import tar_delta_make
from orchestrator.cli.main import main
from orchestrator.config_deltas import DeltaConfig
from orchestrator.deltas import applied, smallest

BIG = 1 << 30


def _pair(size: int = 200_000, seed: int = 1) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    base = bytearray(rng.randbytes(size))
    target = bytearray(base)
    for _ in range(20):  # a few scattered edits, as a security fix makes
        at = rng.randrange(size - 64)
        target[at : at + 16] = rng.randbytes(16)
    target += rng.randbytes(1000)
    return bytes(base), bytes(target)


def _apply(base: bytes, patch: bytes, **limits: int) -> bytes:
    out = io.BytesIO()
    delta.apply(
        base,
        io.BytesIO(patch),
        out,
        max_output=limits.get("max_output", BIG),
        max_memory=limits.get("max_memory", BIG),
    )
    return out.getvalue()


def test_round_trip_and_small() -> None:
    base, target = _pair()
    patch = delta.make(base, target)
    assert _apply(base, patch) == target
    assert len(patch) < len(target) // 20  # random bytes: only the reference explains them


@pytest.mark.parametrize(
    ("name", "mutate", "limits", "error"),
    [
        ("other base", "base", {}, "does not apply"),
        ("flipped byte", "flip", {}, "does not apply"),
        ("truncated", "truncate", {}, "ended before|does not apply"),
        ("not zstd", "garbage", {}, "not a zstd-patch delta"),
        ("over max_output", None, {"max_output": 1000}, "limit is 1000"),
        ("over max_memory", None, {"max_memory": 1000}, "memory"),
    ],
)
def test_bad_deltas_raise(
    name: str, mutate: str | None, limits: dict[str, int], error: str
) -> None:
    base, target = _pair()
    patch = delta.make(base, target)
    if mutate == "base":
        base = _pair(seed=2)[0]
    elif mutate == "flip":
        middle = len(patch) // 2
        patch = patch[:middle] + bytes([patch[middle] ^ 0xFF]) + patch[middle + 1 :]
    elif mutate == "truncate":
        patch = patch[: len(patch) // 2]
    elif mutate == "garbage":
        patch = b"PK\x03\x04" + patch
    with pytest.raises(delta.DeltaError, match=error):
        _apply(base, patch, **limits)


def test_needed_memory_is_base_plus_capped_window() -> None:
    base, target = _pair()
    patch = delta.make(base, target)
    assert delta.needed_memory(patch[: delta.HEADER_BYTES], len(base)) == len(base) + len(target)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd tool")
def test_interoperates_with_zstd_patch_from(tmp_path: Path) -> None:
    base, target = _pair()
    (tmp_path / "old").write_bytes(base)
    (tmp_path / "new").write_bytes(target)
    ours = tmp_path / "ours.zst"
    ours.write_bytes(delta.make(base, target))
    subprocess.run(
        [
            "zstd",
            "-q",
            "-d",
            "--long=31",
            f"--patch-from={tmp_path / 'old'}",
            str(ours),
            "-o",
            str(tmp_path / "by-tool"),
        ],
        check=True,
    )
    assert (tmp_path / "by-tool").read_bytes() == target
    subprocess.run(
        [
            "zstd",
            "-q",
            "-19",
            f"--patch-from={tmp_path / 'old'}",
            str(tmp_path / "new"),
            "-o",
            str(tmp_path / "tool.zst"),
        ],
        check=True,
    )
    assert _apply(base, (tmp_path / "tool.zst").read_bytes()) == target


def test_cli_make_and_apply(tmp_path: Path) -> None:
    base, target = _pair()
    (tmp_path / "old").write_bytes(base)
    (tmp_path / "new").write_bytes(target)
    runner = CliRunner()
    made = runner.invoke(
        main,
        [
            "delta",
            "make",
            str(tmp_path / "old"),
            str(tmp_path / "new"),
            "--out",
            str(tmp_path / "p"),
            "--json",
        ],
    )
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["method"] == "zstd-patch"
    assert info["delta_bytes"] == os.path.getsize(tmp_path / "p")
    assert info["target_bytes"] == len(target)
    applied = runner.invoke(
        main,
        [
            "delta",
            "apply",
            str(tmp_path / "old"),
            str(tmp_path / "p"),
            "--out",
            str(tmp_path / "rebuilt"),
        ],
    )
    assert applied.exit_code == 0, applied.output
    assert "zstd-patch" in applied.output
    assert (tmp_path / "rebuilt").read_bytes() == target


def test_cli_apply_bad_delta_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "old").write_bytes(b"base")
    (tmp_path / "p").write_bytes(b"not a delta at all")
    result = CliRunner().invoke(
        main,
        [
            "delta",
            "apply",
            str(tmp_path / "old"),
            str(tmp_path / "p"),
            "--out",
            str(tmp_path / "rebuilt"),
        ],
    )
    assert result.exit_code == 1
    assert "not a zstd-patch delta" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old", "p"]


# --- tar-bsdiff: member by member over two tars -------------------------------------------


def _tar_pair(seed: int = 3) -> tuple[bytes, bytes]:
    """Two releases as tars: a program relinked (40 bytes inserted, so every later 4-byte
        displacement moves by 40, as a security rebuild does), a changelog grown by a line, a
        file unchanged, one renamed, one removed, one new, a symlink, and the program again
    under a second path (a copy of target bytes already written)."""
    rng = random.Random(seed)
    code = bytearray(rng.randbytes(60_000))
    relinked = code[:20_000] + rng.randbytes(40) + code[20_000:]
    for at in range(20_040, len(relinked) - 4, 256):
        value = (int.from_bytes(relinked[at : at + 4], "little") + 40) % (1 << 32)
        relinked[at : at + 4] = value.to_bytes(4, "little")
    changelog = b"".join(b"* fixed bug %d in the parser\n" % i for i in range(800))
    same, moved = rng.randbytes(5000), rng.randbytes(7000)
    link = tarfile.TarInfo("bin/app-link")
    link.type, link.linkname = tarfile.SYMTYPE, "app"
    base = make_tar({"VERSION": b"1.0.0\n", "bin/app": bytes(code), "bin/z-copy": bytes(code),
                     "share/same": same, "share/old-name": moved,
                     "share/removed": rng.randbytes(900), "doc/changelog": changelog})  # fmt: skip
    target = make_tar({"VERSION": b"2.0.0\n", "bin/app": bytes(relinked),
                       "bin/z-copy": bytes(relinked), "share/same": same,
                       "share/new-name": moved, "share/added": rng.randbytes(3000),
                       "doc/changelog": b"* fixed CVE-2026-0001\n" + changelog},
                      extra=[link])  # fmt: skip
    return base, target


def _tar_apply(base: bytes, patch: bytes, **limits: int) -> bytes:
    out = io.BytesIO()
    tar_delta.apply(io.BytesIO(base), len(base), io.BytesIO(patch), out,
                    max_output=limits.get("max_output", BIG),
                    max_memory=limits.get("max_memory", BIG))  # fmt: skip
    return out.getvalue()


class _Reads(io.BytesIO):
    """A base file that records the largest single read."""

    largest = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        self.largest = max(self.largest, len(data))
        return data


def test_tar_delta_round_trip_bsdiff_and_zstd_members() -> None:
    base, target = _tar_pair()
    with_bsdiff = tar_delta_make.make(base, target)
    zstd_only = tar_delta_make.make(base, target, max_bsdiff_member=0)  # the per-member cap
    assert _tar_apply(base, with_bsdiff) == target
    assert _tar_apply(base, zstd_only) == target
    # bsdiff turns the moved displacements into mostly zero diff bytes; zstd cannot.
    assert len(with_bsdiff) < len(zstd_only)
    assert len(with_bsdiff) < len(delta.make(base, target))
    assert len(with_bsdiff) < len(target) // 20


def test_tar_delta_reads_the_base_by_offset_in_chunks() -> None:
    """A bsdiff member streams: the base is never read whole, only in bounded chunks, and
    the op holds only bsdiff's entries and extra bytes (far less than the member)."""
    base, target = _tar_pair()
    patch = tar_delta_make.make(base, target)
    with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(patch)) as reader:
        _, _, max_member = tar_delta.read_header(reader.read(tar_delta.HEADER_BYTES))
    assert max_member < 60_000 // 2
    reads = _Reads(base)
    out = io.BytesIO()
    tar_delta.apply(reads, len(base), io.BytesIO(patch), out, max_output=len(target),
                    max_memory=tar_delta.needed_memory(max_member))  # fmt: skip
    assert out.getvalue() == target
    assert reads.largest <= tar_delta.CHUNK


def test_a_member_over_the_memory_limit_is_refused_up_front() -> None:
    """A zstd member holds its base member: the header says how large, before any output."""
    base, target = _tar_pair()
    patch = tar_delta_make.make(base, target, max_bsdiff_member=0)
    out = io.BytesIO()
    with pytest.raises(delta.DeltaError, match="memory"):
        tar_delta.apply(io.BytesIO(base), len(base), io.BytesIO(patch), out,
                        max_output=BIG, max_memory=tar_delta.needed_memory(0))  # fmt: skip
    assert out.tell() == 0


def test_smallest_picks_tar_bsdiff_for_tars_and_zstd_patch_otherwise() -> None:
    config = DeltaConfig()
    base, target = _tar_pair()
    patch, method = smallest(base, target, config)
    assert method == "tar-bsdiff"
    assert applied(method, base, patch, len(target)) == target
    raw_base, raw_target = _pair()
    with pytest.raises(tar_delta_make.NotATarError):
        tar_delta_make.make(raw_base, raw_target)
    patch, method = smallest(raw_base, raw_target, config)
    assert method == "zstd-patch"
    assert _apply(raw_base, patch) == raw_target


def test_tar_method_is_known_to_the_codec_and_sniffed_from_the_patch() -> None:
    base, target = _tar_pair()
    assert tar_delta.METHOD == delta.TAR_METHOD
    assert tar_delta.METHOD in delta.METHODS
    assert tar_delta.is_tar_delta(io.BytesIO(tar_delta_make.make(base, target)))
    assert not tar_delta.is_tar_delta(io.BytesIO(delta.make(base, target)))
    assert not tar_delta.is_tar_delta(io.BytesIO(b"not zstd"))


@pytest.mark.parametrize("method", ["auto", "tar-bsdiff", "zstd-patch"])
def test_cli_make_and_apply_tar_methods(tmp_path: Path, method: str) -> None:
    base, target = _tar_pair()
    (tmp_path / "old").write_bytes(base)
    (tmp_path / "new").write_bytes(target)
    runner = CliRunner()
    args = ["delta", "make", str(tmp_path / "old"), str(tmp_path / "new"),
            "--out", str(tmp_path / "p"), "--method", method, "--json"]  # fmt: skip
    made = runner.invoke(main, args)
    assert made.exit_code == 0, made.output
    expected = "tar-bsdiff" if method == "auto" else method
    assert json.loads(made.output)["method"] == expected
    applied_ = runner.invoke(main, ["delta", "apply", str(tmp_path / "old"), str(tmp_path / "p"),
                                    "--out", str(tmp_path / "rebuilt")])  # fmt: skip
    assert applied_.exit_code == 0, applied_.output
    assert expected in applied_.output
    assert (tmp_path / "rebuilt").read_bytes() == target


def test_cli_tar_method_on_non_tars_is_a_clear_error(tmp_path: Path) -> None:
    base, target = _pair()
    (tmp_path / "old").write_bytes(base)
    (tmp_path / "new").write_bytes(target)
    result = CliRunner().invoke(main, ["delta", "make", str(tmp_path / "old"),
                                       str(tmp_path / "new"), "--out", str(tmp_path / "p"),
                                       "--method", "tar-bsdiff"])  # fmt: skip
    assert result.exit_code == 1
    assert "zstd-patch" in result.output
    assert not (tmp_path / "p").exists()


def test_the_tar_bsdiff_vector_rebuilds_its_target() -> None:
    """docs/protocol/delta-vectors.json: one op of each kind, as the generator writes it
    (compared on the op stream: zstd's compressed bytes may change between versions)."""
    root = Path(__file__).resolve().parent.parent
    vector = json.loads((root / "docs" / "protocol" / "delta-vectors.json").read_text())
    base, patch = bytes.fromhex(vector["base"]), bytes.fromhex(vector["patch"])
    rebuilt = _tar_apply(base, patch)
    assert rebuilt == bytes.fromhex(vector["target"])
    assert hashlib.sha256(rebuilt).hexdigest() == vector["target_sha256"]
    stream = zstandard.ZstdDecompressor().decompress(patch)
    assert stream.hex() == vector["op_stream"]
    assert "".join(op["bytes"] for op in vector["ops"]) == vector["op_stream"][2 * 32 :]
    generated = subprocess.run(
        [sys.executable, str(root / "scripts" / "gen_delta_vectors.py")],
        check=True, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)},
    ).stdout  # fmt: skip
    assert json.loads(generated)["op_stream"] == vector["op_stream"]
