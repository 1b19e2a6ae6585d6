"""How fast a rollout notifies: its rate now, and the token bucket that spends it."""

from __future__ import annotations

from orchestrator.rules.spec import RolloutSpec

__all__ = [
    "RateLimiter",
    "rate_per_minute",
]


def rate_per_minute(spec: RolloutSpec, succeeded: int) -> float:
    """The notification rate now: constant, or growing by ``rate_factor`` per ``rate_every``
    successes (AWS IoT Jobs' exponential rollout); 0 means unlimited."""
    if spec.rate_per_min <= 0:
        return 0.0
    if spec.rate_mode == "constant":
        return spec.rate_per_min
    steps = min(succeeded // spec.rate_every, 64)
    rate = spec.rate_per_min * spec.rate_factor**steps
    if spec.rate_max_per_min > 0:
        rate = min(rate, spec.rate_max_per_min)
    return min(rate, 1e7)


class RateLimiter:
    """A token bucket: ``rate`` tokens per minute, at most ``burst_s`` seconds' worth saved.

    The first call grants one token so a slow rollout starts at once.
    """

    def __init__(self, burst_s: float = 1.0) -> None:
        self.burst_s = burst_s
        self.tokens = 1.0
        self.last: float | None = None

    def take(self, rate_per_min: float, now: float, want: int) -> int:
        """Take up to ``want`` tokens; return how many were granted (all when unlimited)."""
        if rate_per_min <= 0:
            return want
        per_s = rate_per_min / 60.0
        if self.last is not None:
            elapsed = max(0.0, now - self.last)
            self.tokens = min(max(1.0, per_s * self.burst_s), self.tokens + elapsed * per_s)
        self.last = now
        granted = min(want, int(self.tokens + 1e-9))
        self.tokens -= granted
        return granted
