"""What ingestion needs to bound one device and to confirm reports: rate limits and acks.

Pure logic with an injected clock: the ``Ingestor`` drives both.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetpush_protocol.envelope import encode_message
from fleetpush_protocol.messages import MAX_ACK_RANGES, Ack
from fleetpush_protocol.topics import Topics

__all__ = ["RateLimiter", "ack_items", "counter_ranges"]


class RateLimiter:
    """A token bucket per device: ``rate`` messages per second, ``burst`` at once.

    Device ids come from topics the broker's ACL ties to a login, so there is one bucket
    per provisioned device at most.
    """

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("need rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, list[float]] = {}  # device -> [tokens, at]

    def allow(self, device_id: str, now: float) -> bool:
        """Take one token of ``device_id``'s bucket at ``now`` (seconds); False if empty."""
        bucket = self._buckets.get(device_id)
        if bucket is None:
            self._buckets[device_id] = [self.burst - 1, now]
            return True
        tokens, at = bucket
        # A clock stepping back refills nothing rather than draining the bucket.
        tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
        bucket[1] = max(at, now)
        if tokens < 1:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1
        return True


def counter_ranges(counters: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted, merged ``[first, last]`` ranges of ``counters``."""
    ranges: list[tuple[int, int]] = []
    for c in sorted(set(counters)):
        if ranges and c == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return ranges


def ack_items(topics: Topics, stored: dict[str, set[int]]) -> list[tuple[str, bytes, bool]]:
    """One ``Ack`` per device (more if its counters make over ``MAX_ACK_RANGES`` ranges),
    as ``(topic, payload, retain)`` for ``MqttLink.publish_many``. Not retained: an ack
    matters only to the device's current outbox, and its persistent session queues it."""
    items = []
    for device_id, counters in stored.items():
        ranges = counter_ranges(counters)
        topic = topics.ack(device_id)
        for i in range(0, len(ranges), MAX_ACK_RANGES):
            ack = Ack(device_id=device_id, stored=tuple(ranges[i : i + MAX_ACK_RANGES]))
            items.append((topic, encode_message(ack), False))
    return items
