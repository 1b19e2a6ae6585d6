"""System notices (issue 18), as pure protocol: hostile component lists are refused as
``malformed`` before anything else looks at them, the size limit counts every component,
and single-payload notices and reports keep the bytes they had before the field."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from fleetpush_protocol import canonical, errors
from fleetpush_protocol.components import (
    MAX_COMPONENTS,
    SYSTEM_HANDLER,
    ComponentState,
    manifest_digest,
    notice_bytes,
    system_manifest,
)
from fleetpush_protocol.envelope import decode_message, encode_message, sign_message
from fleetpush_protocol.messages import ErrorInfo, Release, Report, ReportState, UpdateNotice
from fleetpush_protocol.verify import (
    DeviceIdentity,
    TrustedKeyring,
    VerifyPolicy,
    verify_keyring_chain,
    verify_notice,
)
from fleetpush_sim.signing import BASE_TIME, fixed_key, make_keyring, make_notice, raw_envelope

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from vectors_system import COMPONENTS, make_system_notice

ROOT, S1 = fixed_key(1), fixed_key(11)
DEVICE = DeviceIdentity("dev-1", "m1", frozenset({"g1"}), "1.0.0")
TRUST = verify_keyring_chain(
    [sign_message(make_keyring(1, [ROOT], [S1]), [ROOT])],
    trusted=TrustedKeyring.anchor([ROOT.public_key]),
    policy=VerifyPolicy(),
)


def _verify(data: bytes, policy: VerifyPolicy | None = None) -> UpdateNotice:
    verified = verify_notice(
        data, keyring=TRUST, device=DEVICE, seen={}, trusted_time=0, now=BASE_TIME + 60,
        policy=policy or VerifyPolicy(),
    )  # fmt: skip
    assert isinstance(verified.message, UpdateNotice)
    return verified.message


GOOD = make_system_notice().to_body()
FIRST = GOOD["components"][0]


def _with(components: list[dict[str, Any]], **changes: Any) -> bytes:
    return raw_envelope({**GOOD, "components": components, **changes}, [S1])


ATTACKS: list[tuple[str, bytes]] = [
    ("duplicate names", _with([FIRST, {**GOOD["components"][1], "name": FIRST["name"]}])),
    ("too many", _with([{**FIRST, "name": f"c{i}"} for i in range(MAX_COMPONENTS + 1)])),
    ("none", _with([])),
    ("path in name", _with([{**FIRST, "name": "../../etc/passwd"}])),
    ("slash in name", _with([{**FIRST, "name": "a/b"}])),
    ("dot name", _with([{**FIRST, "name": ".hidden"}])),
    ("dots in name", _with([{**FIRST, "name": "a..b"}])),
    ("upper case name", _with([{**FIRST, "name": "App"}])),
    ("long name", _with([{**FIRST, "name": "a" * 33}])),
    ("nested system", _with([{**FIRST, "handler": SYSTEM_HANDLER}])),
    ("handler with a slash", _with([{**FIRST, "handler": "../bin/sh"}])),
    ("short hash", _with([{**FIRST, "sha256": b"\x00" * 31}])),
    ("negative size", _with([{**FIRST, "size": -1}])),
    ("file url", _with([{**FIRST, "urls": ["file:///etc/shadow"]}])),
    ("no url", _with([{**FIRST, "urls": []}])),
    (
        "size changed after the manifest",
        _with([{**FIRST, "size": FIRST["size"] + 1}, *GOOD["components"][1:]]),
    ),
    (
        "hash changed after the manifest",
        _with([{**FIRST, "sha256": b"\x01" * 32}, *GOOD["components"][1:]]),
    ),
    ("order changed after the manifest", _with(list(reversed(GOOD["components"])))),
    ("components without handler system", _with(GOOD["components"], handler="directory")),
    (
        "handler system without components",
        raw_envelope({k: v for k, v in GOOD.items() if k != "components"}, [S1]),
    ),
]


@pytest.mark.parametrize(("name", "data"), ATTACKS, ids=[a[0] for a in ATTACKS])
def test_hostile_components_are_malformed(name: str, data: bytes) -> None:
    with pytest.raises(errors.MalformedError):
        _verify(data)


def test_a_system_notice_verifies_with_its_components_in_order() -> None:
    notice = _verify(sign_message(make_system_notice(), [S1]))
    assert notice.handler == SYSTEM_HANDLER
    assert [c.name for c in notice.components or ()] == ["app", "config", "firmware"]
    assert (notice.payload.sha256, notice.payload.size) == manifest_digest(COMPONENTS)
    assert notice_bytes(notice) == sum(c.size for c in COMPONENTS)


def test_the_size_limit_counts_every_component() -> None:
    data = sign_message(make_system_notice(), [S1])
    total = sum(c.size for c in COMPONENTS)
    assert max(c.size for c in COMPONENTS) < total - 1
    with pytest.raises(errors.PayloadTooLargeError):
        _verify(data, VerifyPolicy(max_payload_bytes=total - 1))
    _verify(data, VerifyPolicy(max_payload_bytes=total))


def test_the_manifest_is_canonical_and_leaves_urls_out() -> None:
    moved = tuple(msgspec.structs.replace(c, urls=("https://mirror.example/x",))
                  for c in COMPONENTS)  # fmt: skip
    assert system_manifest(moved) == system_manifest(COMPONENTS)
    as_map = {"components": [{"handler": c.handler, "name": c.name, "sha256": c.sha256,
                               "size": c.size} for c in COMPONENTS]}  # fmt: skip
    assert system_manifest(COMPONENTS) == canonical.encode(as_map)
    big = tuple(msgspec.structs.replace(c, name=f"c{i}", size=2**40 + i)
                for i, c in enumerate(COMPONENTS * 5))  # fmt: skip
    assert system_manifest(big) == canonical.encode(
        {"components": [{"handler": c.handler, "name": c.name, "sha256": c.sha256,
                         "size": c.size} for c in big]})  # fmt: skip
    sha, size = manifest_digest(COMPONENTS)
    assert sha == hashlib.sha256(system_manifest(COMPONENTS)).digest()
    assert size == len(system_manifest(COMPONENTS))


def test_old_shapes_keep_their_bytes() -> None:
    plain = make_notice()
    assert "components" not in plain.to_body()
    report = Report(
        device_id="dev-1", notice_id="n-1", rollout_id="1", state=ReportState.INSTALLING,
        current_version="1.0", counter=1, reported_at=BASE_TIME,
    )  # fmt: skip
    assert "components" not in report.to_body()


def test_a_report_carries_component_states() -> None:
    report = Report(
        device_id="dev-1", notice_id="n-1", rollout_id="1", state=ReportState.ROLLED_BACK,
        current_version="1.0", counter=3, reported_at=BASE_TIME,
        error=ErrorInfo(code="install_failed", message="install exit 1"),
        components=(ComponentState(name="app", state="rolled_back"),
                    ComponentState(name="config", state="downloaded")),
    )  # fmt: skip
    back = decode_message(encode_message(report))
    assert isinstance(back, Report)
    assert back.components == report.components


class _OldNotice(msgspec.Struct, kw_only=True):
    """What a reader that predates ``components`` decodes (unknown fields ignored)."""

    handler: str
    payload: dict[str, Any]
    release: Release


def test_a_reader_without_components_sees_a_handler_no_device_has() -> None:
    body = msgspec.msgpack.encode(make_system_notice().to_body())
    old = msgspec.msgpack.decode(body, type=_OldNotice)
    assert old.handler == SYSTEM_HANDLER  # refused by every agent's handler check
    assert old.payload["size"] == len(system_manifest(COMPONENTS))  # a manifest, not a tar
