"""A receive rate limit for one connection (a relay's per-client upload cap), sans-I/O:
the caller passes the time."""

from __future__ import annotations

from typing import final

__all__ = ["TokenBucket"]


@final
class TokenBucket:
    """A receive rate limit: ``rate`` bytes/s past a burst of 4 s worth.

    Args:
        rate: bytes per second.
        now: the time the bucket starts (full).
    """

    def __init__(self, rate: int, now: float) -> None:
        self.rate = rate
        self.burst = 4 * rate
        self._tokens = float(self.burst)
        self._at = now

    def take(self, size: int, now: float) -> float:
        """Spend ``size`` bytes; returns the seconds to wait before reading more."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate) - size
        self._at = now
        return max(0.0, -self._tokens / self.rate)
