"""What the log says while a board is received from a peer: one line for a small
change, and for a big sync (the first sync of a large board) a start line, a
progress line every :data:`PROGRESS_INTERVAL` seconds and an end line::

    board 'Camp': 1 new envelope from 5tot-qen6-qn5k-565y
    board 'Big': receiving ~50,001 envelopes from 5tot-qen6-qn5k-565y
    board 'Big': 12,000 of ~50,001 envelopes received from 5tot-qen6-qn5k-565y (4,000/s)
    board 'Big': 50,001 envelopes received from 5tot-qen6-qn5k-565y in 12.5 s

Only the texts are made here (after ``board NAME: ``); the node logs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, final

from p2paid.core.text import plural

__all__ = ["PROGRESS_INTERVAL", "SyncProgress"]

#: Seconds between two progress lines of one big sync.
PROGRESS_INTERVAL: Final = 5.0


@dataclass(slots=True)
class _Burst:
    received: int
    started: float
    shown: float  #: when the last line was made


@final
class SyncProgress:
    """Turns the batches received from one connection into log lines.

    Args:
        interval: seconds between two progress lines.
        clock: monotonic seconds.
    """

    def __init__(self, interval: float = PROGRESS_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._bursts: dict[tuple[bytes, Hashable], _Burst] = {}

    def received(self, board_id: bytes, link: Hashable, peer: str, count: int,
                 remaining: int) -> str | None:
        """``count`` new envelopes of ``board_id`` arrived over ``link`` (a connection)
        from ``peer``, and about ``remaining`` more are to come: the line to log, if any."""
        key = (board_id, link)
        now = self._clock()
        burst = self._bursts.get(key)
        if burst is None:
            if remaining <= 0:
                return f"{plural(count, 'new envelope')} from {peer}" if count else None
            self._bursts[key] = _Burst(count, now, now)
            return f"receiving ~{count + remaining:,} envelopes from {peer}"
        burst.received += count
        if remaining <= 0:
            del self._bursts[key]
            took = now - burst.started
            return f"{plural(burst.received, 'envelope')} received from {peer} in {took:.1f} s"
        if now - burst.shown < self._interval:
            return None
        burst.shown = now
        rate = burst.received / max(now - burst.started, 1e-3)
        return (f"{burst.received:,} of ~{burst.received + remaining:,} envelopes received "
                f"from {peer} ({rate:,.0f}/s)")

    def forget(self, link: Hashable) -> None:
        """``link`` ended: what it was receiving is not followed any more."""
        for key in [k for k in self._bursts if k[1] == link]:
            del self._bursts[key]
