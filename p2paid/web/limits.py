"""Rate limits of the web interface, per key (a device, an address), sans-I/O.

A key may act ``burst`` times at once and then ``per_minute`` times a minute. At
most ``max_keys`` keys are remembered (the least recently seen are forgotten), so a
flood of fresh addresses cannot grow the node's memory.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import final


@final
@dataclass(frozen=True, slots=True)
class WebLimits:
    """How fast one phone or address may act (per minute, after a burst)."""

    #: pairing attempts per address: a poster's 200 uses are not one script's to take
    pairing_per_minute: float = 6
    pairing_burst: int = 10
    #: changes (posts, pledges, edits) per phone and per address
    posting_per_minute: float = 30
    posting_burst: int = 20
    #: live-update streams (``/b/{board}/live``) open at once per phone, and in all
    live_per_device: int = 4
    live_total: int = 512
    #: seconds between a stream's keep-alive comments (and session checks)
    live_keepalive: float = 15.0

__all__ = ["Limiter", "WebLimits"]


@final
class Limiter:
    """Token buckets by key.

    Args:
        per_minute: sustained actions a minute per key.
        burst: actions a key may take at once.
        max_keys: keys remembered.
    """

    def __init__(self, per_minute: float, burst: int, *, max_keys: int = 4096) -> None:
        if per_minute <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("a limit needs a positive rate, burst and size")
        self._rate = per_minute / 60.0
        self._burst = float(burst)
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, key: str, now: float) -> bool:
        """Whether ``key`` may act now (and count it if so)."""
        tokens, at = self._buckets.pop(key, (self._burst, now))
        tokens = min(self._burst, tokens + max(0.0, now - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        while len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
