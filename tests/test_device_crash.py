"""SIGKILL the real agent process at the worst moments, restart it, check the truth.

Each test runs ``python -m device_client --config ...`` as a child process, kills it with
SIGKILL while it downloads, installs or health-checks, starts it again on the same state
folder and checks that it ends in a correct state and that the reports tell what happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from device_helpers import (
    REPO,
    AgentProcess,
    PayloadServer,
    ReportCollector,
    Signer,
    make_tar,
    publish,
    wait_for,
    write_config,
)

from fleetpush_protocol.topics import Topics
from orchestrator.broker import MosquittoBroker

pytestmark = pytest.mark.integration

V2 = make_tar({"VERSION": b"2.0.0\n", "bin/app": b"v2" * 1000})
V3 = make_tar({"VERSION": b"3.0.0\n", "bin/app": b"v3" * 1000})


@pytest.fixture
def processes() -> Iterator[list[AgentProcess]]:
    procs: list[AgentProcess] = []
    yield procs
    for p in procs:
        p.kill()


def device_config(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, signer: Signer, **sections: Any
) -> Path:
    password = broker.add_device("dev-001")
    broker.reload()
    return write_config(
        tmp_path / "device.toml", broker=broker, topics=topics, device_id="dev-001",
        password=password, root_hex=signer.root_hex, sections=sections,
    )  # fmt: skip


def spawn(config: Path, procs: list[AgentProcess]) -> AgentProcess:
    p = AgentProcess(config, config.parent / "agent.log")
    p.start()
    procs.append(p)
    return p


def kill_hook(mark: Path) -> None:
    """Hooks run in their own process group and outlive a SIGKILLed agent: end them."""
    with contextlib.suppress(ValueError, ProcessLookupError, FileNotFoundError):
        os.killpg(int(mark.read_text().strip()), signal.SIGKILL)


def current(state: Path) -> str | None:
    link = state / "slots" / "current"
    return os.readlink(link) if link.is_symlink() else None


def assert_truthful(reports: ReportCollector) -> None:
    counters = sorted(r.counter for r in reports.reports)
    assert counters == list(range(1, len(counters) + 1)), counters


async def test_sigkill_during_download_resumes_with_range(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer,
    processes: list[AgentProcess],
) -> None:  # fmt: skip
    signer = Signer()
    payload = make_tar({"big.bin": os.urandom(600_000)})
    config = device_config(tmp_path, broker, topics, signer)
    state = tmp_path / "state-dev-001"
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        agent = spawn(config, processes)
        url = server.add("big.tar", payload, rate=150_000)  # about 4 s
        notice, data = signer.notice("dev-001", payload, [url], topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        part = state / "downloads" / f"{notice.notice_id}.part"
        await wait_for(lambda: part.exists() and part.stat().st_size > len(payload) // 4, 30)
        agent.kill()
        kept = part.stat().st_size
        assert 0 < kept < len(payload)
        spawn(config, processes)
        await reports.wait_state("succeeded", notice.notice_id, within=60)
        resumed = [r for n, r in server.ranges if n == "big.tar" and r]
        assert resumed, "the restarted agent resumed with a Range request"
        assert int(resumed[0].removeprefix("bytes=").rstrip("-")) > 0
        # Bytes lost to the kill are at most what was in flight, not the whole file.
        assert server.bytes_sent["big.tar"] < len(payload) + len(payload) // 2
        assert reports.states(notice.notice_id) == [
            "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
        ]  # fmt: skip
        assert current(state) == f"slot-{notice.notice_id}"
        await wait_for(lambda: len(reports.reports) == max(r.counter for r in reports.reports))
        assert_truthful(reports)


async def test_sigkill_during_install_rolls_back(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer,
    processes: list[AgentProcess],
) -> None:  # fmt: skip
    signer = Signer()
    mark = tmp_path / "hook.pid"
    # post_install runs after `current` switched to the new slot: the worst moment.
    hook = f'if [ "$FLEETPUSH_VERSION" = 3.0.0 ]; then echo $$ > {mark}; exec sleep 60; fi'
    config = device_config(
        tmp_path, broker, topics, signer,
        install={"post_install": ["/bin/sh", "-c", hook]},
    )  # fmt: skip
    state = tmp_path / "state-dev-001"
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        agent = spawn(config, processes)
        v2, data = signer.notice("dev-001", V2, [server.add("v2.tar", V2)], topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        await reports.wait_state("succeeded", v2.notice_id)
        v3, data = signer.notice(
            "dev-001", V3, [server.add("v3.tar", V3)], version="3.0.0", topics=topics
        )
        await publish(broker, topics.device_notice("dev-001"), data)
        await wait_for(lambda: mark.exists() and mark.read_text().strip() != "", 30, "hook")
        agent.kill()
        kill_hook(mark)
        # Killed mid-install: `current` points at a complete slot, old or new, never half.
        slot = current(state)
        assert slot in (f"slot-{v2.notice_id}", f"slot-{v3.notice_id}")
        assert (state / "slots" / slot / "VERSION").exists()
        mark.unlink()
        spawn(config, processes)
        rolled = await reports.wait_state("rolled_back", v3.notice_id, within=30)
        assert rolled.error is not None
        assert rolled.error.code == "interrupted"
        assert rolled.current_version == "2.0.0"
        assert current(state) == f"slot-{v2.notice_id}"
        assert (state / "slots" / "current" / "VERSION").read_bytes() == b"2.0.0\n"
        assert not (state / "slots" / f"slot-{v3.notice_id}").exists()
        assert reports.states(v3.notice_id) == [
            "notified", "downloading", "downloaded", "installing", "rolled_back",
        ]  # fmt: skip
        await wait_for(lambda: len(reports.reports) == max(r.counter for r in reports.reports))
        assert_truthful(reports)


async def test_sigkill_during_health_check_reruns_it(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, server: PayloadServer,
    processes: list[AgentProcess],
) -> None:  # fmt: skip
    signer = Signer()
    mark, killme = tmp_path / "health.pid", tmp_path / "kill-me"
    check = f"if [ -f {killme} ]; then echo $$ > {mark}; exec sleep 60; fi; exit 0"
    config = device_config(
        tmp_path, broker, topics, signer,
        health={"command": ["/bin/sh", "-c", check], "timeout": "2m"},
    )  # fmt: skip
    state = tmp_path / "state-dev-001"
    killme.touch()
    async with ReportCollector(broker, topics) as reports:
        await publish(broker, topics.keyring(1), signer.keyring(1))
        agent = spawn(config, processes)
        notice, data = signer.notice("dev-001", V2, [server.add("v2.tar", V2)], topics=topics)
        await publish(broker, topics.device_notice("dev-001"), data)
        await wait_for(lambda: mark.exists() and mark.read_text().strip() != "", 30, "check")
        agent.kill()
        kill_hook(mark)
        assert "succeeded" not in reports.states(notice.notice_id)
        killme.unlink()
        spawn(config, processes)
        done = await reports.wait_state("succeeded", notice.notice_id, within=30)
        assert done.current_version == "2.0.0"
        assert current(state) == f"slot-{notice.notice_id}"
        # The interrupted check is not a report of its own: the truth is "installed, then
        # (after the re-run) succeeded".
        assert reports.states(notice.notice_id) == [
            "notified", "downloading", "downloaded", "installing", "installed", "succeeded",
        ]  # fmt: skip
        await wait_for(lambda: len(reports.reports) == max(r.counter for r in reports.reports))
        assert_truthful(reports)


async def test_sigterm_exits_cleanly_and_marks_offline(
    tmp_path: Path, broker: MosquittoBroker, topics: Topics, processes: list[AgentProcess],
) -> None:  # fmt: skip
    signer = Signer()
    config = device_config(tmp_path, broker, topics, signer)
    async with ReportCollector(broker, topics) as reports:
        agent = spawn(config, processes)
        await wait_for(lambda: ("dev-001", True) in reports.presence, 30, "online")
        assert agent.terminate() == 0
        await wait_for(lambda: reports.presence[-1] == ("dev-001", False), 10, "offline")


def test_bad_config_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "device.toml"
    bad.write_text('[device]\nid = "dev 1"\nmodel = "m"\nstate_dir = "s"\n')
    result = subprocess.run(
        [sys.executable, "-m", "device_client", "--config", str(bad)],
        capture_output=True, text=True, cwd=REPO, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 2
    assert "device.toml: [device] id:" in result.stderr
    assert "Traceback" not in result.stderr
