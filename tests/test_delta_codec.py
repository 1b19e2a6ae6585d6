"""The delta codec (fleetpush_protocol/delta.py) and ``fleetpush delta make|apply``."""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetpush_protocol import delta
from orchestrator.cli.main import main

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
