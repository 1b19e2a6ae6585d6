"""What the MQTT link hands out and keeps per publish: a received message with its ack
handle, the error of a publish never acknowledged, and the batch of one ``publish_many``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

__all__ = ["Batch", "Entry", "Message", "PublishTimeoutError"]


class PublishTimeoutError(TimeoutError):
    """The broker did not acknowledge every publish in time."""


@dataclass(slots=True)
class Message:
    """A message received from the broker.

    ``mid`` is the handle to pass to ``MqttLink.ack``: the packet identifier tagged with the
    connection the message came on (0 for QoS 0).
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


class Batch:
    """The publishes of one ``publish_many`` call; ``future`` resolves at the last PUBACK."""

    __slots__ = ("future", "left", "total")

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.left = n
        self.total = n

    def acked(self) -> None:
        self.left -= 1
        if self.left == 0 and not self.future.done():
            self.future.set_result(None)


# topic, payload, retain, its batch, MQTT 5 message expiry in seconds (0: none)
Entry = tuple[str, bytes, bool, Batch, int]
