"""Pure logic of issue 12.4: acks, per-device rate limits, caps, and their settings."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from fleetpush_protocol.envelope import decode_message, encode_message
from fleetpush_protocol.errors import MalformedError, OversizedError
from fleetpush_protocol.messages import Ack, Report, ReportState
from fleetpush_protocol.topics import Topics
from orchestrator.config import ConfigError, parse_config
from orchestrator.ingest_guard import RateLimiter, ack_items, counter_ranges


def test_rate_limiter_allows_the_burst_then_the_rate_per_device() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.allow("a", 100.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("b", 100.0)  # buckets are per device
    assert limiter.allow("a", 100.5)  # half a second at 2/s: one token
    assert not limiter.allow("a", 100.5)
    assert not limiter.allow("a", 50.0)  # a clock stepping back refills nothing
    assert [limiter.allow("a", 200.0) for _ in range(4)] == [True, True, True, False]


def test_counter_ranges_merge_and_ack_items_split_per_device() -> None:
    assert counter_ranges([5, 1, 2, 3, 3, 7, 6]) == [(1, 3), (5, 7)]
    items = ack_items(Topics("p"), {"dev-1": {1, 2, 4}, "dev-2": set(range(1, 600, 2))})
    topics = [t for t, _, _ in items]
    assert topics == ["p/device/dev-1/ack", "p/device/dev-2/ack", "p/device/dev-2/ack"]
    first = decode_message(items[0][1])
    assert first == Ack(device_id="dev-1", stored=((1, 2), (4, 4)))
    assert not any(retain for _, _, retain in items)


@pytest.mark.parametrize(
    "stored",
    [(), ((2, 1),), ((1, 3), (3, 4)), ((4, 5), (1, 2)), ((0, 1),)],
    ids=["empty", "reversed", "overlapping", "unsorted", "zero"],
)
def test_ack_ranges_must_be_ascending_disjoint_and_positive(
    stored: tuple[tuple[int, int], ...],
) -> None:
    body = {"device_id": "dev-1", "format": 1, "stored": [list(r) for r in stored], "type": "ack"}
    enc = msgspec.msgpack.Encoder(order="deterministic")
    wire = enc.encode({"body": enc.encode(body), "signatures": []})
    with pytest.raises(MalformedError):
        decode_message(wire)


def _report_with_unknown(pad: int) -> bytes:
    report = Report(
        device_id="dev-1", notice_id="n-1", rollout_id="1", state=ReportState.DOWNLOADING,
        current_version="1.0", counter=1, reported_at=1,
    )  # fmt: skip
    enc = msgspec.msgpack.Encoder(order="deterministic")
    body = enc.encode({**report.to_body(), "zz_pad": b"\0" * pad})
    return enc.encode({"body": body, "signatures": []})


def test_unknown_field_bytes_are_capped_before_the_generic_decode() -> None:
    small = _report_with_unknown(100)
    assert isinstance(decode_message(small, max_unknown_bytes=1024), Report)
    big = _report_with_unknown(5000)
    assert isinstance(decode_message(big), Report)  # no cap: unknown fields are kept
    with pytest.raises(OversizedError, match="unknown fields"):
        decode_message(big, max_unknown_bytes=1024)
    exact = encode_message(decode_message(big))
    assert decode_message(exact, max_unknown_bytes=0) == decode_message(big)


def test_ingest_and_retention_settings_are_bounded(tmp_path: Path) -> None:
    cfg = parse_config(
        {
            "data_dir": "d",
            "ingest": {"max_report_bytes": 4096, "rate_per_device": 0.5, "ack_interval": "1s"},
            "retention": {"reports_per_device": 50, "max_report_age": "7d"},
        },
        tmp_path,
    )
    assert cfg.ingest.max_report_bytes == 4096
    assert cfg.ingest.rate_per_device == 0.5
    assert cfg.ingest.ack_interval_s == 1.0
    assert cfg.retention.reports_per_device == 50
    assert cfg.retention.max_report_age_s == 7 * 86400
    for section, key, value in [
        ("ingest", "max_report_bytes", 100),
        ("ingest", "rate_per_device", 0),
        ("ingest", "burst_per_device", True),
        ("retention", "reports_per_device", 1),
        ("retention", "max_report_age", "1s"),
    ]:
        with pytest.raises(ConfigError, match=rf"\[{section}\] {key}"):
            parse_config({"data_dir": "d", section: {key: value}}, tmp_path)


def test_ack_example_in_protocol_md_is_its_canonical_encoding() -> None:
    hexed = (
        "82a4626f6479c43084a96465766963655f6964a56465762d31a6666f726d617401a673746f726564"
        "92920103920505a474797065a361636baa7369676e61747572657390"
    )
    doc = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text()
    assert hexed in doc
    ack = Ack(device_id="dev-1", stored=((1, 3), (5, 5)))
    assert encode_message(ack).hex() == hexed
    assert decode_message(bytes.fromhex(hexed)) == ack
