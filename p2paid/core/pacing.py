"""Sizing steps of work so that each takes about a target time.

A single-threaded node must not hold its event loop for long: deferred Automerge
work is done in steps, between which other tasks run. A step's cost is a fixed
part per call (Automerge's, about 3 ms on a 10,000-item board here) plus a part
per item, so a fixed small size wastes time and a fixed large one stalls; the
size is learnt from the steps before.
"""

from __future__ import annotations

from typing import final

__all__ = ["StepSizer"]


@final
class StepSizer:
    """The number of items for the next step, from the speed of the last one.

    Args:
        target: seconds a step should take.
        first: the size before anything was measured.
        minimum: never fewer (progress even when each item is slow).
        maximum: never more.
    """

    def __init__(self, target: float, *, first: int, minimum: int, maximum: int) -> None:
        if not 0 < minimum <= first <= maximum or target <= 0:
            raise ValueError("need 0 < minimum <= first <= maximum and target > 0")
        self._target = target
        self._minimum = minimum
        self._maximum = maximum
        self._size = first

    @property
    def size(self) -> int:
        return self._size

    def record(self, items: int, seconds: float) -> None:
        """A step did ``items`` in ``seconds``; size the next to take ``target``."""
        if items < self._size // 2 or seconds <= 0:
            return  # a short step (the work ran out) says little about the speed
        wanted = int(items * self._target / seconds)
        self._size = max(self._minimum, min(self._maximum, wanted))
