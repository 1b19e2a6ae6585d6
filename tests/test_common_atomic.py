"""``create_secret``: one winner whole, whatever the filesystem offers, and nothing left
behind (the race itself, between processes: ``test_orch_replica_races``)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetpush_common.atomic import create_secret


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _no_links(code: int) -> object:
    def link(src: object, dst: object) -> None:
        raise OSError(code, os.strerror(code))

    return link


@pytest.mark.parametrize(
    "links", ["hard links", "no hard links (EPERM)", "no hard links (EOPNOTSUPP)"]
)
def test_the_first_secret_wins_whole_0600_in_a_0700_folder(
    tmp_path: Path, umask_000: None, links: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if links != "hard links":
        code = errno.EPERM if "EPERM" in links else errno.EOPNOTSUPP
        monkeypatch.setattr(os, "link", _no_links(code))
    path = tmp_path / "orch" / "url-signing.key"
    assert create_secret(path, b"first") is True
    assert create_secret(path, b"second") is False
    assert path.read_bytes() == b"first"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in path.parent.iterdir()] == ["url-signing.key"]


def test_another_link_error_is_raised_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "link", _no_links(errno.EIO))
    path = tmp_path / "url-signing.key"
    with pytest.raises(OSError, match="Input/output error"):
        create_secret(path, b"first")
    assert list(tmp_path.iterdir()) == []
