"""A case-folding slot folder is refused at agent start (``device_client/casefold.py``).

The payload checker compares member names byte for byte; on a case-folding folder the
kernel would follow ``A`` to a symlink ``a``. This machine's file systems do not support
case folding (ext4 without the ``casefold`` feature: ``chattr +F`` fails; tmpfs refuses
the ``casefold`` mount option), so the flag is injected: the pure check on the flags
value, the start-up check with a flag reader given, and the real ioctl on a real folder
(which has no such flag here).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from device_helpers import write_config

from device_client.casefold import FS_CASEFOLD_FL, check_slots_dir, is_casefold, read_flags
from device_client.config import ConfigError, load_config
from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

EXTENTS_INDEX = 0x81000  # what ext4 shows for an ordinary folder (lsattr "e")


@pytest.mark.parametrize(
    ("flags", "folds"),
    [
        (0, False),
        (EXTENTS_INDEX, False),
        (FS_CASEFOLD_FL, True),
        (EXTENTS_INDEX | FS_CASEFOLD_FL, True),
        (0xFFFFFFFF, True),
        (0xFFFFFFFF & ~FS_CASEFOLD_FL, False),
    ],
)
def test_the_casefold_flag_is_read_from_the_inode_flags(flags: int, folds: bool) -> None:
    assert is_casefold(flags) is folds


def test_a_slots_dir_that_folds_or_would_inherit_folding_is_refused(tmp_path: Path) -> None:
    slots = tmp_path / "slots"
    slots.mkdir()
    folding = {slots: FS_CASEFOLD_FL | EXTENTS_INDEX, tmp_path: EXTENTS_INDEX}
    problem = check_slots_dir(slots, lambda p: folding[p])
    assert problem is not None
    assert str(slots) in problem
    assert "case-folding" in problem
    assert "'a'" in problem
    # Not made yet: it would inherit the attribute of the folder it is made in.
    later = tmp_path / "later" / "slots"
    inherited = check_slots_dir(later, lambda p: {tmp_path: FS_CASEFOLD_FL}[p])
    assert inherited is not None
    assert f"its folder {tmp_path} is" in inherited
    assert check_slots_dir(slots, lambda p: EXTENTS_INDEX) is None

    def unreadable(folder: Path) -> int:
        raise PermissionError(13, "Permission denied")

    refused = check_slots_dir(slots, unreadable)
    assert refused is not None
    assert "cannot read its attributes" in refused


def test_the_agent_refuses_to_start_on_a_case_folding_slots_dir(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics
) -> None:
    slots = tmp_path / "slots"
    slots.mkdir()
    path = write_config(
        tmp_path / "device.toml", broker=broker, topics=topics, device_id="dev-1",
        password="pw", root_hex="ab" * 32, sections={"install": {"slots_dir": str(slots)}},
    )  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        load_config(path, read_flags=lambda p: FS_CASEFOLD_FL if p == slots else 0)
    message = str(refused.value)
    assert message.startswith("device.toml: [install] slots_dir: ")
    assert "chattr +F" in message
    # The real reader, on this machine's folder: no flag, the agent starts.
    assert not is_casefold(read_flags(slots))
    assert load_config(path).install.slots_dir == slots
