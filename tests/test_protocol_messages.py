"""Every message type survives encode -> decode, unknown fields included."""

from __future__ import annotations

import msgspec
import pytest

from fleetpush_protocol import canonical
from fleetpush_protocol.envelope import (
    decode_envelope,
    decode_message,
    encode_body,
    encode_message,
    parse,
    sign_message,
)
from fleetpush_protocol.errors import MalformedError, UnknownTypeError, UnsupportedFormatError
from fleetpush_protocol.messages import (
    ErrorInfo,
    Inventory,
    Message,
    Presence,
    Progress,
    Release,
    Report,
    ReportState,
    Target,
)
from fleetpush_sim.signing import BASE_TIME, fixed_key, make_cancel, make_keyring, make_notice

MESSAGES: list[Message] = [
    make_notice(),
    make_notice(target=Target(groups=("g1", "g2"), models=("m1",), current_versions=("1.0",))),
    make_cancel(),
    make_keyring(1, [fixed_key(1)], [fixed_key(2), fixed_key(3)], revoked=[fixed_key(4)]),
    Report(
        device_id="dev-1",
        notice_id="n-1",
        rollout_id="r-1",
        state=ReportState.DOWNLOADING,
        current_version="1.0.0",
        counter=7,
        reported_at=BASE_TIME,
        progress=Progress(done=10, total=100),
    ),
    Report(
        device_id="dev-1",
        notice_id="n-1",
        rollout_id="r-1",
        state=ReportState.FAILED,
        current_version="1.0.0",
        counter=8,
        reported_at=BASE_TIME,
        error=ErrorInfo(code="hash_mismatch", message="payload SHA-256 differs"),
    ),
    Report(
        device_id="dev-1",
        notice_id="n-1",
        rollout_id="r-1",
        state=ReportState.DOWNLOADED,
        current_version="1.0.0",
        counter=9,
        reported_at=BASE_TIME,
        detail="rebuilt from a 927-byte delta",
        downloaded=927,
    ),
    Presence(device_id="dev-1", online=False, at=BASE_TIME),
    Inventory(
        device_id="dev-1",
        model="m1",
        groups=("g1",),
        client_version="0.1.0",
        installed=(Release(name="app", version="1.0.0"),),
        free_bytes=123456789,
        at=BASE_TIME,
    ),
]


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    data = sign_message(message, [fixed_key(9)])
    assert parse(decode_envelope(data)) == message
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_unknown_fields_are_kept_and_ignored(message: Message) -> None:
    body = {**message.to_body(), "x-new-field": {"nested": [1, 2]}}
    data = canonical.encode({"body": canonical.encode(body), "signatures": []})
    assert decode_message(data) == message
    # The signed body bytes keep the field for whoever stores or relays the message.
    assert decode_envelope(data).fields["x-new-field"] == {"nested": [1, 2]}


def _envelope(body: dict[str, object]) -> bytes:
    return canonical.encode({"body": canonical.encode(body), "signatures": []})


def test_unknown_type_and_format() -> None:
    body = make_notice().to_body()
    with pytest.raises(UnknownTypeError):
        decode_message(_envelope({**body, "type": "nope"}))
    with pytest.raises(UnsupportedFormatError):
        decode_message(_envelope({**body, "format": 2}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seq", 0),
        ("seq", "1"),
        ("seq", True),
        ("notice_id", "has/slash"),
        ("notice_id", ""),
        ("target", {"devices": [], "groups": [], "models": [], "current_versions": []}),
        ("target", {"devices": ["a", "a"], "groups": [], "models": [], "current_versions": []}),
        ("payload", {"urls": [], "size": 1, "sha256": b"\x00" * 32}),
        ("payload", {"urls": ["file:///etc/passwd"], "size": 1, "sha256": b"\x00" * 32}),
        ("payload", {"urls": ["https://x"], "size": 1, "sha256": b"\x00" * 31}),
        ("payload", {"urls": ["https://x"], "size": -1, "sha256": b"\x00" * 32}),
        ("handler", {"name": "directory", "args": {"a": 1}}),
        ("reply_topic", ""),
    ],
)
def test_field_bounds(field: str, value: object) -> None:
    body = {**make_notice().to_body(), field: value}
    with pytest.raises(MalformedError, match=field.split("_", maxsplit=1)[0]):
        decode_message(_envelope(body))


def test_report_state_must_be_known() -> None:
    body = {**MESSAGES[4].to_body(), "state": "exploded"}
    with pytest.raises(MalformedError, match="state"):
        decode_message(_envelope(body))


def test_keyring_threshold_cannot_exceed_keys() -> None:
    body = make_keyring(1, [fixed_key(1)], [fixed_key(2)], root_threshold=1).to_body()
    body["root_threshold"] = 2
    with pytest.raises(MalformedError, match="threshold"):
        decode_message(_envelope(body))


def test_report_without_detail_or_downloaded_keeps_its_bytes() -> None:
    """The optional report fields (issue 15) are left out, never nil, when not set: an
    older device's report and a new one without them are the same bytes, and an older
    orchestrator reading a new one ignores the unknown fields."""
    plain = Report(
        device_id="dev-1", notice_id="n-1", rollout_id="r-1", state=ReportState.DOWNLOADED,
        current_version="1.0.0", counter=9, reported_at=BASE_TIME,
    )  # fmt: skip
    body = canonical.decode(encode_body(plain), max_bytes=1 << 16)
    assert "detail" not in body
    assert "downloaded" not in body
    full = msgspec.structs.replace(plain, detail="fell back", downloaded=5)
    decoded = decode_message(encode_message(full))
    assert isinstance(decoded, Report)
    assert (decoded.detail, decoded.downloaded) == ("fell back", 5)
