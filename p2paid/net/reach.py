"""Whether a dial target can be reached: its state for ``p2paid status``, and the log.

A target that cannot be reached is logged once per kind of failure during an outage
("cannot reach peer 10.0.0.5:7446 (connection refused); retrying with backoff"), and
once more when it comes back ("reached peer 10.0.0.5:7446 again after 3 attempts");
the retries in between are debug output only. Targets found by mDNS come and go with
the network, so theirs are always debug output.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Final, final

__all__ = ["CONNECTED", "CONNECTING", "UNREACHABLE", "Reachability", "TargetState",
           "dial_error_text"]

log = logging.getLogger("p2paid.net")

CONNECTED: Final = "connected"
CONNECTING: Final = "connecting"
UNREACHABLE: Final = "unreachable"


@final
@dataclass(frozen=True, slots=True)
class TargetState:
    """One configured peer or relay as the running node publishes it."""

    kind: str  #: "peer" or "relay"
    address: str
    state: str  #: "connected", "connecting" (not tried yet, or redialling) or "unreachable"
    since: float | None  #: when it entered that state (seconds since the epoch)
    last_error: str | None  #: the last failure (while unreachable)
    attempts: int  #: failed attempts in a row


def dial_error_text(exc: BaseException) -> str:
    """A short reason for a failed dial: ``connection refused``, ``timed out``, ..."""
    causes: list[BaseException] = [exc]
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup):
        causes = [*cause.exceptions, exc]
    elif cause is not None:
        causes = [cause, exc]
    for one in causes:
        if isinstance(one, OSError) and (one.errno or one.strerror):
            text = os.strerror(one.errno) if isinstance(one.errno, int) and one.errno > 0 \
                else str(one.strerror)
            return text[:1].lower() + text[1:]
    text = str(exc)
    return "timed out" if text.endswith("timed out") else text or type(exc).__name__


@final
@dataclass(slots=True)
class Reachability:
    """The reachability of one dial target, and its log lines.

    Args:
        what: how the log names it, e.g. ``peer 10.0.0.5:7446``.
        quiet: log at debug level only (targets found by mDNS).
    """

    what: str
    quiet: bool = False
    state: str = CONNECTING
    since: float = field(default_factory=time.time)
    last_error: str | None = None
    attempts: int = 0
    _logged: set[str] = field(default_factory=set)

    def failed(self, reason: str, exc: BaseException | None = None) -> None:
        """An attempt failed: logged if this kind of failure is new in this outage."""
        self.attempts += 1
        if self.state != UNREACHABLE:
            self.state, self.since = UNREACHABLE, time.time()
        self.last_error = reason
        if reason in self._logged:
            log.debug("cannot reach %s (%s) (again)", self.what, reason)
            return
        self._logged.add(reason)
        if exc is not None:
            log.error("dialling %s failed unexpectedly; retrying with backoff: %s",
                      self.what, reason, exc_info=exc)
        elif self.quiet:
            log.debug("cannot reach %s (%s)", self.what, reason)
        else:
            log.warning("cannot reach %s (%s); retrying with backoff", self.what, reason)

    def reached(self) -> None:
        """A connection to the target is up (ours, or one the target opened)."""
        if self.state == CONNECTED:
            return
        if self.state == UNREACHABLE and not self.quiet:
            log.info("reached %s again after %d failed attempt%s", self.what, self.attempts,
                     "" if self.attempts == 1 else "s")
        self.state, self.since = CONNECTED, time.time()
        self.last_error, self.attempts = None, 0
        self._logged.clear()

    def lost(self) -> None:
        """The connection ended; the next attempt tells whether it is still there."""
        if self.state == CONNECTED:
            self.state, self.since = CONNECTING, time.time()

    def snapshot(self, kind: str, address: str) -> TargetState:
        return TargetState(kind, address, self.state, self.since, self.last_error,
                           self.attempts)
