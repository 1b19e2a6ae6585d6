"""Application holds, the fast tier: the bound arithmetic (pure), the gate's answer parsing
(a hostile-input table), and a real agent on tests/agent_sim.py held and released on the
manual clock, never by sleeping."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_sim import AgentSim, running

from device_client.config import ConfigError, HoldsConfig
from device_client.gate import GateAnswer, ask_gate, parse_answer
from device_client.holds import Hold, Limits, hold_end, limits
from device_client.jobs.runner import DEFERRED_RESAY_S
from fleetpush_common.clock import ManualClock
from fleetpush_protocol.messages import HoldLimits
from fleetpush_sim.release import make_tar

V2 = make_tar({"VERSION": b"2.0.0\n", "bin/app": b"v2" * 100})
URL = "http://payloads.invalid/v2.tar"
T = 1_700_000_000.0


@pytest.mark.parametrize(
    ("for_s", "set_at", "first", "each", "total", "deadline", "expected"),
    [
        (3600, T, T, 7200, 86400, None, (T + 3600, "asked")),
        (9000, T, T, 7200, 86400, None, (T + 7200, "max_each")),
        (3600, T, T - 84000, 7200, 86400, None, (T + 2400, "max_total")),  # gaps count
        (3600, T, T, 7200, 86400, T + 60, (T + 60, "deadline")),  # a security deadline
        (7200, T, T, 7200, 86400, None, (T + 7200, "asked")),  # a tie: as asked
        (3600, T, T - 86400, 7200, 86400, None, (T, "max_total")),  # nothing left
    ],
)
def test_hold_end_is_the_first_bound_reached(  # noqa: PLR0917 - one table row
    for_s: float, set_at: float, first: float, each: float, total: float,
    deadline: float | None, expected: tuple[float, str],
) -> None:  # fmt: skip
    hold = Hold(set_at=set_at, for_s=for_s, reason="r", by="gate")
    assert hold_end(hold, Limits(each, total), first, deadline) == expected


def test_the_notice_only_lowers_the_devices_bounds(tmp_path: Path) -> None:
    sim = AgentSim(tmp_path, holds={"max_each": "2h", "max_total": "6h"})
    lower, _ = sim.signer.notice("dev-001", V2, [URL],
                                    holds=HoldLimits(max_each_s=600, max_total_s=900))  # fmt: skip
    assert limits(sim.config.holds, lower) == Limits(600.0, 900.0)
    higher, _ = sim.signer.notice("dev-001", V2, [URL],
                                  holds=HoldLimits(max_each_s=9**6, max_total_s=9**6))  # fmt: skip
    assert limits(sim.config.holds, higher) == Limits(7200.0, 21600.0)
    plain, _ = sim.signer.notice("dev-001", V2, [URL])
    assert limits(sim.config.holds, plain) == Limits(7200.0, 21600.0)
    urgent, _ = sim.signer.notice("dev-001", V2, [URL],
                                  holds=HoldLimits(max_each_s=0, max_total_s=0))  # fmt: skip
    assert limits(sim.config.holds, urgent).urgent


def test_hold_bounds_are_checked_in_the_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[holds\] max_total"):
        AgentSim(tmp_path, holds={"max_total": "400d"})
    with pytest.raises(ConfigError, match=r"\[holds\]"):
        AgentSim(tmp_path, holds={"max_hold": "1h"})  # an unknown key


@pytest.mark.parametrize(
    ("out", "expected"),
    [
        (b"", GateAnswer(0.0)),
        (b"proceed\n", GateAnswer(0.0)),
        (b"hold 2h call active\n", GateAnswer(7200.0, "call active")),
        (b"hold 90s\nignored\n", GateAnswer(90.0, "")),
    ],
)
def test_gate_answers(out: bytes, expected: GateAnswer) -> None:
    assert parse_answer(out) == expected


@pytest.mark.parametrize(
    "out",
    [b"yes\n", b"hold\n", b"hold forever\n", b"hold 0s\n", b"hold 500ms\n", b"hold -1h\n",
     b"hold 1h \x1b[31mred\n", b"hold 1h " + b"x" * 300 + b"\n", b"\xff\n", b"HOLD 1h\n"],
)  # fmt: skip
def test_gate_answers_that_do_not_parse_are_refused(out: bytes) -> None:
    with pytest.raises(ValueError):  # each says why; the runner proceeds
        parse_answer(out)


async def test_a_hold_on_the_manual_clock_defers_then_ends_at_its_bound(tmp_path: Path) -> None:
    clock = ManualClock(T)
    sim = AgentSim(tmp_path, clock=clock, holds={"max_each": "1h", "max_total": "90m"})
    async with running(sim):
        await sim.trust()
        holds = sim.agent.runner.holds
        until = holds.request(3 * 3600.0, "updating firmware of a sensor", "uid 1000")
        assert until == T + 3600  # cut to max_each before any update is pending
        sim.fetcher.files[URL] = V2
        notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(data)
        deferred = await sim.session.wait_report("deferred", notice.notice_id)
        assert (deferred.hold_reason, deferred.hold_until) == (
            "held by uid 1000: updating firmware of a sensor", int(T + 3600))  # fmt: skip
        clock.advance(2400)
        again = holds.request(3600.0, "still busy", "uid 1000")  # replaces the hold
        assert again == T + 5400  # the total bound (90 min from the first hold) cuts it
        sim.agent.wake()
        await sim.session.wait_report("deferred", notice.notice_id, count=2)
        clock.advance(3000)  # T + 5400: the total bound
        sim.agent.wake()
        installing = await sim.session.wait_report("installing", notice.notice_id)
        assert installing.detail == (
            "held for the longest allowed (1h30m): proceeding despite the hold by uid 1000"
        )
        await sim.session.wait_report("succeeded", notice.notice_id)


@pytest.mark.parametrize(
    ("argv", "note"),
    [
        (["/bin/sh", "-c", "echo 'hold 1h'; exit 1"], "gate hook sh exited 1: proceeding"),
        (["/bin/sh", "-c", "echo maybe"], "gate hook sh: answer 'maybe' is neither"),
        (["/bin/sh", "-c", "kill -9 $$"], "gate hook sh was killed by signal 9"),
        (["/bin/sh", "-c", "exec sleep 30"], "gate hook sh gave no answer within 0.5s"),
        (["/nonexistent/gate"], "gate hook gate could not start"),
    ],
)
async def test_a_broken_gate_means_proceed_and_says_why(argv: list[str], note: str) -> None:
    config = HoldsConfig(gate_command=tuple(argv), gate_timeout_s=0.5)
    answer = await ask_gate(config, {"notice_id": "n-1"})
    assert answer.hold_s == 0.0
    assert answer.note.startswith(note), answer.note


async def test_a_working_gate_reads_the_update_on_stdin(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    config = HoldsConfig(gate_command=("/bin/sh", "-c", f'cat > "{seen}"; echo "hold 5m busy"'))
    answer = await ask_gate(config, {"notice_id": "n-1", "holds": {"held_s": 0}})
    assert answer == GateAnswer(300.0, "busy")
    assert seen.read_text() == '{"notice_id": "n-1", "holds": {"held_s": 0}}'


async def test_a_long_hold_is_said_again_so_the_rollout_does_not_time_the_device_out(
    tmp_path: Path,
) -> None:
    """The orchestrator times out a device silent for device_timeout (1 h by default); a
    hold may last longer, so the deferral is reported again every DEFERRED_RESAY_S."""
    clock = ManualClock(T)
    sim = AgentSim(tmp_path, clock=clock, holds={"max_each": "3h", "max_total": "3h"})
    async with running(sim):
        await sim.trust()
        sim.agent.runner.holds.request(2 * 3600.0, "long job", "uid 1000")
        sim.fetcher.files[URL] = V2
        notice, data = sim.signer.notice("dev-001", V2, [URL], topics=sim.topics)
        await sim.notify(data)
        first = await sim.session.wait_report("deferred", notice.notice_id)
        for n in (2, 3):
            clock.advance(DEFERRED_RESAY_S)
            sim.agent.wake()
            again = await sim.session.wait_report("deferred", notice.notice_id, count=n)
            assert (again.hold_reason, again.hold_until) == (first.hold_reason, first.hold_until)
