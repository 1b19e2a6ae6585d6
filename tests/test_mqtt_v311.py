"""MQTT 3.1.1 in the orchestrator's codec and link (pure: bytes in, bytes out, no broker).

The broker-facing half (a rollout, offline catch-up and the ACL checks in 3.1.1) runs in
tests/test_orch_rollouts.py, tests/test_broker_acl.py, tests/test_broker_fallbacks.py and
tests/test_device_broker_urls.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable, Sequence

import pytest

from orchestrator.engine_notices import NoticeSending
from orchestrator.mqtt import codec
from orchestrator.mqtt.codec import ConnAck, Decoder, PacketAck, Publish, SubAck
from orchestrator.mqtt.link import MqttLink
from orchestrator.mqtt.settings import MqttConfig
from orchestrator.mqtt.versions import (
    SHORT_SESSION_S,
    RefusedError,
    connack_name,
    hello,
    subscription_fallback,
)
from orchestrator.store import NoticeRecord

V311 = 4


def _cfg(protocol: str = "3.1.1") -> MqttConfig:
    return MqttConfig(
        url="mqtt://b:1883",
        username="orch",
        password="pw",
        protocol=protocol,  # type: ignore[arg-type]
    )


def test_connect_level_4_has_no_properties() -> None:
    raw = hello(_cfg(), session_expiry_s=30 * 86400, receive_maximum=100)
    body = raw[2:]
    assert raw[0] == 0x10
    assert raw[1] == len(body)
    assert body[:7] == b"\x00\x04MQTT\x04"
    assert body[7] == 0xC0  # username, password, clean session off: a persistent session
    assert struct.unpack_from("!H", body, 8) == (30,)  # MqttConfig's default keepalive
    # No property length: the client id follows the keepalive.
    assert body[10:] == b"\x00\x04orch\x00\x04orch\x00\x02pw"


def test_connect_level_5_keeps_its_properties() -> None:
    raw = hello(_cfg("5"), session_expiry_s=60, receive_maximum=100)
    assert raw[2:9] == b"\x00\x04MQTT\x05"
    assert raw[9] == 0xC0  # no clean start
    assert raw[12:21] == b"\x08\x11\x00\x00\x00\x3c\x21\x00\x64"


def test_a_short_session_is_a_clean_one_in_311() -> None:
    """3.1.1 cannot bound a session: a replica's short one becomes a clean session."""
    raw = hello(_cfg(), session_expiry_s=SHORT_SESSION_S - 1, receive_maximum=65535)
    assert raw[9] == 0xC2
    raw5 = hello(_cfg("5"), session_expiry_s=SHORT_SESSION_S - 1, receive_maximum=65535)
    assert raw5[9] == 0xC0


def test_publish_in_311_has_no_properties_so_no_expiry() -> None:
    raw = codec.publish("a/b", b"xy", 1, 7, retain=True, expiry_s=3600, version=V311)
    assert raw == b"\x33\x09\x00\x03a/b\x00\x07xy"
    qos0 = codec.publish("a", b"z", 0, version=V311)
    assert qos0 == b"\x30\x04\x00\x01az"


def test_subscribe_in_311_has_no_properties() -> None:
    raw = codec.subscribe(9, ["$share/g/a/+", "b"], version=V311)
    assert raw == b"\x82\x15\x00\x09\x00\x0c$share/g/a/+\x01\x00\x01b\x01"


@pytest.mark.parametrize(
    ("raw", "packet"),
    [
        (b"\x20\x02\x01\x00", ConnAck(True, 0, 65535)),  # session present
        (b"\x20\x02\x00\x05", ConnAck(False, 5, 65535)),  # not authorized
        (b"\x90\x04\x00\x03\x01\x80", SubAck(3, (1, 0x80))),  # the bare 3.1.1 failure
        (b"\x40\x02\x00\x07", PacketAck(codec.PUBACK, 7, 0)),  # no reason code in 3.1.1
        (b"\x32\x09\x00\x03a/b\x00\x05hi", Publish("a/b", b"hi", 1, False, False, 5)),
        (b"\x31\x05\x00\x01ahi", Publish("a", b"hi", 0, True, False, 0)),
    ],
)
def test_decoder_reads_311_packets(raw: bytes, packet: codec.Packet) -> None:
    assert Decoder(version=V311).feed(raw) == [packet]
    # fed one byte at a time, the same
    d = Decoder(version=V311)
    out = [p for i in range(len(raw)) for p in d.feed(raw[i : i + 1])]
    assert out == [packet]


def test_a_311_publish_is_not_read_as_having_properties() -> None:
    """The payload's first byte is not a property length in 3.1.1 (and is in 5)."""
    raw = b"\x32\x08\x00\x01a\x00\x05\x02hi"
    assert Decoder(version=V311).feed(raw)[0].payload == b"\x02hi"
    assert Decoder(version=5).feed(raw)[0].payload == b""


@pytest.mark.parametrize(
    ("level", "code", "permanent", "name"),
    [
        (V311, 1, True, "Unacceptable protocol version"),
        (V311, 2, True, "Identifier rejected"),
        (V311, 3, False, "Server unavailable"),
        (V311, 4, True, "Bad user name or password"),
        (V311, 5, True, "Not authorized"),
        (V311, 9, False, "return code 9"),
        (5, 0x86, True, "Bad user name or password"),
        (5, 0x87, True, "Not authorized"),
        (5, 0x88, False, "Server unavailable"),
        (5, 0x89, False, "Server busy"),
    ],
)
def test_connack_refusals_by_version(level: int, code: int, permanent: bool, name: str) -> None:
    err = RefusedError(code, level)
    assert err.permanent is permanent
    assert connack_name(code, level) == name
    assert name in str(err)


FILTERS = ("$share/fp/p/device/+/report", "$share/fp/p/device/+/presence")
PLAIN = ("p/device/+/report", "p/device/+/presence")


@pytest.mark.parametrize(
    ("level", "reasons", "expected"),
    [
        (V311, (1, 1), None),  # granted
        (V311, (0x80, 0x80), PLAIN),  # 3.1.1: a bare failure, cannot say why
        (V311, (1, 0x80), PLAIN),
        (5, (0x9E, 0x9E), PLAIN),  # MQTT 5: shared subscriptions not supported
        (5, (0x01, 0x01), None),
    ],
)
def test_refused_shared_subscriptions_fall_back_to_plain_ones(
    level: int, reasons: tuple[int, ...], expected: tuple[str, ...] | None,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert subscription_fallback(FILTERS, reasons, level) == expected
    if expected is not None:
        assert "refused shared subscriptions" in caplog.text
        assert FILTERS[reasons.index(max(reasons))] in caplog.text


def test_refused_plain_subscriptions_are_logged_and_not_replaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        assert subscription_fallback(PLAIN, (0x80, 1), V311) is None
    assert "broker refused subscriptions: p/device/+/report (Failure)" in caplog.text


# --- the engine in 3.1.1: what it does not publish ------------------------------------------


class _Store:
    def __init__(self, records: list[NoticeRecord]) -> None:
        self.records = records
        self.marked: list[str] = []

    def sent_notices(self) -> list[NoticeRecord]:
        return self.records

    def mark_published(self, ids: Sequence[str]) -> None:
        self.marked += ids


class _Db:
    def __init__(self, store: _Store) -> None:
        self.store = store

    async def run(self, fn: Callable[[_Store], object]) -> object:
        return fn(self.store)


class _Notices:
    def usable_until(self, n: NoticeRecord) -> float:
        return n.expires_at


class _Publisher:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    async def publish_many(
        self,
        items: Sequence[tuple[str, bytes, bool]],
        timeout: float = 30.0,  # noqa: ASYNC109
        *,
        expiry_s: int = 0,
    ) -> None:
        self.calls.append(([t for t, _, _ in items], expiry_s))


def _notice(nid: str, expires_at: float) -> NoticeRecord:
    return NoticeRecord(nid, nid, 1, "notice", f"device/{nid}", 1, f"p/device/{nid}/notice",
                        0.0, expires_at, b"x")  # fmt: skip


@pytest.mark.parametrize(
    ("broker_expires", "published", "marked"),
    [
        (True, [(["p/device/old/notice"], 1), (["p/device/new/notice"], 900)], ["old", "new"]),
        # 3.1.1: an expired notice would stay retained for good: not published, done with
        (False, [(["p/device/new/notice"], 900)], ["old", "new"]),
    ],
)
async def test_an_expired_notice_is_not_published_again_where_the_broker_cannot_expire_it(
    broker_expires: bool, published: list[tuple[list[str], int]], marked: list[str]
) -> None:
    store = _Store([_notice("old", 1000.0), _notice("new", 1900.0)])
    sending = NoticeSending()
    sending.db = _Db(store)  # type: ignore[assignment]
    sending.notices = _Notices()  # type: ignore[assignment]
    sending.publisher = publisher = _Publisher()
    sending.broker_expires = broker_expires
    await sending.resend_sent(1000.0)
    assert publisher.calls == published
    assert sorted(store.marked) == sorted(marked)


# --- a refused plain subscription is asked for again (a broker cluster electing leaders) ---


async def _packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client packet: its type and body (the link's CONNECT, SUBSCRIBE, PINGREQ...)."""
    first = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    return first >> 4, await reader.readexactly(length)


async def test_a_refused_report_subscription_is_asked_for_again_until_granted() -> None:
    """A scripted 3.1.1 server (no real broker refuses on cue): the first SUBSCRIBE gets
    0x80, as nats-server answers while its cluster elects new leaders; the link asks again,
    on the same connection, and the second is granted."""
    subscribes: asyncio.Queue[bytes] = asyncio.Queue()
    closed = asyncio.Event()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        refusals = 1
        try:
            await _script(reader, writer, refusals)
        finally:
            writer.close()
            closed.set()

    async def _script(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, refusals: int
    ) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                kind, body = await _packet(reader)
                if kind == codec.CONNECT:
                    writer.write(b"\x20\x02\x00\x00")
                elif kind == codec.SUBSCRIBE:
                    await subscribes.put(body[2:])
                    code = 0x80 if refusals else 0x01
                    refusals = max(0, refusals - 1)
                    writer.write(bytes([0x90, 3]) + body[:2] + bytes([code]))
                elif kind == codec.PINGREQ:
                    writer.write(b"\xd0\x00")
                await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = MqttConfig(url=f"mqtt://127.0.0.1:{port}", username="o", password="p",
                     topic_prefix="p", protocol="3.1.1")  # fmt: skip
    link = MqttLink(cfg, ["p/device/+/report"])
    try:
        await asyncio.to_thread(link.start)
        first = await asyncio.wait_for(subscribes.get(), 10)
        again = await asyncio.wait_for(subscribes.get(), 10)  # RESUBSCRIBE_MIN_S, jittered
        assert first == again == struct.pack("!H", 17) + b"p/device/+/report\x01"
    finally:
        await asyncio.to_thread(link.stop)
        await asyncio.wait_for(closed.wait(), 10)  # the link hung up: our side closed too
        server.close()
        await server.wait_closed()
