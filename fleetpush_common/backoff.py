"""Jittered exponential backoff: the one retry schedule for broker and HTTP transport errors.

Sans-IO: it computes delays; the caller sleeps.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delay ``n`` is uniform in ``[floor * c, c]`` with ``c = min(cap, base * 2**n)``.

    Args:
        base_s: the first delay's ceiling, seconds.
        cap_s: no delay exceeds this, seconds.
        floor: the share of the ceiling every delay keeps, so retries never bunch at zero.
    """

    def __init__(self, base_s: float = 0.5, cap_s: float = 60.0, floor: float = 0.5) -> None:
        if not (0 < base_s <= cap_s and 0 <= floor <= 1):
            raise ValueError("need 0 < base_s <= cap_s and 0 <= floor <= 1")
        self.base_s = base_s
        self.cap_s = cap_s
        self.floor = floor
        self.attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self.cap_s, self.base_s * 2 ** min(self.attempt, 30))
        self.attempt += 1
        return random.uniform(ceiling * self.floor, ceiling)  # noqa: S311 - jitter, not crypto

    def reset(self) -> None:
        self.attempt = 0
