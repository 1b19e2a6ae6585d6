"""The directory handler's archive checks and extraction, table-driven, on real files.

Every refused archive must give ``payload_invalid`` naming the member, and leave the new
slot folder empty: the whole member list is judged before anything is written.
"""

from __future__ import annotations

import gzip
import itertools
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from archive_helpers import (
    chain_members,
    gzip_bomb,
    link,
    many_entries,
    regular,
    sparse_tar,
    symlink_chain,
    tar_of,
)

from device_client.config import ConfigError, UnpackLimits, parse_config
from device_client.errors import UpdateError
from device_client.handlers.archive import allowed_bytes, resolve_symlink
from device_client.handlers.extract import check_archive, unpack

DEEP = "a/b/c/d/e/f/g/h/i/j/k/l"


@dataclass
class Bad:
    payload: bytes
    says: str  # part of the message (usually the member's name)
    limits: dict[str, int] = field(default_factory=dict)


def _files(*names: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [regular(n) for n in names]


def _pax_bomb(before: int = 0) -> bytes:
    """A member with one pax header record of 200 KB, after ``before`` tiny files (their
    unused header allowance adds up, so only the cap on one read stops it)."""
    info, data = regular("a")
    info.pax_headers = {"comment": "x" * 200_000}
    return tar_of([*(regular(f"f{i}") for i in range(before)), (info, data)])


def _negative_size() -> bytes:
    """A base-256 size of -1 GiB (it would lower the running total), then a real file."""
    info, _ = regular("neg")
    info.size = -(1 << 30)
    return info.tobuf(tarfile.GNU_FORMAT) + tar_of([regular("big", b"x" * 1024)])


CHAIN_ORDERS = {
    f"symlink chain, order {'+'.join(order)}": Bad(symlink_chain(order), "'t'")
    for order in itertools.permutations(("t", "dirs", "s"))
}
BAD: dict[str, Bad] = {
    **CHAIN_ORDERS,
    "symlink chain without folders": Bad(symlink_chain(("t", "s")), "'t'"),
    "absolute name": Bad(tar_of(_files("/etc/passwd")), "absolute"),
    "dotdot name": Bad(tar_of(_files("../escape")), "'..'"),
    "inner dotdot": Bad(tar_of(_files("a/../../escape")), "'..'"),
    "newline in name": Bad(tar_of(_files("app/ok", "app/evil\nname")), "control character"),
    "ESC in name": Bad(tar_of(_files("app/\x1b[2Jclear")), "control character"),
    "ESC in symlink target": Bad(tar_of([link("l", "x\x1b[0m")]), "control character"),
    "path too long": Bad(
        tar_of(_files("d/" + "x" * 200)), "longer than 128", {"max_path_bytes": 128}
    ),
    "path too deep": Bad(tar_of(_files("a/b/c/d/e")), "deeper than 4", {"max_depth": 4}),
    "component over 255 bytes": Bad(tar_of(_files("x" * 256)), "longer than 255"),
    "too many members": Bad(many_entries(11), "more than 10 members", {"max_members": 10}),
    "total bytes over the limit": Bad(
        tar_of([*_files("a", "b"), regular("c", b"y" * 3000)]), "'c'", {"max_bytes": 2048}
    ),
    "gzip bomb, 1 MB to 1 GiB": Bad(gzip_bomb(), "'zeros.bin'"),
    "sparse file of 1 TiB": Bad(sparse_tar(), "'disk.img'"),
    "hard link to a missing member": Bad(
        tar_of([*_files("a"), link("h", "missing", tarfile.LNKTYPE)]), "'h'"
    ),
    "hard link to a later member": Bad(
        tar_of([link("h", "a", tarfile.LNKTYPE), regular("a")]), "'h'"
    ),
    "hard link to a symlink": Bad(
        tar_of([link("s", "x"), link("h", "s", tarfile.LNKTYPE), regular("h/in")]), "'h'"
    ),
    "device": Bad(tar_of([link("dev", "", tarfile.CHRTYPE)]), "device"),
    "fifo": Bad(tar_of([link("fifo", "", tarfile.FIFOTYPE)]), "FIFO"),
    "unknown type": Bad(tar_of([link("odd", "", b"Z")]), "unsupported"),
    "same name twice": Bad(tar_of(_files("a", "a")), "twice"),
    "file then symlink, same name": Bad(tar_of([regular("a"), link("a", "b")]), "twice"),
    "write below a symlink, link first": Bad(tar_of([link("d", "."), regular("d/x")]), "'d/x'"),
    "write below a symlink, link last": Bad(tar_of([regular("d/x"), link("d", ".")]), "'d/x'"),
    "write below a file": Bad(tar_of([regular("f/x"), regular("f")]), "'f/x'"),
    "symlink loop": Bad(tar_of([link("a", "b"), link("b", "a")]), "loop"),
    "absolute symlink": Bad(tar_of([link("l", "/etc/shadow")]), "absolute"),
    "symlink to the slot's parent": Bad(tar_of([link("up", "..")]), "out of the slot"),
    "symlink out through a sibling link": Bad(
        tar_of([link("x/up", ".."), link("y", "x/up/../escape")]), "'y'"
    ),
    "pax header bomb": Bad(_pax_bomb(), "headers"),
    "pax header bomb after many members": Bad(_pax_bomb(60), "headers of more than"),
    "negative size": Bad(_negative_size(), "negative size"),
    "not a tar": Bad(b"not a tar at all" * 100, "invalid header"),
    "truncated gzip": Bad(
        gzip.compress(tar_of([regular("a", os.urandom(8192))]))[:4000], "corrupt"
    ),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_archive_is_payload_invalid_and_writes_nothing(name: str, tmp_path: Path) -> None:
    case = BAD[name]
    payload = tmp_path / "p.tar"
    payload.write_bytes(case.payload)
    slot = tmp_path / "slots" / "slot"
    slot.parent.mkdir()
    with pytest.raises(UpdateError) as e:
        unpack(payload, slot, UnpackLimits(**case.limits))
    assert e.value.failure == "payload_invalid", e.value
    assert case.says in str(e.value), str(e.value)
    assert list(slot.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.tar", "slots"]


GOOD: dict[str, list[tuple[tarfile.TarInfo, bytes]]] = {
    "files, links and folders": [
        regular("./app/bin/run", b"#!/bin/sh\n"),
        link("app/lib/run", "../bin/run"),
        link("app/copy", "app/bin/run", tarfile.LNKTYPE),
        link("app/current", "lib"),
        link("app/via", "current/run"),
    ],
    "the chain's links, staying inside": [
        *chain_members()["dirs"],
        link("t", f"{DEEP}/s/inside"),
        *chain_members()["s"],
    ],
    "link to the slot itself": [regular("f"), link("root", ".")],
    "folder entries for the root and twice": [
        link(".", "", tarfile.DIRTYPE),
        link("d", "", tarfile.DIRTYPE),
        link("d/", "", tarfile.DIRTYPE),
        regular("d/f"),
    ],
}


@pytest.mark.parametrize("name", list(GOOD))
@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz", "w:bz2"])
def test_good_archive_unpacks(name: str, mode: str, tmp_path: Path) -> None:
    payload = tmp_path / "p.tar"
    payload.write_bytes(tar_of(GOOD[name], mode))
    slot = tmp_path / "slot"
    unpack(payload, slot)
    for member in check_archive(payload):
        path = slot / member.name
        assert path.is_symlink() or path.exists(), member.name
        if path.is_symlink():
            assert path.resolve().is_relative_to(slot.resolve()), member.name


def test_unpacked_modes_lose_setuid_and_group_write(tmp_path: Path) -> None:
    info, data = regular("app/run", b"#!/bin/sh\n")
    info.mode = 0o6777
    plain, _ = regular("app/conf")
    plain.mode = 0o666
    payload = tmp_path / "p.tar"
    payload.write_bytes(tar_of([(info, data), (plain, b"x")]))
    unpack(payload, tmp_path / "slot")
    assert (tmp_path / "slot/app/run").stat().st_mode & 0o7777 == 0o755
    assert (tmp_path / "slot/app/conf").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "slot/app/run").read_bytes() == b"#!/bin/sh\n"


def test_sparse_file_within_the_limits_unpacks_in_full(tmp_path: Path) -> None:
    payload = tmp_path / "p.tar"
    payload.write_bytes(sparse_tar(1 << 20, b"end" + b"\0" * 509))
    unpack(payload, tmp_path / "slot")
    data = (tmp_path / "slot/disk.img").read_bytes()
    assert len(data) == 1 << 20
    assert data[-512:-509] == b"end"
    assert not data[:-512].strip(b"\0")


def test_resolution_follows_links_hop_by_hop() -> None:
    links = {("a", "s"): "..", ("t",): "a/s/../x", ("u",): "a/s/b"}
    assert resolve_symlink(("u",), links) == ("b",)
    with pytest.raises(ValueError, match="out of the slot"):
        resolve_symlink(("t",), links)


def test_ratio_limit_scales_with_the_payload() -> None:
    limits = UnpackLimits(max_bytes=1 << 40, max_ratio=10)
    assert allowed_bytes(limits, 100) == 10 << 20  # under 1 MiB counts as 1 MiB
    assert allowed_bytes(limits, 100 << 20) == 1000 << 20
    assert allowed_bytes(UnpackLimits(max_bytes=5), 1 << 30) == 5


def _config(unpack_table: dict[str, Any]) -> Any:
    raw = {
        "device": {"id": "dev-001", "model": "rpi4", "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-001", "password": "pw"},
        "trust": {"root_keys": ["ab" * 32]},
        "unpack": unpack_table,
    }
    return parse_config(raw, base=Path("/etc/fleetpush"))


def test_unpack_limits_have_defaults_and_bounds() -> None:
    assert _config({}).install.unpack == UnpackLimits()
    assert _config({"max_members": 7}).install.unpack.max_members == 7
    for key, value in [("max_members", 0), ("max_bytes", -1), ("max_path_bytes", 1 << 20),
                       ("max_depth", "deep"), ("max_ratio", 0)]:  # fmt: skip
        with pytest.raises(ConfigError, match=f"\\[unpack\\] {key}"):
            _config({key: value})
