"""The device agent's fast tier: the real agent in memory, no broker and no HTTP server.

``agent_sim.AgentSim`` gives the real ``DeviceAgent`` (trust driver, message router, job
runner, directory handler, state file in a temporary folder) an in-memory session, fetcher
and manual clock. The same paths against a real Mosquitto and HTTP server are in
tests/test_device_agent.py, tests/test_device_crash.py and tests/test_attacks_device.py.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from agent_sim import AgentSim, running

from device_client.jobs.runner import JobRunner
from device_client.jobs.states import Job, JobState
from device_client.store import StateStore
from fleetpush_common.clock import ManualClock
from fleetpush_protocol.messages import FailureCode
from fleetpush_sim.release import make_tar
from fleetpush_sim.signing import flip_signature_bit

V2 = make_tar({"VERSION": b"2.0.0\n", "bin/app": b"v2" * 1000})
V3 = make_tar({"VERSION": b"3.0.0\n", "bin/app": b"v3" * 1000})
URL = "http://payloads.invalid/v2.tar"  # served from memory (agent_sim.MemoryFetcher)
SUCCESS = ["notified", "downloading", "downloaded", "installing", "installed", "succeeded"]


@pytest.fixture
def sim(tmp_path: Path) -> AgentSim:
    return AgentSim(tmp_path / "state")


async def install(sim: AgentSim, payload: bytes, version: str, name: str) -> str:
    """Serve ``payload`` as ``name`` (from memory), notify the device, return the notice id."""
    url = f"http://payloads.invalid/{name}"
    sim.fetcher.files[url] = payload
    notice, data = sim.signer.notice("dev-001", payload, [url], version=version,
                                     topics=sim.topics)  # fmt: skip
    await sim.notify(data)
    await sim.settled()
    return notice.notice_id


async def test_happy_path(sim: AgentSim) -> None:
    async with running(sim):
        await sim.trust()
        nid = await install(sim, V2, "2.0.0", "v2.tar")
        done = await sim.session.wait_report("succeeded", nid)
        assert done.current_version == "2.0.0"
        assert sim.session.states(nid) == SUCCESS
        assert sim.slot() == f"slot-{nid}"
        assert (sim.state_dir / "slots" / "current" / "VERSION").read_bytes() == b"2.0.0\n"
        assert sim.agent.state.job is None
        assert not any(sim.agent.downloads.iterdir())
        counters = sorted(r.counter for r in sim.session.reports)
        assert counters == list(range(1, len(counters) + 1))
        inventory = [p for p in sim.session.published if p.topic.endswith("/inventory")]
        assert len(inventory) == 2  # on connect, and after the install


async def test_messages_are_handled_off_the_receive_loop(sim: AgentSim) -> None:
    async with running(sim):
        await sim.trust()
        url = URL
        sim.fetcher.files[url] = V2
        _, data = sim.signer.notice("dev-001", V2, [url], topics=sim.topics)
        await sim.notify(data)  # returns with the notice queued, not yet handled
        assert sim.agent.state.job is None
        assert sim.session.reports == []
        await sim.settled()
        assert sim.session.states()[-1] == "succeeded"


async def test_hash_mismatch_fails_and_installs_nothing(sim: AgentSim) -> None:
    async with running(sim):
        await sim.trust()
        sim.fetcher.files[URL] = V3  # the wrong bytes behind the signed hash
        notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(data)
        await sim.settled()
        failed = await sim.session.wait_report("failed", notice.notice_id)
        assert failed.error is not None
        assert failed.error.code == "hash_mismatch"
        assert "installing" not in sim.session.states(notice.notice_id)
        assert sim.slot() is None
        assert not any(sim.agent.downloads.iterdir())


async def test_bad_signature_is_rejected_before_any_download(sim: AgentSim) -> None:
    async with running(sim):
        await sim.trust()
        sim.fetcher.files[URL] = V2
        _, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(flip_signature_bit(data))
        await sim.settled()
        rejected = await sim.session.wait_report("rejected")
        assert rejected.error is not None
        assert rejected.error.code == "bad_signature"
        assert sim.fetcher.requests == []
        assert sim.agent.state.job is None


async def test_failed_health_check_rolls_back(tmp_path: Path) -> None:
    check = ["/bin/sh", "-c", 'test "$FLEETPUSH_VERSION" != 3.0.0']
    sim = AgentSim(tmp_path / "state", health={"command": check})
    async with running(sim):
        await sim.trust()
        good = await install(sim, V2, "2.0.0", "v2.tar")
        await sim.session.wait_report("succeeded", good)
        bad = await install(sim, V3, "3.0.0", "v3.tar")
        rolled = await sim.session.wait_report("rolled_back", bad)
        assert rolled.error is not None
        assert rolled.error.code == "health_check_failed"
        assert rolled.current_version == "2.0.0"
        assert sim.slot() == f"slot-{good}"
        assert not (sim.state_dir / "slots" / f"slot-{bad}").exists()
        assert sim.session.states(bad)[-2:] == ["installed", "rolled_back"]


async def test_cancel_stops_a_download(sim: AgentSim) -> None:
    sim.fetcher.gate = asyncio.Event()  # the download stops halfway until the test says
    async with running(sim):
        await sim.trust()
        sim.fetcher.files[URL] = V2
        notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(data)
        await asyncio.wait_for(sim.fetcher.halfway.wait(), 10)
        await sim.notify(sim.signer.cancel("dev-001"))
        await sim.settled()
        assert sim.session.states(notice.notice_id) == ["notified", "downloading", "canceled"]
        assert sim.agent.state.job is None
        assert not any(sim.agent.downloads.iterdir())
        assert sim.slot() is None


async def test_duplicate_notice_does_nothing(sim: AgentSim) -> None:
    async with running(sim):
        await sim.trust()
        url = URL
        sim.fetcher.files[url] = V2
        notice, data = sim.signer.notice("dev-001", V2, [url], topics=sim.topics)
        await sim.notify(data)
        await sim.settled()
        before = len(sim.session.reports)
        await sim.notify(data)  # a retained copy again, after a reconnect
        await sim.notify(data)
        # The barrier: a later notice, handled after the duplicates (one ordered lane).
        barrier, barrier_data = sim.signer.notice("dev-002", V2, [url], topics=sim.topics)
        await sim.notify(barrier_data)
        await sim.settled()
        assert [r.notice_id for r in sim.session.reports[before:]] == [barrier.notice_id]
        assert sim.session.states(notice.notice_id) == SUCCESS
        assert len(sim.fetcher.requests) == 1


async def test_hold_defers_until_the_clock_passes_it(tmp_path: Path) -> None:
    clock = ManualClock()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock.now() + 3600))
    sim = AgentSim(tmp_path / "state", clock=clock,
                   policy={"hold_until": stamp, "download_ahead": False})  # fmt: skip
    async with running(sim):
        await sim.trust()
        sim.fetcher.files[URL] = V2
        notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(data)
        await sim.session.wait_report("deferred", notice.notice_id)
        assert sim.fetcher.requests == []
        sim.clock.advance(3601)
        sim.agent.wake()
        await sim.session.wait_report("succeeded", notice.notice_id)
        assert sim.session.states(notice.notice_id) == [
            "notified", "deferred", "downloading", "downloaded", "installing", "installed",
            "succeeded",
        ]  # fmt: skip


async def test_crash_mid_download_resumes_from_the_partial_file(sim: AgentSim) -> None:
    sim.fetcher.gate = asyncio.Event()
    await sim.start()
    await sim.trust()
    sim.fetcher.files[URL] = V2
    notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
    await sim.notify(data)
    await asyncio.wait_for(sim.fetcher.halfway.wait(), 10)
    await sim.crash()
    sim.fetcher.gate = None
    sim.agent = sim.new_agent()
    async with running(sim):
        await sim.settled()
        await sim.session.wait_report("succeeded", notice.notice_id)
        assert sim.fetcher.requests[-1] == (URL, len(V2) // 2)
        assert sim.slot() == f"slot-{notice.notice_id}"
    # Reports made before the crash and not confirmed go out again, same counters.
    assert sim.session.states(notice.notice_id)[-1] == "succeeded"


# --- a restart finds the job in each persisted state ---------------------------------------


def persist_job(sim: AgentSim, state: JobState, payload: bytes, **changes: object) -> Job:
    """Write a state file whose job is in ``state``, as a crash there would leave it."""
    url = URL
    sim.fetcher.files[url] = payload
    notice, data = sim.signer.notice("dev-001", payload, [url], topics=sim.topics)
    store = StateStore(sim.state_dir, durable=False)
    st = store.load()
    job = Job(
        notice_id=notice.notice_id, rollout_id=notice.rollout_id, notice=data, state=state,
        reply_topic=sim.topics.report("dev-001"), **changes,  # type: ignore[arg-type]
    )  # fmt: skip
    st.job = job
    store.save(st)
    return job


RESUMED = {
    # state left by the crash: the reports the restarted agent makes
    JobState.NOTIFIED: ["downloading", "downloaded", "installing", "installed", "succeeded"],
    JobState.DEFERRED: ["downloading", "downloaded", "installing", "installed", "succeeded"],
    JobState.DOWNLOADING: ["downloaded", "installing", "installed", "succeeded"],
    JobState.DOWNLOADED: ["downloading", "downloaded", "installing", "installed", "succeeded"],
    JobState.INSTALLED: ["succeeded"],
}


def unpacked(sim: AgentSim, slot: str) -> None:
    """The slot an interrupted install left, with ``current`` switched to it."""
    slots = sim.state_dir / "slots"
    (slots / slot).mkdir(parents=True)
    (slots / slot / "VERSION").write_bytes(b"2.0.0\n")
    (slots / "current").symlink_to(slot)


@pytest.mark.parametrize("state", list(RESUMED), ids=lambda s: s.value)
async def test_restart_resumes_the_persisted_job(sim: AgentSim, state: JobState) -> None:
    slot = None
    if state is JobState.INSTALLED:
        slot = "slot-new"
        unpacked(sim, slot)
    job = persist_job(sim, state, V2, new_slot=slot)
    async with running(sim):
        await sim.settled()
        assert sim.session.states(job.notice_id) == RESUMED[state]
        assert sim.agent.state.job is None
        assert sim.agent.state.current_version == "2.0.0"


async def test_restart_after_download_installs_the_verified_file(sim: AgentSim) -> None:
    job = persist_job(sim, JobState.DOWNLOADED, V2)
    (sim.state_dir / "downloads").mkdir(mode=0o700)
    (sim.state_dir / "downloads" / f"{job.notice_id}.payload").write_bytes(V2)
    async with running(sim):
        await sim.settled()
        assert sim.session.states(job.notice_id) == ["installing", "installed", "succeeded"]
        assert sim.fetcher.requests == []  # hashed again from disk, not downloaded again


async def test_restart_mid_install_rolls_back(sim: AgentSim) -> None:
    job = persist_job(sim, JobState.INSTALLING, V2, new_slot="slot-x")
    (sim.state_dir / "slots" / "slot-x").mkdir(parents=True)  # half unpacked
    async with running(sim):
        await sim.settled()
        rolled = await sim.session.wait_report("rolled_back", job.notice_id)
        assert rolled.error is not None
        assert rolled.error.code == FailureCode.INTERRUPTED
        assert sim.slot() is None
        assert not (sim.state_dir / "slots" / "slot-x").exists()


@pytest.mark.parametrize(("attempts", "outcome"), [(1, "succeeded"), (3, "rolled_back")])
async def test_restart_mid_health_check(sim: AgentSim, attempts: int, outcome: str) -> None:
    # max_interrupted is 3: a check interrupted that often is not tried again.
    unpacked(sim, "slot-new")
    job = persist_job(sim, JobState.HEALTH_CHECK, V2, health_attempts=attempts,
                      new_slot="slot-new")  # fmt: skip
    async with running(sim):
        await sim.settled()
        assert sim.session.states(job.notice_id) == [outcome]
        if outcome == "succeeded":
            assert sim.slot() == "slot-new"
        else:
            assert sim.slot() is None  # nothing was installed before: nothing now
            report = sim.session.report(outcome, job.notice_id)
            assert report is not None
            assert report.error is not None
            assert report.error.code == FailureCode.INTERRUPTED


def test_every_state_a_job_can_be_persisted_in_has_one_step() -> None:
    final = {JobState.SUCCEEDED, JobState.FAILED, JobState.ROLLED_BACK, JobState.CANCELED}
    assert set(JobRunner.STEPS) == set(JobState) - final
