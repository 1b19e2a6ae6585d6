"""A sans-IO MQTT 5 and 3.1.1 codec: the packets the orchestrator's link and the benchmarks
speak.

Pure functions build packets as bytes; ``Decoder.feed`` takes bytes as they arrive (in
any split) and returns whole packets as typed objects. Nothing here reads a socket, keeps
a session or retries: that is the driver's job (``orchestrator.mqtt.link``).

Only what fleetpush uses is covered: CONNECT (MQTT 5, or 3.1.1: ``version=4``, the link's
``[mqtt] protocol = "3.1.1"`` and the benchmarks' load generator), SUBSCRIBE, PUBLISH at
QoS 0/1/2, PUBACK, the QoS 2 handshake, PINGREQ and DISCONNECT out; CONNACK, SUBACK,
PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, PINGRESP and DISCONNECT in. Properties are kept
as raw bytes unless the driver needs one (the CONNACK's receive maximum, the PUBLISH's
message expiry out), so the hot path parses no properties.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "CONNACK",
    "CONNECT",
    "DISCONNECT",
    "PINGREQ",
    "PINGRESP",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "PUBREL",
    "SUBACK",
    "SUBSCRIBE",
    "ConnAck",
    "Decoder",
    "Disconnect",
    "MalformedPacketError",
    "Packet",
    "PingResp",
    "Publish",
    "PacketAck",
    "SubAck",
    "connect",
    "decode_varint",
    "disconnect",
    "encode_varint",
    "pingreq",
    "puback",
    "pubacks",
    "publish",
    "pubrel",
    "pubcomp",
    "pubrec",
    "set_dup",
    "subscribe",
]

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 12, 13, 14

MAX_VARINT = 268_435_455  # the largest remaining length MQTT can express (4 bytes)
MAX_PACKET = 1 << 20  # bytes of one incoming packet we accept (the broker's limit is lower)

# property identifiers used here (MQTT 5, section 2.2.2.2)
_MESSAGE_EXPIRY = 0x02
_SESSION_EXPIRY = 0x11
_RECEIVE_MAXIMUM = 0x21
_VAR_PROPS_U32 = frozenset({0x02, 0x11, 0x18, 0x27})
_VAR_PROPS_U16 = frozenset({0x13, 0x21, 0x22, 0x23})
_VAR_PROPS_BYTE = frozenset({0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A})
_VAR_PROPS_STR = frozenset({0x03, 0x08, 0x09, 0x12, 0x15, 0x16, 0x1A, 0x1C, 0x1F})


class MalformedPacketError(ValueError):
    """Bytes from the peer that are not a valid MQTT packet; the connection must close."""


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int  # 0: accepted (MQTT 5 reason code, or the 3.1.1 return code)
    receive_maximum: int  # the broker's: at most this many of our QoS 1/2 in flight


@dataclass(slots=True)  # not frozen: built once per message on the hot path
class Publish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int  # 0 for QoS 0


@dataclass(frozen=True, slots=True)
class PacketAck:
    """PUBACK, PUBREC, PUBREL or PUBCOMP (``kind``), with its reason code."""

    kind: int
    packet_id: int
    reason: int


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    reasons: tuple[int, ...]  # one per filter; >= 0x80 is a refusal


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


Packet = ConnAck | Publish | PacketAck | SubAck | Disconnect | PingResp


# --- primitives -----------------------------------------------------------------------------


def encode_varint(n: int) -> bytes:
    """MQTT's variable byte integer (1-4 bytes, 7 bits each, least significant first)."""
    if not 0 <= n <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(buf: bytes | bytearray, pos: int) -> tuple[int, int] | None:
    """``(value, position after it)``, or None if ``buf`` ends inside it.

    Raises:
        MalformedPacketError: more than four bytes.
    """
    value, shift, end = 0, 0, len(buf)
    for i in range(pos, min(end, pos + 4)):
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i + 1
        shift += 7
    if end - pos >= 4:
        raise MalformedPacketError("variable byte integer longer than four bytes")
    return None


def _str(s: str) -> bytes:
    raw = s.encode()
    if len(raw) > 0xFFFF:
        raise ValueError("MQTT string longer than 65535 bytes")
    return struct.pack("!H", len(raw)) + raw


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + encode_varint(len(body)) + body


def _props(props: bytes) -> bytes:
    return encode_varint(len(props)) + props


# --- outgoing packets -----------------------------------------------------------------------


def connect(
    client_id: str,
    username: str | None = None,
    password: str | None = None,
    *,
    keepalive_s: int = 60,
    clean_start: bool = True,
    session_expiry_s: int = 0,
    receive_maximum: int = 65535,
    version: int = 5,
) -> bytes:
    """CONNECT; ``version`` 5 (with properties) or 4 (MQTT 3.1.1, ``clean_start`` only)."""
    if version not in {4, 5}:
        raise ValueError("version must be 4 (3.1.1) or 5")
    flags = 0x02 if clean_start else 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = _str("MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive_s)
    if version == 5:
        props = b""
        if session_expiry_s:
            props += struct.pack("!BI", _SESSION_EXPIRY, session_expiry_s)
        if receive_maximum != 65535:
            props += struct.pack("!BH", _RECEIVE_MAXIMUM, receive_maximum)
        body += _props(props)
    body += _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password)
    return _packet(0x10, body)


def subscribe(packet_id: int, filters: Sequence[str], qos: int = 1, *, version: int = 5) -> bytes:
    body = struct.pack("!H", packet_id) + (b"\x00" if version == 5 else b"")
    body += b"".join(_str(f) + bytes([qos]) for f in filters)
    return _packet(0x82, body)


def publish(
    topic: str,
    payload: bytes,
    qos: int = 1,
    packet_id: int = 0,
    *,
    retain: bool = False,
    dup: bool = False,
    expiry_s: int = 0,
    version: int = 5,
) -> bytes:
    """PUBLISH; ``expiry_s`` sets the message expiry interval (MQTT 5 only)."""
    if qos not in {0, 1, 2} or (qos and not 0 < packet_id <= 0xFFFF):
        raise ValueError("QoS 1 and 2 need a packet identifier in 1..65535")
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"")
    if version == 5:
        body += _props(struct.pack("!BI", _MESSAGE_EXPIRY, expiry_s) if expiry_s else b"")
    return _packet(first, body + payload)


def set_dup(packet: bytes) -> bytes:
    """The same PUBLISH with its DUP flag set, for a resend."""
    return bytes([packet[0] | 0x08]) + packet[1:]


def puback(packet_id: int) -> bytes:
    """PUBACK, success, no properties (MQTT 5 lets both be left out)."""
    return struct.pack("!BBH", 0x40, 2, packet_id)


def pubacks(packet_ids: Sequence[int]) -> bytes:
    """Many PUBACKs in one buffer, for one socket write."""
    return struct.pack(f"!{len(packet_ids)}I", *(0x40020000 | p for p in packet_ids))


def pubrec(packet_id: int) -> bytes:
    return struct.pack("!BBH", 0x50, 2, packet_id)


def pubrel(packet_id: int) -> bytes:
    return struct.pack("!BBH", 0x62, 2, packet_id)


def pubcomp(packet_id: int) -> bytes:
    return struct.pack("!BBH", 0x70, 2, packet_id)


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect(reason: int = 0) -> bytes:
    return b"\xe0\x00" if reason == 0 else bytes([0xE0, 1, reason])


# --- incoming packets -----------------------------------------------------------------------


def _skip_props(body: bytes, pos: int) -> int:
    got = decode_varint(body, pos)
    if got is None or got[0] + got[1] > len(body):
        raise MalformedPacketError("property length runs past the packet")
    return got[0] + got[1]


def _receive_maximum(body: bytes, pos: int) -> int:
    """The receive maximum among CONNACK properties at ``pos`` (65535 when absent)."""
    got = decode_varint(body, pos)
    if got is None or got[0] + got[1] > len(body):
        raise MalformedPacketError("CONNACK property length runs past the packet")
    length, pos = got
    end, value = pos + length, 65535
    try:
        while pos < end:
            ident = body[pos]
            pos += 1
            if ident == _RECEIVE_MAXIMUM:
                value = struct.unpack_from("!H", body, pos)[0]
            if ident in _VAR_PROPS_U32:
                pos += 4
            elif ident in _VAR_PROPS_U16:
                pos += 2
            elif ident in _VAR_PROPS_BYTE:
                pos += 1
            elif ident in _VAR_PROPS_STR:
                pos += 2 + struct.unpack_from("!H", body, pos)[0]
            elif ident == 0x26:  # user property: a string pair
                pos += 2 + struct.unpack_from("!H", body, pos)[0]
                pos += 2 + struct.unpack_from("!H", body, pos)[0]
            elif ident == 0x0B:  # subscription identifier
                varint = decode_varint(body, pos)
                if varint is None:
                    raise MalformedPacketError("truncated subscription identifier")
                pos = varint[1]
            else:
                raise MalformedPacketError(f"unknown CONNACK property 0x{ident:02x}")
    except struct.error:
        raise MalformedPacketError("truncated CONNACK property") from None
    if pos != end or value == 0:
        raise MalformedPacketError("bad CONNACK properties")
    return int(value)


def _publish_at(first: int, buf: bytes, pos: int, stop: int, version: int) -> Publish:
    """The PUBLISH whose body is ``buf[pos:stop]``, read in place (the hot path)."""
    qos = (first >> 1) & 3
    if qos == 3 or stop - pos < 2:
        raise MalformedPacketError("bad PUBLISH header")
    topic_start = pos + 2
    topic_end = pos = topic_start + ((buf[pos] << 8) | buf[pos + 1])
    packet_id = 0
    if qos:
        pos += 2
        if pos > stop:
            raise MalformedPacketError("PUBLISH too short")
        packet_id = (buf[pos - 2] << 8) | buf[pos - 1]
        if packet_id == 0:
            raise MalformedPacketError("PUBLISH with packet identifier 0")
    if version == 5:
        # Topic aliases cannot come: we allow none (no Topic Alias Maximum in CONNECT).
        if pos < stop and buf[pos] < 0x80:  # the usual short property length, inline
            pos += 1 + buf[pos]
        else:
            got = decode_varint(buf, pos) if pos < stop else None
            if got is None:
                raise MalformedPacketError("PUBLISH property length missing")
            pos = got[1] + got[0]
    if pos > stop:
        raise MalformedPacketError("PUBLISH too short")
    try:
        topic = buf[topic_start:topic_end].decode()
    except UnicodeDecodeError:
        raise MalformedPacketError("PUBLISH topic is not UTF-8") from None
    return Publish(topic, buf[pos:stop], qos, bool(first & 1), bool(first & 8), packet_id)


def _parse(first: int, body: bytes, version: int) -> Packet:
    kind = first >> 4
    n = len(body)
    if kind in {PUBACK, PUBREC, PUBREL, PUBCOMP}:
        if n < 2:
            raise MalformedPacketError("acknowledgement too short")
        return PacketAck(kind, (body[0] << 8) | body[1], body[2] if n > 2 else 0)
    if kind == CONNACK:
        if n < 2:
            raise MalformedPacketError("CONNACK too short")
        recv_max = _receive_maximum(body, 2) if version == 5 and n > 2 else 65535
        return ConnAck(bool(body[0] & 1), body[1], recv_max)
    if kind == SUBACK:
        if n < 3:
            raise MalformedPacketError("SUBACK too short")
        pos = _skip_props(body, 2) if version == 5 else 2
        return SubAck((body[0] << 8) | body[1], tuple(body[pos:]))
    if kind == PINGRESP:
        return PingResp()
    if kind == DISCONNECT:
        return Disconnect(body[0] if n else 0)
    raise MalformedPacketError(f"unexpected packet type {kind}")


class Decoder:
    """Cuts packets out of a byte stream; keeps an incomplete tail for the next ``feed``.

    Args:
        version: 5 (MQTT 5 packets carry properties) or 4 (3.1.1).
        max_packet: the largest packet accepted, bytes.
    """

    __slots__ = ("_buf", "max_packet", "version")

    def __init__(self, version: int = 5, max_packet: int = MAX_PACKET) -> None:
        self.version = version
        self.max_packet = max_packet
        self._buf = b""  # the incomplete tail of the last feed

    def feed(self, data: bytes) -> list[Packet]:
        """The whole packets completed by ``data``, in order.

        Raises:
            MalformedPacketError: the stream is not MQTT; the decoder is then unusable.
        """
        buf = self._buf + data if self._buf else data
        out: list[Packet] = []
        pos, end, version = 0, len(buf), self.version
        while end - pos >= 2:
            first = buf[pos]
            if buf[pos + 1] < 0x80:  # the usual one-byte length, inline
                length, start = buf[pos + 1], pos + 2
            else:
                got = decode_varint(buf, pos + 1)
                if got is None:
                    break
                length, start = got
                if length > self.max_packet:
                    raise MalformedPacketError(f"packet of {length} bytes exceeds the limit")
            stop = start + length
            if stop > end:
                break
            if first >> 4 == PUBLISH:
                out.append(_publish_at(first, buf, start, stop, version))
            else:
                out.append(_parse(first, buf[start:stop], version))
            pos = stop
        self._buf = buf[pos:] if pos < end else b""
        return out
