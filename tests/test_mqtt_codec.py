"""The sans-IO MQTT codec: round trips, split frames, length edges, malformed input."""

from __future__ import annotations

import struct

import pytest

from orchestrator.mqtt import codec
from orchestrator.mqtt.codec import (
    ConnAck,
    Decoder,
    Disconnect,
    MalformedPacketError,
    PacketAck,
    PingResp,
    Publish,
    SubAck,
)


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (0, b"\x00"),
        (127, b"\x7f"),
        (128, b"\x80\x01"),
        (16_383, b"\xff\x7f"),
        (16_384, b"\x80\x80\x01"),
        (2_097_151, b"\xff\xff\x7f"),
        (2_097_152, b"\x80\x80\x80\x01"),
        (268_435_455, b"\xff\xff\xff\x7f"),
    ],
)
def test_varint_edges(value: int, encoded: bytes) -> None:
    assert codec.encode_varint(value) == encoded
    assert codec.decode_varint(b"\xaa" + encoded, 1) == (value, 1 + len(encoded))
    assert codec.decode_varint(encoded[:-1], 0) is None  # incomplete


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_varint_out_of_range(value: int) -> None:
    with pytest.raises(ValueError):
        codec.encode_varint(value)


def test_varint_of_five_bytes_is_malformed() -> None:
    with pytest.raises(MalformedPacketError):
        codec.decode_varint(b"\xff\xff\xff\xff\x01", 0)


PUBLISHES = [
    Publish("a/b", b"payload", 1, False, False, 7),
    Publish("fleetpush/report/dev-1", b"", 0, True, False, 0),
    Publish("t", b"x" * 300, 2, False, True, 65535),
    Publish("ünïcode/topic", bytes(range(256)) * 70, 1, True, True, 1),  # 3-byte length
]


@pytest.mark.parametrize("p", PUBLISHES)
def test_publish_round_trip(p: Publish) -> None:
    raw = codec.publish(p.topic, p.payload, p.qos, p.packet_id, retain=p.retain, dup=p.dup)
    assert Decoder().feed(raw) == [p]


def test_publish_with_expiry_skips_its_properties() -> None:
    raw = codec.publish("t", b"body", 1, 9, expiry_s=3600)
    assert b"\x02\x00\x00\x0e\x10" in raw  # message expiry interval property
    assert Decoder().feed(raw) == [Publish("t", b"body", 1, False, False, 9)]


def test_set_dup_marks_a_resend() -> None:
    raw = codec.set_dup(codec.publish("t", b"x", 1, 3))
    assert Decoder().feed(raw) == [Publish("t", b"x", 1, False, True, 3)]


def test_mqtt311_publish_has_no_properties() -> None:
    raw = codec.publish("t", b"\x00\x01", 1, 5, version=4)
    assert raw == b"\x32\x07\x00\x01t\x00\x05\x00\x01"
    assert Decoder(version=4).feed(raw) == [Publish("t", b"\x00\x01", 1, False, False, 5)]


def test_every_split_of_a_stream_gives_the_same_packets() -> None:
    stream = b"".join(
        codec.publish(p.topic, p.payload, p.qos, p.packet_id, retain=p.retain, dup=p.dup)
        for p in PUBLISHES
    )
    stream += b"\x20\x03\x01\x00\x00" + b"\x40\x02\x00\x07" + b"\xd0\x00"
    want = [*PUBLISHES, ConnAck(True, 0, 65535), PacketAck(codec.PUBACK, 7, 0), PingResp()]
    for cut in [1, 2, 3, 5, 100, 4096, len(stream) - 1]:
        d = Decoder()
        got = d.feed(stream[:cut]) + d.feed(stream[cut:])
        assert got == want, cut
    d = Decoder()
    assert [p for i in range(len(stream)) for p in d.feed(stream[i : i + 1])] == want


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"\x20\x03\x00\x00\x00", ConnAck(False, 0, 65535)),
        (b"\x20\x03\x01\x00\x00", ConnAck(True, 0, 65535)),
        (b"\x20\x03\x00\x87\x00", ConnAck(False, 0x87, 65535)),
        # receive maximum 20 after a session expiry and an assigned client id
        (
            b"\x20\x11\x00\x00\x0e\x11\x00\x00\x00\x3c\x12\x00\x03abc\x21\x00\x14",
            ConnAck(False, 0, 20),
        ),
        # a user property (string pair) before the receive maximum
        (b"\x20\x0e\x00\x00\x0b\x26\x00\x01k\x00\x02vv\x21\x00\x05", ConnAck(False, 0, 5)),
        (b"\x90\x04\x00\x01\x00\x01", SubAck(1, (1,))),
        (b"\x90\x05\x00\x02\x00\x01\x87", SubAck(2, (1, 0x87))),
        (b"\x40\x03\x00\x09\x10", PacketAck(codec.PUBACK, 9, 0x10)),
        (b"\x50\x02\x00\x09", PacketAck(codec.PUBREC, 9, 0)),
        (b"\x62\x02\x00\x09", PacketAck(codec.PUBREL, 9, 0)),
        (b"\x70\x02\x00\x09", PacketAck(codec.PUBCOMP, 9, 0)),
        (b"\xd0\x00", PingResp()),
        (b"\xe0\x00", Disconnect(0)),
        (b"\xe0\x01\x8e", Disconnect(0x8E)),
    ],
)
def test_incoming_packets(raw: bytes, want: codec.Packet) -> None:
    assert Decoder().feed(raw) == [want]


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x36\x05\x00\x01t\x00\x01", "QoS 3"),
        (b"\x32\x05\x00\x01t\x00\x00\x00", "packet identifier 0"),
        (b"\x32\x03\x00\x01t", "QoS 1 without packet identifier"),
        (b"\x30\x03\x00\x09t", "topic length past the end"),
        (b"\x30\x04\x00\x01t\x05", "property length past the end"),
        (b"\x30\x05\x00\x02\xff\xfe\x00", "topic not UTF-8"),
        (b"\x20\x01\x00", "CONNACK too short"),
        (b"\x20\x05\x00\x00\x02\x21\x00", "truncated receive maximum"),
        (b"\x20\x06\x00\x00\x03\x21\x00\x00", "receive maximum 0"),
        (b"\x20\x04\x00\x00\x01\x7f", "unknown CONNACK property"),
        (b"\x40\x01\x00", "PUBACK too short"),
        (b"\x90\x02\x00\x01", "SUBACK without reason codes"),
        (b"\x10\x00", "CONNECT from the broker"),
        (b"\x00\x00", "packet type 0"),
        (b"\x30\xff\xff\xff\xff\x01", "five-byte remaining length"),
    ],
)
def test_malformed_packets_raise(raw: bytes, why: str) -> None:
    with pytest.raises(MalformedPacketError):
        Decoder().feed(raw)


def test_oversized_packet_is_refused_before_it_is_buffered() -> None:
    with pytest.raises(MalformedPacketError):
        Decoder(max_packet=1000).feed(b"\x30" + codec.encode_varint(1001))


def test_connect_mqtt5_fields() -> None:
    raw = codec.connect("orch", "orch", "pw", keepalive_s=30, clean_start=False,
                        session_expiry_s=60, receive_maximum=100)  # fmt: skip
    body = raw[2:]
    assert raw[0] == 0x10
    assert raw[1] == len(body)
    assert body[:7] == b"\x00\x04MQTT\x05"
    assert body[7] == 0xC0  # username, password, no clean start
    assert struct.unpack_from("!H", body, 8) == (30,)
    assert body[10:19] == b"\x08\x11\x00\x00\x00\x3c\x21\x00\x64"
    assert body[19:] == b"\x00\x04orch\x00\x04orch\x00\x02pw"


def test_connect_mqtt311_and_anonymous() -> None:
    assert (
        codec.connect("c", version=4, keepalive_s=0)
        == b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x01c"
    )
    with pytest.raises(ValueError):
        codec.connect("c", version=3)


def test_small_packets() -> None:
    assert codec.subscribe(3, ["a/#", "b"]) == b"\x82\x0d\x00\x03\x00\x00\x03a/#\x01\x00\x01b\x01"
    assert codec.subscribe(3, ["a"], version=4) == b"\x82\x06\x00\x03\x00\x01a\x01"
    assert codec.puback(0x1234) == b"\x40\x02\x12\x34"
    assert codec.pubacks([1, 0xFFFF]) == b"\x40\x02\x00\x01\x40\x02\xff\xff"
    assert codec.pubacks([]) == b""
    assert codec.pubrec(1) == b"\x50\x02\x00\x01"
    assert codec.pubrel(1) == b"\x62\x02\x00\x01"
    assert codec.pubcomp(1) == b"\x70\x02\x00\x01"
    assert codec.pingreq() == b"\xc0\x00"
    assert codec.disconnect() == b"\xe0\x00"
    assert codec.disconnect(0x04) == b"\xe0\x01\x04"


@pytest.mark.parametrize(("qos", "packet_id"), [(1, 0), (2, 65536), (3, 1)])
def test_publish_refuses_bad_qos_or_packet_id(qos: int, packet_id: int) -> None:
    with pytest.raises(ValueError):
        codec.publish("t", b"", qos, packet_id)
