"""Which broker a device connects to, when ``[broker] urls`` lists several.

A fleet spreads over the list: each device starts at a place in it that its id picks (a
hash, so the same place on every start and a near-even share per broker). It stays on a
broker for as long as it can connect there, and after losing a connection tries that one
first again; only a connect that fails moves it to the next URL in the list (wrapping
around), after the session's jittered backoff. So a device whose broker dies moves on,
and does not move back when the first one returns: moving back would only churn sessions.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from device_client.config import BrokerConfig

__all__ = ["Endpoints", "start_index", "starting_at"]

logger = logging.getLogger(__name__)


def start_index(device_id: str, n: int) -> int:
    """Where in a list of ``n`` URLs ``device_id`` starts: stable, and even over a fleet."""
    digest = hashlib.sha256(device_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % n


def starting_at(device_id: str, urls: Sequence[str]) -> list[str]:
    """``urls`` rotated so that ``device_id`` starts on ``urls[0]`` and then tries the rest in
    order: for putting a whole fleet on one node on purpose (tests, ``fleetpush demo``)."""
    n = len(urls)
    shift = start_index(device_id, n)
    return [urls[(i - shift) % n] for i in range(n)]


class Endpoints:
    """The device's broker URLs in the order it tries them; ``current`` is the one in use."""

    def __init__(self, broker: BrokerConfig, device_id: str) -> None:
        urls = broker.all_urls
        start = start_index(device_id, len(urls))
        self._configs = [broker.endpoint(u) for u in urls[start:] + urls[:start]]
        self._device_id = device_id
        self._at = 0

    @property
    def current(self) -> BrokerConfig:
        return self._configs[self._at]

    def __len__(self) -> int:
        return len(self._configs)

    def failed(self) -> None:
        """A connect to ``current`` failed: the next attempt goes to the next URL."""
        if len(self._configs) == 1:
            return
        self._at = (self._at + 1) % len(self._configs)
        logger.info("%s: trying broker %s next", self._device_id, self.current.url)
