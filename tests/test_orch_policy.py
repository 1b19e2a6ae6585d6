"""Pure orchestrator logic: phases, gates, thresholds, rate limits, windows, URLs, config."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpush_common.units import parse_duration, parse_phases
from fleetpush_common.windows import in_windows, parse_window
from orchestrator.config import ConfigError, parse_config
from orchestrator.payloads import UrlSigner
from orchestrator.rules import (
    PhaseCounts,
    RateLimiter,
    RolloutSpec,
    assign_phases,
    failure_tripped,
    gate_met,
    phase_bounds,
    rate_per_minute,
)

T0 = 1_700_000_000.0  # a Tuesday, 22:13 UTC


@pytest.mark.parametrize(
    ("total", "phases", "expected"),
    [
        (1000, (1, 10, 50, 100), [10, 100, 500, 1000]),
        (3, (1, 10, 50, 100), [1, 1, 2, 3]),
        (0, (10, 100), [0, 0]),
        (7, (100,), [7]),
    ],
    ids=["thousand", "tiny", "empty", "single"],
)
def test_phase_bounds(total: int, phases: tuple[float, ...], expected: list[int]) -> None:
    assert phase_bounds(total, phases) == expected


def test_assign_phases_is_stable_and_complete() -> None:
    ids = [f"d{i}" for i in range(100)]
    a = assign_phases(ids, "r1", (10, 50, 100))
    assert a == assign_phases(reversed(ids), "r1", (10, 50, 100))
    assert sorted(d for d, _, _ in a) == sorted(ids)
    assert [sum(1 for _, _, p in a if p == i) for i in range(3)] == [10, 40, 50]
    assert a != assign_phases(ids, "r2", (10, 50, 100))  # another rollout, another order


def test_gate_ignores_offline_and_needs_share() -> None:
    c = PhaseCounts()
    c.add("succeeded", True, 9)
    c.add("failed", True, 1)
    c.add("sent", False, 5)  # notified while offline: not judged
    assert c.reachable == 10
    assert gate_met(c, 90)
    assert not gate_met(c, 95)
    c.add("pending", False, 1)  # still to notify: counts against the gate
    assert not gate_met(c, 90)
    assert gate_met(PhaseCounts(), 100)  # an empty phase passes


def test_failure_threshold_needs_min_attempts() -> None:
    spec = RolloutSpec(failure_pct=20, min_attempts=5)
    assert not failure_tripped(3, 4, spec)  # 75% but only 4 finished
    assert failure_tripped(2, 5, spec)  # 40% > 20%
    assert not failure_tripped(1, 5, spec)  # 20% is not above 20%


def test_rate_constant_and_exponential() -> None:
    const = RolloutSpec(rate_per_min=60)
    assert rate_per_minute(const, 1000) == 60
    exp = RolloutSpec(rate_per_min=10, rate_mode="exponential", rate_factor=2, rate_every=5,
                      rate_max_per_min=50)  # fmt: skip
    assert [rate_per_minute(exp, n) for n in (0, 4, 5, 10, 15, 100)] == [10, 10, 20, 40, 50, 50]
    assert rate_per_minute(RolloutSpec(), 0) == 0  # unlimited


def test_rate_limiter_tokens() -> None:
    lim = RateLimiter(burst_s=1.0)
    assert lim.take(60, T0, 10) == 1  # one at once
    assert lim.take(60, T0, 10) == 0
    assert lim.take(60, T0 + 0.5, 10) == 0
    assert lim.take(60, T0 + 1.0, 10) == 1
    assert lim.take(60, T0 + 100, 10) == 1  # saved tokens are capped by the burst
    assert lim.take(600, T0 + 101, 100) == 10
    assert lim.take(0, T0, 123) == 123


def test_maintenance_windows() -> None:
    night = parse_window("22:00-02:00")
    assert night.contains(T0)  # 22:13
    assert not night.contains(T0 + 4 * 3600)  # 02:13
    weekdays = parse_window("mon,wed 22:00-23:00")
    assert not weekdays.contains(T0)  # Tuesday
    assert weekdays.contains(T0 + 86400)  # Wednesday 22:13
    assert in_windows((), T0)
    workdays = parse_window("Mon-Fri 02:00-04:00")  # day ranges, any case
    assert workdays.days == (0, 1, 2, 3, 4)
    assert str(workdays) == "mon,tue,wed,thu,fri 02:00-04:00"
    assert parse_window("fri-mon 22:00-02:00").days == (0, 4, 5, 6)
    for bad in ("25:00-01:00", "0200-0400", "xyz 01:00-02:00", "01:00-01:00"):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)


def test_spec_validation_names_fields() -> None:
    for data, word in [
        ({"phases": [50]}, "phases"),
        ({"phases": [50, 20, 100]}, "phases"),
        ({"success_pct": 120}, "success_pct"),
        ({"on_failure": "explode"}, "on_failure"),
        ({"min_attempts": "5"}, "min_attempts"),
        ({"device_timeout_s": 0}, "device_timeout"),
        ({"surprise": 1}, "surprise"),
        ({"continuous": "yes"}, "continuous"),
    ]:
        with pytest.raises(ValueError, match=word):
            RolloutSpec.from_json(data)
    spec = RolloutSpec.from_json(
        {"phases": [1, 10, 100], "windows": ["02:00-04:00"], "continuous": True}
    )
    assert RolloutSpec.from_json(spec.to_json()) == spec
    assert RolloutSpec.from_json({}).continuous is False  # rollouts stored before the field


def test_units() -> None:
    assert parse_duration("100ms") == 0.1
    assert parse_duration("7d") == 7 * 86400
    assert parse_phases("1%,10%,50%,100%") == (1, 10, 50, 100)
    for bad in ("", "10%,5%,100%", "50%", "0%,100%"):
        with pytest.raises(ValueError, match="phases"):
            parse_phases(bad)


def test_url_signing() -> None:
    signer = UrlSigner(b"k" * 32)
    sha = "ab" * 32
    url = signer.sign("http://h", sha, int(T0) + 60)
    exp = url.split("exp=")[1].split("&")[0]
    sig = url.split("sig=")[1]
    assert signer.check(sha, exp, sig, T0) is None
    assert signer.check(sha, exp, sig, T0 + 61) == "link expired"
    assert signer.check("cd" * 32, exp, sig, T0) == "bad signature"
    assert signer.check(sha, str(int(exp) + 1), sig, T0) == "bad signature"
    assert signer.check(sha, "soon", sig, T0) == "missing or invalid exp"
    assert UrlSigner(b"x" * 32).check(sha, exp, sig, T0) == "bad signature"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "data_dir"),
        ({"data_dir": "d", "http": {"listen": "h:port"}}, "http.listen"),
        ({"data_dir": "d", "mqtt": {"url": "http://x"}}, "mqtt.url"),
        ({"data_dir": "d", "mqtt": {"topic_prefix": "a/+"}}, "mqtt.topic_prefix"),
        ({"data_dir": "d", "ingest": {"batch_rows": 0}}, "ingest.batch_rows"),
        ({"data_dir": "d", "ingest": {"batch_interval": "1 fortnight"}}, "ingest.batch_interval"),
        ({"data_dir": "d", "rollouts": {"tick": "1h"}}, "rollouts.tick"),
        ({"data_dir": "d", "http": {"public_url": "ftp://x"}}, "http.public_url"),
        ({"data_dir": "d", "typo": 1}, "typo"),
        ({"data_dir": "d", "http": {"lisen": "x"}}, "http.lisen"),
        ({"data_dir": "d", "deltas": {"max_bases": 17}}, "deltas.max_bases"),
        ({"data_dir": "d", "deltas": {"on_upload": 1}}, "deltas.on_upload"),
        ({"data_dir": "d", "deltas": {"level": 0}}, "deltas.level"),
    ],
)
def test_invalid_config_names_the_field(data: dict, field: str, tmp_path: Path) -> None:
    table, _, key = field.rpartition(".")
    with pytest.raises(ConfigError, match=rf"\[{table}\] {key}" if table else key):
        parse_config(data, tmp_path)


def test_config_defaults_and_units(tmp_path: Path) -> None:
    cfg = parse_config(
        {"data_dir": "data", "http": {"listen": "0.0.0.0:9000"},
         "ingest": {"batch_interval": "50ms"}, "mqtt": {"url": "mqtt://b:1884"}},
        tmp_path,
    )  # fmt: skip
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.keys_dir == tmp_path / "data" / "keys"
    assert (cfg.http.port, cfg.mqtt.port, cfg.ingest.batch_interval_s) == (9000, 1884, 0.05)
    assert cfg.http.base_url == "http://0.0.0.0:9000"
