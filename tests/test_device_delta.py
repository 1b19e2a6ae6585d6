"""Delta payloads on a real agent, a real Mosquitto and a real HTTP server (issue 15).

The device rebuilds a release from the payload it kept of the installed one; whatever goes
wrong on that way (no base, a bad delta) falls back to the full payload and says so in a
report's ``detail``, never as a failed update. On a metered link it fetches deltas only.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
import test_device_agent
import test_device_crash
import zstandard
from delta_helpers import delta_entry, delta_notice, releases
from device_helpers import (
    AgentProcess,
    PayloadServer,
    ReportCollector,
    Signer,
    publish,
    wait_for,
)
from test_device_agent import Rig
from test_device_security import advisory

from fleetpush_protocol import delta as codec
from fleetpush_protocol.messages import SECURITY
from fleetpush_protocol.topics import Topics
from orchestrator import tar_delta_make
from orchestrator.broker import MosquittoBroker

# The in-process agent rig of the agent tests, bound here so pytest finds its fixtures.
rig = test_device_agent.rig
untrusted_rig = test_device_agent.untrusted_rig
start_device = test_device_agent.start_device

pytestmark = pytest.mark.integration


async def install_v1(rig: Rig, v1: bytes, device_id: str = "dev-001") -> None:
    notice, data = rig.signer.notice(
        device_id, v1, [rig.server.add("v1.tar", v1)], version="1.0.0", topics=rig.topics
    )
    await rig.publish(data, device_id)
    await rig.reports.wait_state("succeeded", notice.notice_id)


def metered_while(flag: Path) -> dict[str, dict[str, Any]]:
    """Device settings: the link is metered while ``flag`` exists."""
    return {"download": {"metered_command": ["/bin/sh", "-c", f'test -e "{flag}"']}}


async def test_delta_rollout_on_a_metered_link(rig: Rig, tmp_path: Path) -> None:
    """Metered: the delta is fetched at once, the full payload never is."""
    v1, v2 = releases()
    flag = tmp_path / "metered"
    device = await rig.start_device(sections=metered_while(flag))
    await install_v1(rig, v1)  # the first release comes in full, on an unmetered link
    flag.touch()
    patch = codec.make(v1, v2)
    assert len(patch) < len(v2) // 20
    full = rig.server.add("v2.tar", v2)
    # The connection is cut halfway through the delta: it resumes like a payload.
    half = len(patch) // 2
    entry = delta_entry(v1, patch, [rig.server.add("v2.delta", patch, cut_after=half)])
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    done = await rig.reports.wait_state("succeeded", notice.notice_id)
    assert ("v2.delta", f"bytes={half}-") in rig.server.ranges
    assert done.current_version == "2.0.0"
    assert rig.reports.states(notice.notice_id) == [
        "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
    ]  # fmt: skip
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(patch)
    assert isinstance(downloaded.detail, str)
    assert "rebuilt" in downloaded.detail
    assert "v2.tar" not in rig.server.bytes_sent
    assert rig.server.bytes_sent["v2.delta"] == len(patch)
    assert (device.slots / "current" / "VERSION").read_bytes() == b"2.0.0\n"
    # The installed payload is the next base; the old one is gone.
    assert device.agent.deltas is not None
    bases = device.agent.deltas.bases.folder
    assert [p.name for p in bases.iterdir()] == [hashlib.sha256(v2).hexdigest()]
    assert not any(device.agent.downloads.iterdir())


async def test_device_without_the_base_falls_back(rig: Rig) -> None:
    v1, v2 = releases()
    device = await rig.start_device()
    patch = codec.make(v1, v2)
    entry = delta_entry(v1, patch, [rig.server.add("v2.delta", patch)])
    full = rig.server.add("v2.tar", v2)
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    await rig.reports.wait_state("succeeded", notice.notice_id)
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(v2)
    assert isinstance(downloaded.detail, str)
    assert "no delta for a base" in downloaded.detail
    assert "v2.delta" not in rig.server.bytes_sent
    assert device.current() == f"slot-{notice.notice_id}"


@pytest.mark.parametrize("fault", ["corrupt", "other_target", "over_memory"])
async def test_bad_delta_falls_back_to_the_full_payload(rig: Rig, fault: str) -> None:
    """A delta whose own hash is right but which does not rebuild the pinned payload:
    corrupt zstd data, a valid delta to another release, or one that needs more memory
    than the device allows. None of them is a failed update."""
    v1, v2 = releases(1 << 20)
    limit = {"max_rebuild_memory_bytes": 1 << 20}  # the base alone is 1 MiB
    device = await rig.start_device(
        sections={"download": limit} if fault == "over_memory" else None
    )
    await install_v1(rig, v1)
    if fault == "corrupt":
        patch = bytearray(codec.make(v1, v2))
        patch[len(patch) // 2] ^= 0xFF
        bad = bytes(patch)
    elif fault == "other_target":
        bad = codec.make(v1, v2.replace(b"2.0.0\n", b"6.6.6\n"))
    else:
        bad = codec.make(v1, v2)
    entry = delta_entry(v1, bad, [rig.server.add("v2.delta", bad)])
    full = rig.server.add("v2.tar", v2)
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    done = await rig.reports.wait_state("succeeded", notice.notice_id)
    assert done.current_version == "2.0.0"
    assert "failed" not in rig.reports.states(notice.notice_id)
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(bad) + len(v2)
    assert isinstance(downloaded.detail, str)
    assert "fetched the full payload" in downloaded.detail
    assert rig.server.bytes_sent["v2.tar"] == len(v2)
    assert (device.slots / "current" / "VERSION").read_bytes() == b"2.0.0\n"
    assert not any(device.agent.downloads.iterdir())
    if fault == "over_memory":
        assert "memory" in downloaded.detail


async def test_tar_delta_rollout_rebuilds_member_by_member(rig: Rig) -> None:
    """A tar-bsdiff delta: the device streams the rebuild from its kept base and installs."""
    v1, v2 = releases(1 << 20)
    device = await rig.start_device()
    await install_v1(rig, v1)
    patch = tar_delta_make.make(v1, v2)
    assert len(patch) < len(v2) // 100
    entry = delta_entry(v1, patch, [rig.server.add("v2.delta", patch)], method="tar-bsdiff")
    full = rig.server.add("v2.tar", v2)
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    done = await rig.reports.wait_state("succeeded", notice.notice_id)
    assert done.current_version == "2.0.0"
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(patch)
    assert isinstance(downloaded.detail, str)
    assert "rebuilt" in downloaded.detail
    assert "v2.tar" not in rig.server.bytes_sent
    assert (device.slots / "current" / "VERSION").read_bytes() == b"2.0.0\n"
    assert not any(device.agent.downloads.iterdir())


@pytest.mark.parametrize("fault", ["corrupt", "over_memory"])
async def test_bad_tar_delta_falls_back_to_the_full_payload(rig: Rig, fault: str) -> None:
    """A tar-bsdiff delta that is corrupt, or that holds a member larger than the device's
    rebuild memory allows (refused from its header, before anything is rebuilt)."""
    v1, v2 = releases(1 << 20)
    limit = {"max_rebuild_memory_bytes": 1 << 20}
    device = await rig.start_device(
        sections={"download": limit} if fault == "over_memory" else None
    )
    await install_v1(rig, v1)
    patch = tar_delta_make.make(v1, v2)
    if fault == "corrupt":
        broken = bytearray(patch)
        broken[len(broken) // 2] ^= 0xFF
        patch = bytes(broken)
    entry = delta_entry(v1, patch, [rig.server.add("v2.delta", patch)], method="tar-bsdiff")
    full = rig.server.add("v2.tar", v2)
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    done = await rig.reports.wait_state("succeeded", notice.notice_id)
    assert done.current_version == "2.0.0"
    assert "failed" not in rig.reports.states(notice.notice_id)
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(patch) + len(v2)
    assert isinstance(downloaded.detail, str)
    assert "fetched the full payload" in downloaded.detail
    if fault == "over_memory":
        assert "memory" in downloaded.detail
    assert not any(device.agent.downloads.iterdir())


async def test_metered_device_defers_a_full_download(rig: Rig, tmp_path: Path) -> None:
    """``metered_command`` says the link is metered while a flag file exists."""
    flag = tmp_path / "metered"
    flag.touch()
    v1, _ = releases()
    device = await rig.start_device(sections=metered_while(flag))
    notice, data = rig.signer.notice(
        "dev-001", v1, [rig.server.add("v1.tar", v1)], version="1.0.0", topics=rig.topics
    )
    await rig.publish(data)
    deferred = await rig.reports.wait_state("deferred", notice.notice_id)
    assert isinstance(deferred.detail, str)
    assert "metered link" in deferred.detail
    assert rig.server.ranges == []  # not one request for the full payload
    flag.unlink()
    device.agent.wake()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert rig.reports.states(notice.notice_id)[:3] == ["notified", "downloading", "deferred"]
    assert rig.server.bytes_sent["v1.tar"] == len(v1)


# --- a SIGKILL while rebuilding ------------------------------------------------------------

processes = test_device_crash.processes


def low_memory_delta(base: bytes, target: bytes) -> bytes:
    """A valid zstd-patch delta made with level 1's small tables: larger than the codec's,
    but cheap to make in a test for a payload of many megabytes."""
    params = zstandard.ZstdCompressionParameters.from_level(
        1, source_size=len(target), window_log=codec.window_log_for(len(base), len(target)),
        enable_ldm=True, write_content_size=True, write_checksum=True, write_dict_id=False,
    )  # fmt: skip
    reference = zstandard.ZstdCompressionDict(base, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    return zstandard.ZstdCompressor(dict_data=reference, compression_params=params).compress(target)


async def test_sigkill_while_rebuilding_then_restart_ends_truthfully(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer,
    processes: list[AgentProcess],
) -> None:  # fmt: skip
    signer = Signer()
    v1, v2 = releases(48 << 20)  # large enough that rebuilding takes a while
    config = test_device_crash.device_config(tmp_path, broker, topics, signer)
    state = tmp_path / "state-dev-001"
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        agent = test_device_crash.spawn(config, processes)
        first, data = signer.notice(
            "dev-001", v1, [server.add("v1.tar", v1)], version="1.0.0", topics=topics
        )
        await publish(broker, topics.device_notice("dev-001"), data)
        await reports.wait_state("succeeded", first.notice_id, within=60)
        patch = low_memory_delta(v1, v2)
        entry = delta_entry(v1, patch, [server.add("v2.delta", patch)])
        full = server.add("v2.tar", v2)
        notice, data = delta_notice(signer, "dev-001", v2, [full], [entry], topics=topics)
        rebuild = state / "downloads" / f"{notice.notice_id}.rebuild"
        await publish(broker, topics.device_notice("dev-001"), data)
        # The rebuilt file exists only while the rebuild runs: poll for it without yielding
        # to anything slower than a stat, then kill at once.
        await asyncio.to_thread(_wait_for_file, rebuild, 60)
        agent.kill()
        assert rebuild.exists(), "killed while rebuilding"
        assert "downloaded" not in reports.states(notice.notice_id)
        test_device_crash.spawn(config, processes)
        done = await reports.wait_state("succeeded", notice.notice_id, within=60)
        assert done.current_version == "2.0.0"
        assert reports.states(notice.notice_id) == [
            "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
        ]  # fmt: skip
        downloaded = await reports.wait_state("downloaded", notice.notice_id)
        assert isinstance(downloaded.detail, str)
        assert "rebuilt" in downloaded.detail  # the verified delta was kept across the kill
        assert "v2.tar" not in server.bytes_sent
        assert server.bytes_sent["v2.delta"] == len(patch)
        assert (state / "slots" / "current" / "VERSION").read_bytes() == b"2.0.0\n"
        assert sorted(p.name for p in (state / "downloads").iterdir()) == []
        await wait_for(lambda: len(reports.reports) == max(r.counter for r in reports.reports))
        test_device_crash.assert_truthful(reports)


def _wait_for_file(path: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} never appeared")
        time.sleep(0.0005)


def test_the_agent_knows_the_codec_methods_without_importing_it() -> None:
    from device_client.transport.delta_fetch import KNOWN_METHODS

    assert KNOWN_METHODS == codec.METHODS


async def test_a_failed_delta_on_a_metered_link_defers_the_full_payload(
    rig: Rig, tmp_path: Path
) -> None:
    """The fallback is a full download: a metered link holds it like any other, and the
    delta is not tried again once the link is free."""
    v1, v2 = releases()
    flag = tmp_path / "metered"
    device = await rig.start_device(sections=metered_while(flag))
    await install_v1(rig, v1)
    flag.touch()
    bad = bytearray(codec.make(v1, v2))
    bad[len(bad) // 2] ^= 0xFF
    entry = delta_entry(v1, bytes(bad), [rig.server.add("v2.delta", bytes(bad))])
    full = rig.server.add("v2.tar", v2)
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    deferred = await rig.reports.wait_state("deferred", notice.notice_id)
    assert isinstance(deferred.detail, str)
    assert "not used" in deferred.detail
    assert "metered link" in deferred.detail
    assert "v2.tar" not in rig.server.bytes_sent
    flag.unlink()
    device.agent.wake()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    downloaded = await rig.reports.wait_state("downloaded", notice.notice_id)
    assert downloaded.downloaded == len(bad) + len(v2)  # the failed delta is counted too
    assert rig.server.bytes_sent["v2.delta"] == len(bad)  # tried once
    assert rig.server.bytes_sent["v2.tar"] == len(v2)
    assert not any(device.agent.downloads.iterdir())


async def test_a_security_update_is_not_held_by_a_metered_link(rig: Rig, tmp_path: Path) -> None:
    """Urgent releases download on a metered link, in full when no delta applies."""
    flag = tmp_path / "metered"
    flag.touch()
    v1, _ = releases()
    await rig.start_device(sections=metered_while(flag))
    url = rig.server.add("v1.tar", v1)
    notice = await rig.send(v1, [url], update_class=SECURITY, advisory=advisory())
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert "deferred" not in rig.reports.states(notice.notice_id)
    assert rig.server.bytes_sent["v1.tar"] == len(v1)


async def test_a_wake_while_the_metered_check_runs_is_not_lost(rig: Rig, tmp_path: Path) -> None:
    """The link becomes free while the metered-link command is still answering "metered":
    the runner checks again at once instead of sleeping on that stale answer (it slept 60 s,
    the wake cleared after the check: this test's parent above failed that way under load)."""
    v1, v2 = releases()
    flag, pause, started, go = (tmp_path / n for n in ("metered", "pause", "started", "go"))
    script = (
        f'm=1; [ -e "{flag}" ] || m=0; '
        f'if [ -e "{pause}" ]; then touch "{started}"; '
        f'while [ ! -e "{go}" ]; do sleep 0.01; done; fi; [ $m = 1 ]'
    )
    device = await rig.start_device(
        sections={"download": {"metered_command": ["/bin/sh", "-c", script]}}
    )
    await install_v1(rig, v1)
    flag.touch()
    full = rig.server.add("v2.tar", v2)
    other = b"a base this device never had"  # so only the full payload applies
    patch = codec.make(other, v2)
    entry = delta_entry(other, patch, [rig.server.add("v2.delta", patch)])
    notice, data = delta_notice(rig.signer, "dev-001", v2, [full], [entry], topics=rig.topics)
    await rig.publish(data)
    await rig.reports.wait_state("deferred", notice.notice_id)
    pause.touch()
    device.agent.wake()
    await wait_for(started.exists, 30, "a metered check that pauses")
    pause.unlink()
    flag.unlink()  # the paused check already read "metered"
    device.agent.wake()
    go.touch()
    await rig.reports.wait_state("succeeded", notice.notice_id)
    assert "v2.tar" in rig.server.bytes_sent
