"""Application holds on a real device agent (real Mosquitto, real HTTP payload server, the
agent in this process on an injected clock; the ``fleetpush-device hold`` command as a
real process): held through the command and through the gate hook, ended by
``release-hold`` and by the bounds, kept across a restart, refused for an urgent release;
the socket's permission model and a hostile-input table for its protocol."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from device_helpers import REPO, wait_for
from test_device_agent import RELEASE, FakeClock, Rig, rig, start_device, untrusted_rig

from device_client.config import load_config
from device_client.wiring import build_agent
from fleetpush_protocol.messages import HoldLimits

__all__ = ["rig", "start_device", "untrusted_rig"]

pytestmark = pytest.mark.integration

NOBODY = 65534  # uid and gid of nobody / nogroup


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short folder anyone may traverse (pytest's tmp_path is 0700, and a UNIX socket's
    path is at most 107 bytes); the agent makes its own restricted folder inside."""
    d = Path(tempfile.mkdtemp(prefix="fph-", dir="/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def hold_cmd(
    sock: Path, *args: str, user: int | None = None, group: int | None = None
) -> tuple[int, str]:
    """Run ``fleetpush-device ARGS --socket SOCK`` as a real process; (exit code, output)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # As another user: the system Python (the venv's is not theirs to run), and the client
    # module, which needs nothing but the standard library.
    argv = [sys.executable, "-m", "device_client"] if user is None else [
        "/usr/bin/python3", "-m", "device_client.hold_cli"]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, "--socket", str(sock),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env, cwd="/",
        user=user, group=group, extra_groups=[] if user is not None else None,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def holds(sock: Path, **more: object) -> dict[str, dict[str, object]]:
    return {"holds": {"socket": str(sock), "max_each": "2h", "max_total": "6h", **more}}


async def test_a_hold_through_the_command_ends_with_release_hold(rig: Rig, sock_dir: Path) -> None:
    clock = FakeClock(time.time())
    sock = sock_dir / "run" / "hold.sock"
    device = await rig.start_device(sections=holds(sock), clock=clock)
    code, out = await hold_cmd(sock, "hold", "--for", "1h", "--reason", "recording a video")
    assert code == 0, out
    assert out.startswith("held until ")
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)])
    deferred = await rig.reports.wait_state("deferred", notice.notice_id)
    assert deferred.hold_reason == "held by uid 0 (root): recording a video"
    assert deferred.hold_until == int(clock.now + 3600)
    assert device.current() is None
    code, out = await hold_cmd(sock, "hold-status")
    assert code == 0, out
    assert "recording a video" in out
    code, out = await hold_cmd(sock, "release-hold")
    assert (code, out.strip()) == (0, "released")
    installing = await rig.reports.wait_state("installing", notice.notice_id)
    assert installing.detail == "hold by uid 0 (root) released by uid 0 (root)"
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "deferred", "installing", "installed",
        "succeeded",
    ]  # fmt: skip
    assert device.current() == f"slot-{notice.notice_id}"


async def test_a_hold_is_cut_at_its_bound_and_survives_a_restart(rig: Rig, sock_dir: Path) -> None:
    clock = FakeClock(time.time())
    sock = sock_dir / "run" / "hold.sock"
    # The notice caps one hold lower than the device (30 min < 2 h).
    device = await rig.start_device(sections=holds(sock), clock=clock)
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)],
                            holds=HoldLimits(max_each_s=1800, max_total_s=7200))  # fmt: skip
    await rig.reports.wait_state("succeeded", notice.notice_id)  # nothing held it
    code, out = await hold_cmd(sock, "hold", "--for", "5h", "--reason", "surgery")
    assert code == 0, out
    second = await rig.send(RELEASE, [rig.server.add("b.tar", RELEASE)], version="2.0.1",
                            holds=HoldLimits(max_each_s=1800, max_total_s=7200))  # fmt: skip
    deferred = await rig.reports.wait_state("deferred", second.notice_id)
    assert deferred.hold_until == int(clock.now + 1800)  # asked 5h: the notice allows 30 min
    # A restart keeps the hold (hold.json) and the job (deferred): nothing installs.
    device.agent.stop()
    await asyncio.wait_for(device.task, 15)
    again = build_agent(load_config(device.config_path), clock=clock)
    task = asyncio.create_task(again.run())
    try:
        await wait_for(lambda: again.session is not None and again.session.connected.is_set(),
                       15, "agent connected")  # fmt: skip
        code, out = await hold_cmd(sock, "hold-status")
        assert code == 0, out
        assert "surgery" in out
        assert device.current() == f"slot-{notice.notice_id}"
        clock.now += 1800  # the bound is reached: the update proceeds and says why
        again.wake()
        installing = await rig.reports.wait_state("installing", second.notice_id)
        assert installing.detail == (
            "hold by uid 0 (root) cut at the longest one hold may last (30m00s)"
        )
        await rig.reports.wait_state("succeeded", second.notice_id)
        assert device.current() == f"slot-{second.notice_id}"
    finally:
        again.stop()
        await asyncio.wait_for(task, 15)


async def test_the_gate_hook_holds_until_the_total_bound(
    rig: Rig, sock_dir: Path, tmp_path: Path
) -> None:
    clock = FakeClock(time.time())
    asked = tmp_path / "asked.jsonl"
    gate = ["/bin/sh", "-c", f'cat >> "{asked}"; echo >> "{asked}"; echo "hold 2h call active"']
    device = await rig.start_device(sections=holds(sock_dir / "run" / "hold.sock",
                                                   max_total="3h", gate_command=gate),
                                    clock=clock)  # fmt: skip
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)])
    first = await rig.reports.wait_state("deferred", notice.notice_id)
    assert (first.hold_reason, first.hold_until) == ("held by gate: call active",
                                                     int(clock.now + 7200))  # fmt: skip
    told = json.loads(asked.read_text().splitlines()[0])
    assert told["release"] == {"name": "app", "version": "2.0.0"}
    assert told["holds"] == {"max_each_s": 7200.0, "max_total_s": 10800.0, "held_s": 0.0}
    start = clock.now
    clock.now = start + 7200  # the gate's hold ends; asked again, it holds again ...
    device.agent.wake()
    await rig.reports.wait_state("deferred", notice.notice_id)
    await _deferred_count(rig, notice.notice_id, 2)
    again = [r for r in rig.reports.reports if r.notice_id == notice.notice_id
             and r.state.value == "deferred"][-1]  # fmt: skip
    assert again.hold_until == int(start + 10800)  # ... but only to the total bound
    clock.now = start + 10800
    device.agent.wake()
    installing = await rig.reports.wait_state("installing", notice.notice_id)
    assert installing.detail == (
        "held for the longest allowed (3h00m): proceeding despite the hold by gate"
    )
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert len(asked.read_text().splitlines()) == 2  # not asked past the bound


async def _deferred_count(rig: Rig, notice_id: str, n: int) -> None:
    await wait_for(lambda: sum(r.notice_id == notice_id and r.state.value == "deferred"
                               for r in rig.reports.reports) >= n, 30, f"{n} deferred")  # fmt: skip


async def test_an_urgent_release_is_not_held(rig: Rig, sock_dir: Path, tmp_path: Path) -> None:
    clock = FakeClock(time.time())
    sock = sock_dir / "run" / "hold.sock"
    asked = tmp_path / "asked"
    gate = ["/bin/sh", "-c", f'touch "{asked}"; echo "hold 2h busy"']
    await rig.start_device(sections=holds(sock, gate_command=gate), clock=clock)
    code, _ = await hold_cmd(sock, "hold", "--for", "2h", "--reason", "busy")
    assert code == 0
    notice = await rig.send(RELEASE, [rig.server.add("a.tar", RELEASE)],
                            holds=HoldLimits(max_each_s=0, max_total_s=0))  # fmt: skip
    installing = await rig.reports.wait_state("installing", notice.notice_id)
    assert installing.detail == "urgent release: the hold by uid 0 (root) is not honoured"
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert "deferred" not in rig.reports.states(notice.notice_id)
    assert not asked.exists()  # the gate is not even asked


async def test_only_the_owner_and_the_hold_group_may_connect(rig: Rig, sock_dir: Path) -> None:
    private = sock_dir / "private" / "hold.sock"
    umask = os.umask(0)  # the modes must not come from the umask
    try:
        await rig.start_device("dev-001", sections=holds(private))
    finally:
        os.umask(umask)
    assert oct(private.parent.stat().st_mode & 0o777) == "0o700"
    assert oct(private.stat().st_mode & 0o777) == "0o660"
    code, out = await hold_cmd(private, "hold", "--for", "1h", user=NOBODY, group=NOBODY)
    assert code == 3, out
    assert "not allowed to use" in out
    assert "socket_group" in out
    grouped = sock_dir / "grouped" / "hold.sock"
    await rig.start_device("dev-002", sections=holds(grouped, socket_group="nogroup"))
    folder = grouped.parent.stat()
    assert (oct(folder.st_mode & 0o777), folder.st_gid) == ("0o750", NOBODY)
    assert grouped.stat().st_gid == NOBODY
    code, out = await hold_cmd(grouped, "hold", "--for", "1h", "--reason", "app",
                               user=NOBODY, group=NOBODY)  # fmt: skip
    assert code == 0, out
    code, out = await hold_cmd(grouped, "hold-status")
    assert "held by uid 65534 (nobody)" in out, out
    code, out = await hold_cmd(sock_dir / "none" / "hold.sock", "hold-status")
    assert code == 3
    assert "no agent listening" in out


HOSTILE = [
    (b"not json\n", "bad request"),
    (b'{"op": "hold"}\n', "for_s: seconds, 1 to 365 days"),
    (b'{"op": "hold", "for_s": 0}\n', "for_s: seconds"),
    (b'{"op": "hold", "for_s": -5}\n', "for_s: seconds"),
    (b'{"op": "hold", "for_s": 1e400}\n', "bad request"),
    (b'{"op": "hold", "for_s": "2h"}\n', "bad request"),
    (b'{"op": "hold", "for_s": 60, "reason": "a\\u0000b"}\n', "reason: printable"),
    (b'{"op": "hold", "for_s": 60, "reason": "a\\nb"}\n', "reason: printable"),
    (b'{"op": "hold", "for_s": 60, "reason": "' + b"x" * 300 + b'"}\n', "reason: printable"),
    (b'{"op": "hold", "for_s": 60, "by": "root"}\n', "bad request"),  # unknown field
    (b'{"op": "reboot"}\n', "bad request"),
    (b'["hold", 60]\n', "bad request"),
    (b"\xff\xfe\n", "bad request"),
    (b'{"op": "hold", "for_s": 60}', "not one line"),  # no newline, then EOF
    (b'{"op": "hold", "for_s": 60, "reason": "' + b"y" * 2000 + b'"}\n', "longer than 1024"),
]


async def _raw(sock: Path, data: bytes) -> dict[str, object]:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    line = await asyncio.wait_for(reader.readline(), 15)
    writer.close()
    answer = json.loads(line)
    assert isinstance(answer, dict)
    return answer


async def test_hostile_requests_get_an_error_and_change_nothing(rig: Rig, sock_dir: Path) -> None:
    sock = sock_dir / "run" / "hold.sock"
    device = await rig.start_device(sections=holds(sock))
    code, _ = await hold_cmd(sock, "hold", "--for", "1h", "--reason", "before")
    assert code == 0
    state = device.agent.config.device.state_dir / "hold.json"
    before = state.read_bytes()
    for data, error in HOSTILE:
        answer = await _raw(sock, data)
        assert answer["ok"] is False, data
        assert error in str(answer["error"]), (data, answer)
        assert state.read_bytes() == before, data
    status = await _raw(sock, b'{"op": "status"}\n')
    assert status["ok"] is True
    assert isinstance(status["hold"], dict)
    assert status["hold"]["reason"] == "before"
