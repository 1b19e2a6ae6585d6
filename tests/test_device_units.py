"""Unit tests of the device client's pure logic: configuration, tar checks, state machine,
outbox, store, policy and backoff. No broker, no network."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from device_client.config import ConfigError, PolicyConfig, Window, load_config, parse_config
from device_client.errors import UpdateError
from device_client.handlers.directory import (
    UnsafeMemberError,
    check_member,
    switch_current,
    unpack,
)
from device_client.jobs.policy import install_blocked
from device_client.jobs.states import CANCELABLE, Job, JobState, TransitionError, check_transition
from device_client.store import AgentState, StateStore
from device_client.transport.outbox import MAX_PROGRESS_BACKLOG, Kind, Outbox
from fleetpush_common.backoff import Backoff
from fleetpush_protocol.messages import Ack, Release

ROOT = "ab" * 32


def base_config() -> dict[str, Any]:
    return {
        "device": {"id": "dev-001", "model": "rpi4", "groups": ["canary"], "state_dir": "st"},
        "broker": {"url": "mqtt://127.0.0.1:1883", "username": "dev-001", "password": "pw"},
        "trust": {"root_keys": [ROOT]},
    }


def with_(changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    raw = base_config()
    for table, values in changes.items():
        raw.setdefault(table, {}).update(values)
    return raw


# --- configuration -------------------------------------------------------------------------


def test_minimal_config_has_documented_defaults(tmp_path: Path) -> None:
    c = parse_config(base_config(), base=tmp_path)
    assert c.device.state_dir == tmp_path / "st"
    assert c.broker.port == 1883
    assert not c.broker.tls
    assert c.broker.keepalive_s == 60
    assert c.broker.session_expiry_s == 604800
    assert c.download.max_payload_bytes == 1 << 30
    assert c.install.handler == "directory"
    assert c.install.slots_dir == tmp_path / "st" / "slots"
    assert c.policy.download_ahead
    assert c.trust.root_keys == (bytes.fromhex(ROOT),)


def test_full_example_from_docs_parses(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "device.md").read_text()
    example = doc.split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pw").write_text("secret\n")
    example = example.replace('password_file = "/etc/fleetpush/password"', 'password = "x"')
    path = tmp_path / "device.toml"
    path.write_text(example)
    path.chmod(0o600)
    c = load_config(path)
    assert c.device.id == "dev-001"
    assert c.policy.maintenance_windows == (Window(120, 240),)


@dataclass(frozen=True)
class Bad:
    changes: dict[str, dict[str, Any]]
    message: str


BAD = {
    "bad device id": Bad({"device": {"id": "dev 1"}}, "[device] id:"),
    "bad group": Bad({"device": {"groups": ["a/b"]}}, "[device] groups[0]:"),
    "payload limit zero": Bad(
        {"download": {"max_payload_bytes": 0}}, "[download] max_payload_bytes: must be 1.."
    ),
    "negative bandwidth": Bad({"download": {"bandwidth_bytes_per_s": -1}}, "bandwidth"),
    "string timeout": Bad({"download": {"read_timeout": "30 parsecs"}}, "[download] read_timeout"),
    "bad url": Bad({"broker": {"url": "http://x"}}, "[broker] url:"),
    "no username": Bad({"broker": {"username": None}}, "[broker] username: missing"),
    "tls file on plain url": Bad({"broker": {"ca_file": "ca.pem"}}, "use mqtts://"),
    "short root key": Bad({"trust": {"root_keys": ["abcd"]}}, "[trust] root_keys[0]:"),
    "threshold above keys": Bad({"trust": {"root_threshold": 2}}, "[trust] root_threshold"),
    "unknown handler": Bad({"install": {"handler": "rpm"}}, "[install] handler:"),
    "command without install": Bad({"install": {"handler": "command"}}, "[install] install:"),
    "bad window": Bad({"policy": {"maintenance_windows": ["2-4"]}}, "maintenance_windows[0]"),
    "naive hold": Bad({"policy": {"hold_until": "2026-12-01T00:00:00"}}, "time zone"),
    "unknown key": Bad({"download": {"max_bytes": 1}}, "[download] max_bytes: unknown setting"),
    "keepalive too short": Bad({"broker": {"keepalive": "1s"}}, "[broker] keepalive: must be"),
    "old and new spelling": Bad(
        {"broker": {"keepalive": "1m", "keepalive_s": 60}}, "[broker] keepalive_s: give keepalive"
    ),
    "rebuild memory too small": Bad(
        {"download": {"max_rebuild_memory_bytes": 1000}}, "[download] max_rebuild_memory_bytes"
    ),
    "metered not a bool": Bad({"download": {"metered": "yes"}}, "[download] metered"),
    "bad metered window": Bad(
        {"download": {"metered_windows": ["soon"]}}, "[download] metered_windows[0]"
    ),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_invalid_config_names_the_field(tmp_path: Path, case: Bad) -> None:
    raw = with_(case.changes)
    for table, values in case.changes.items():
        for k, v in values.items():
            if v is None:
                del raw[table][k]
    with pytest.raises(ConfigError) as e:
        parse_config(raw, source="device.toml", base=tmp_path)
    assert str(e.value).startswith("device.toml: [")
    assert case.message in str(e.value)


def test_missing_table_and_bad_toml(tmp_path: Path) -> None:
    raw = base_config()
    del raw["trust"]
    with pytest.raises(ConfigError, match=r"\[trust\]: missing table"):
        parse_config(raw, base=tmp_path)
    path = tmp_path / "device.toml"
    path.write_text("[device\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


def test_password_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    raw = with_({"broker": {"password_file": "pw"}})
    del raw["broker"]["password"]
    c = parse_config(raw, base=tmp_path)
    assert c.broker.password == "s3cret"
    assert "s3cret" not in repr(c.broker)


# --- tar member checks ---------------------------------------------------------------------


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


SAFE = {
    "file": member("bin/app"),
    "dir": member("etc", tarfile.DIRTYPE),
    "dot slash": member("./etc/conf"),
    "relative symlink inside": member("lib/link", tarfile.SYMTYPE, "../bin/app"),
    "hardlink inside": member("bin/copy", tarfile.LNKTYPE, "bin/app"),
}
UNSAFE = {
    "absolute": member("/etc/passwd"),
    "dotdot": member("../escape"),
    "inner dotdot": member("a/../../escape"),
    "symlink out": member("link", tarfile.SYMTYPE, "../../etc"),
    "absolute symlink": member("link", tarfile.SYMTYPE, "/etc/shadow"),
    "hardlink out": member("h", tarfile.LNKTYPE, "../outside"),
    "absolute hardlink": member("h", tarfile.LNKTYPE, "/etc/passwd"),
    "char device": member("dev/null", tarfile.CHRTYPE),
    "block device": member("dev/sda", tarfile.BLKTYPE),
    "fifo": member("fifo", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("info", SAFE.values(), ids=SAFE.keys())
def test_safe_members_pass(info: tarfile.TarInfo) -> None:
    check_member(info)


@pytest.mark.parametrize("info", UNSAFE.values(), ids=UNSAFE.keys())
def test_unsafe_members_are_refused(info: tarfile.TarInfo) -> None:
    with pytest.raises(UnsafeMemberError):
        check_member(info)


def test_unpack_refuses_escape_and_leaves_nothing_outside(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        ok = tarfile.TarInfo("fine")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        tar.addfile(member("link", tarfile.SYMTYPE, "../../outside"))
    payload = tmp_path / "p.tar"
    payload.write_bytes(buf.getvalue())
    with pytest.raises(UpdateError) as e:
        unpack(payload, tmp_path / "slot")
    assert e.value.failure == "payload_invalid"
    assert not (tmp_path.parent / "outside").exists()


def test_unpack_refuses_a_non_tar(tmp_path: Path) -> None:
    payload = tmp_path / "p.tar"
    payload.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(UpdateError) as e:
        unpack(payload, tmp_path / "slot")
    assert e.value.failure == "payload_invalid"


def test_switch_current_is_a_relative_symlink(tmp_path: Path) -> None:
    (tmp_path / "slot-a").mkdir()
    (tmp_path / "slot-b").mkdir()
    switch_current(tmp_path, "slot-a")
    switch_current(tmp_path, "slot-b")
    assert (tmp_path / "current").readlink() == Path("slot-b")
    assert not (tmp_path / ".tmp-current").exists()
    switch_current(tmp_path, None)
    assert not (tmp_path / "current").exists()


# --- state machine -------------------------------------------------------------------------

S = JobState
ALLOWED = [
    (S.NOTIFIED, S.DOWNLOADING), (S.NOTIFIED, S.DEFERRED), (S.DEFERRED, S.DOWNLOADING),
    (S.DOWNLOADING, S.DOWNLOADED), (S.DOWNLOADED, S.INSTALLING), (S.DOWNLOADED, S.DEFERRED),
    (S.DEFERRED, S.INSTALLING), (S.INSTALLING, S.INSTALLED), (S.INSTALLED, S.HEALTH_CHECK),
    (S.HEALTH_CHECK, S.SUCCEEDED), (S.HEALTH_CHECK, S.ROLLED_BACK), (S.INSTALLING, S.ROLLED_BACK),
    (S.DOWNLOADING, S.CANCELED), (S.DOWNLOADING, S.FAILED), (S.HEALTH_CHECK, S.HEALTH_CHECK),
    (S.DOWNLOADING, S.DEFERRED),
]  # fmt: skip
FORBIDDEN = [
    (S.NOTIFIED, S.INSTALLING), (S.DOWNLOADING, S.INSTALLING), (S.INSTALLING, S.CANCELED),
    (S.INSTALLED, S.CANCELED), (S.SUCCEEDED, S.NOTIFIED), (S.FAILED, S.DOWNLOADING),
    (S.NOTIFIED, S.SUCCEEDED), (S.DEFERRED, S.SUCCEEDED), (S.CANCELED, S.DOWNLOADING),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transitions(old: JobState, new: JobState) -> None:
    check_transition(old, new)


@pytest.mark.parametrize(("old", "new"), FORBIDDEN, ids=[f"{a}->{b}" for a, b in FORBIDDEN])
def test_forbidden_transitions(old: JobState, new: JobState) -> None:
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_cancel_only_before_install_and_health_check_is_not_reported() -> None:
    assert S.INSTALLING not in CANCELABLE
    assert S.DOWNLOADED in CANCELABLE
    assert S.HEALTH_CHECK.report_state is None
    assert all(s.report_state is not None for s in S if s is not S.HEALTH_CHECK)


def job(state: JobState = S.NOTIFIED) -> Job:
    return Job("n-1", "r-1", b"\x01notice", state, "p/device/d/report")


def test_job_round_trips_and_advances() -> None:
    j = job().advance(S.DOWNLOADING)
    assert Job.from_map(j.to_map()) == j
    k = j.advance(S.DOWNLOADED).advance(S.INSTALLING, previous_slot="slot-a", new_slot="slot-b")
    assert Job.from_map(k.to_map()) == k
    with pytest.raises(TransitionError):
        k.advance(S.CANCELED)


# --- outbox and store ----------------------------------------------------------------------


def _ack(*ranges: tuple[int, int]) -> Ack:
    return Ack(device_id="dev-1", stored=ranges)


def test_outbox_publishes_only_persisted_entries_in_order_and_keeps_them_until_confirmed() -> None:
    box = Outbox()
    c1 = box.append("t", lambda c: f"r{c}".encode())
    c2 = box.append("t", lambda c: f"r{c}".encode())
    assert (c1, c2) == (1, 2)
    assert box.next_ready() is None  # not on disk yet
    box.mark_persisted()
    first = box.next_ready()
    assert first is not None
    assert first.payload == b"r1"
    box.sent(1)  # the broker's PUBACK: not enough to forget it
    second = box.next_ready()
    assert second is not None
    assert second.counter == 2
    box.sent(2)
    assert box.next_ready() is None
    assert len(box) == 2
    assert box.awaiting() == 1
    assert box.confirm(_ack((1, 1))) == 1
    assert [e.counter for e in box.to_entries()] == [2]


def test_outbox_resends_what_an_ack_left_out_after_rewind() -> None:
    """The broker can drop report 1 and deliver report 2: an ack for 2 confirms only 2."""
    box = Outbox()
    for _ in range(3):
        box.append("t", lambda c: b"r%d" % c)
    box.mark_persisted()
    for c in (1, 2, 3):
        box.sent(c)
    assert box.confirm(_ack((2, 3))) == 2
    assert box.next_ready() is None
    box.rewind()
    again = box.next_ready()
    assert again is not None
    assert (again.counter, again.payload) == (1, b"r1")


def test_outbox_ignores_a_late_puback_after_rewind() -> None:
    box = Outbox()
    for _ in range(2):
        box.append("t", lambda c: b"r%d" % c)
    box.mark_persisted()
    box.rewind()
    box.sent(2)  # PUBACK of a publish from before the rewind
    entry = box.next_ready()
    assert entry is not None
    assert entry.counter == 1


def test_outbox_when_full_drops_progress_then_states_never_outcomes() -> None:
    box = Outbox(max_entries=3)
    box.append("t", lambda c: b"s", kind=Kind.STATE)
    box.append("t", lambda c: b"p", kind=Kind.PROGRESS)
    box.append("t", lambda c: b"o", kind=Kind.OUTCOME)
    box.append("t", lambda c: b"o", kind=Kind.OUTCOME)  # progress 2 goes
    assert [e.counter for e in box.to_entries()] == [1, 3, 4]
    box.append("t", lambda c: b"o", kind=Kind.OUTCOME)  # then state 1
    assert [e.counter for e in box.to_entries()] == [3, 4, 5]
    box.append("t", lambda c: b"o", kind=Kind.OUTCOME)  # outcomes are all kept
    assert [e.counter for e in box.to_entries()] == [3, 4, 5, 6]
    assert box.dropped == 2


def test_outbox_coalesces_unsent_progress_and_skips_it_when_backlogged() -> None:
    box = Outbox()
    box.append("t", lambda c: b"p1", kind=Kind.PROGRESS)
    assert box.append("t", lambda c: b"p2", kind=Kind.PROGRESS) == 1  # replaced, same counter
    assert [e.payload for e in box.to_entries()] == [b"p2"]
    for _ in range(MAX_PROGRESS_BACKLOG):
        box.append("t", lambda c: b"x")
    assert box.append("t", lambda c: b"p", kind=Kind.PROGRESS) == 0
    assert box.append("t", lambda c: b"state") == MAX_PROGRESS_BACKLOG + 2


def test_store_round_trip_keeps_counter_after_outbox_drains(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    state = store.load()
    state.installed = Release(name="app", version="2.0.0")
    state.job = job(S.DOWNLOADING)
    state.outbox.append("t", lambda c: b"r", kind=Kind.OUTCOME)
    store.save(state)
    assert StateStore(tmp_path).load().outbox.to_entries()[0].kind is Kind.OUTCOME
    state.outbox.confirm(_ack((1, 1)))
    store.save(state)
    loaded = store.load()
    assert loaded.job == state.job
    assert loaded.installed == state.installed
    assert len(loaded.outbox) == 0
    assert loaded.outbox.append("t", lambda c: b"r") == 2  # counters never repeat


def test_last_report_of_an_older_agent_is_loaded_as_unconfirmed() -> None:
    """Older agents kept the last broker-acknowledged report aside: it may be lost."""
    box = Outbox.from_list([], 5, {"c": 5, "t": "t", "p": b"r5"})
    box.mark_persisted()
    entry = box.next_ready()
    assert entry is not None
    assert (entry.counter, entry.payload) == (5, b"r5")


def test_corrupt_state_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "state.msgpack").write_bytes(b"\xc1garbage")
    state = StateStore(tmp_path).load()
    assert isinstance(state, AgentState)
    assert (tmp_path / "state.msgpack.corrupt").exists()


def test_rejected_digests_are_bounded() -> None:
    state = AgentState()
    assert state.remember_rejected(b"a")
    assert not state.remember_rejected(b"a")
    for i in range(100):
        state.remember_rejected(bytes([i]) * 32)
    assert len(state.rejected) <= 32


# --- policy and backoff --------------------------------------------------------------------


def local_ts(hour: int, minute: int = 0) -> float:
    return datetime(2026, 6, 1, hour, minute).timestamp()  # naive = device-local time


def test_window_contains_and_wraps_midnight() -> None:
    w = Window(22 * 60, 2 * 60)
    assert w.contains(local_ts(23), tz=None)
    assert w.contains(local_ts(1), tz=None)
    assert not w.contains(local_ts(12), tz=None)
    assert str(w) == "22:00-02:00"


def test_policy_windows_and_hold() -> None:
    policy = PolicyConfig(maintenance_windows=(Window(120, 240),))
    assert install_blocked(policy, local_ts(3)) is None
    blocked = install_blocked(policy, local_ts(5))
    assert blocked is not None
    assert blocked.until == local_ts(2) + 86400  # tomorrow's window
    assert "02:00-04:00" in blocked.reason
    before = install_blocked(policy, local_ts(1))
    assert before is not None
    assert before.until == local_ts(2)
    held = PolicyConfig(hold_until=int(local_ts(12)))
    assert install_blocked(held, local_ts(11)) is not None
    assert install_blocked(held, local_ts(12)) is None
    assert install_blocked(PolicyConfig(), 0) is None


def test_backoff_grows_jittered_and_capped() -> None:
    b = Backoff(base_s=1, cap_s=8)
    delays = [b.next_delay() for _ in range(10)]
    assert all(0 < d <= 8 for d in delays)
    assert delays[0] <= 1
    assert max(delays[5:]) > 1
    b.reset()
    assert b.next_delay() <= 1


async def test_the_health_command_gets_the_slot_in_its_arguments_and_environment(
    tmp_path: Path,
) -> None:
    from device_client.config import HealthConfig
    from device_client.jobs.health import check_health

    slot = str(tmp_path / "slots" / "slot-n1")
    script = 'test "$1" = "$FLEETPUSH_SLOT" && test "$2" = 2.0'
    config = HealthConfig(command=("sh", "-c", script, "sh", "{slot}", "{version}"), timeout_s=10)
    await check_health(config, {"FLEETPUSH_SLOT": slot}, {"slot": slot, "version": "2.0"})
    with pytest.raises(UpdateError):
        await check_health(
            config, {"FLEETPUSH_SLOT": slot}, {"slot": "/elsewhere", "version": "2.0"}
        )
