"""Who gets a connection slot (``protocol/SPEC.md`` 11.3), for nodes and relays alike.

Four limits, all counted here:

* handshakes in progress, in all and per remote address: a flood of silent or
  half-open sockets cannot pin more than a few slots, and none from one address
  beyond its share;
* authenticated connections in all (``max_connections``);
* inbound authenticated connections per remote address (``max_per_address``; an
  IPv6 client counts by its /64), so that one machine cannot take every slot.

A **known** peer (one this node synced a board with before, or a relay client whose
uploads the relay stored) and every connection we dialled ourselves are exempt from
the per-address cap, and when the connections are all taken, such a newcomer
**evicts a stranger**: the youngest inbound connection that is not known. If there is
none, a known newcomer evicts the inbound peer that became known most recently, if that
was after the newcomer did: a hostile member who makes many node keys known cannot keep
older members out. Strangers never evict anyone. Connections that send no Hello within
HELLO_TIMEOUT are closed by the connection itself (:mod:`p2paid.core.connection`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from p2paid.core.codes import CloseReason

if TYPE_CHECKING:
    from p2paid.net.connection import Connection

__all__ = ["ADDRESS_FULL", "EVICTED", "FULL", "Admission", "AdmissionLimits"]

log = logging.getLogger("p2paid.net")

#: Close reasons (sent to the peer).
FULL: Final = CloseReason.FULL
ADDRESS_FULL: Final = CloseReason.ADDRESS_FULL
EVICTED: Final = CloseReason.EVICTED
#: Seconds between two log lines about the same limit.
_LOG_EVERY: Final = 60.0


@final
@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The caps; see the module docstring."""

    max_connections: int
    max_per_address: int
    max_handshakes: int
    max_handshakes_per_address: int


@final
class Admission:
    """Counts handshakes and connections; decides who is admitted and who is evicted."""

    def __init__(self, limits: AdmissionLimits) -> None:
        self.limits = limits
        self._handshakes: Counter[str] = Counter()
        self._handshaking = 0
        self._inbound: Counter[str] = Counter()
        #: admitted connections, oldest first
        self._conns: dict[Connection, None] = {}
        self._evicting: set[Connection] = set()
        self._logged: dict[str, float] = {}
        self.refused = Counter[str]()

    @property
    def handshaking(self) -> int:
        return self._handshaking

    @property
    def connections(self) -> int:
        """Admitted connections, not counting those being evicted."""
        return len(self._conns) - len(self._evicting)

    # ------------------------------------------------------------------ handshakes

    def begin_handshake(self, address_key: str) -> bool:
        """A socket was accepted from ``address_key``: may it start a handshake?"""
        limits = self.limits
        if self._handshaking >= limits.max_handshakes:
            self._refuse("handshakes", "too many handshakes in progress (%d); closing new "
                         "sockets at once", limits.max_handshakes)
            return False
        if self._handshakes[address_key] >= limits.max_handshakes_per_address:
            self._refuse("address-handshakes", "too many handshakes in progress from one "
                         "address (%d, %s)", limits.max_handshakes_per_address, address_key)
            return False
        self._handshaking += 1
        self._handshakes[address_key] += 1
        return True

    def end_handshake(self, address_key: str) -> None:
        self._handshaking -= 1
        self._handshakes[address_key] -= 1
        if not self._handshakes[address_key]:
            del self._handshakes[address_key]

    # ------------------------------------------------------------------ connections

    def admit(self, conn: Connection, *, replacing: bool = False) -> str | None:
        """Admit an authenticated connection, evicting a stranger for a known peer when
        the slots are taken. Returns None, or the reason to close ``conn`` with.

        Args:
            replacing: ``conn`` replaces a duplicate connection to the same peer (which
                is closing), so no cap applies.
        """
        if not replacing:
            reason = self._make_room(conn)
            if reason is not None:
                return reason
        self._conns[conn] = None
        if conn.address_key is not None and not conn.initiator:
            self._inbound[conn.address_key] += 1
        return None

    def _make_room(self, conn: Connection) -> str | None:
        exempt = conn.known or conn.initiator
        key = conn.address_key
        if (key is not None and not exempt
                and self._inbound[key] >= self.limits.max_per_address):
            self._refuse("address", "connection limit per address (%d) reached for %s",
                         self.limits.max_per_address, key)
            return ADDRESS_FULL
        if self.connections < self.limits.max_connections:
            return None
        victim = self._victim(conn) if exempt else None
        if victim is None:
            self._refuse("full", "connection limit (%d) reached; refusing %s",
                         self.limits.max_connections, conn.address)
            return FULL
        log.info("evicting stranger %s for known peer %s", victim.address, conn.address)
        self._evicting.add(victim)
        victim.close(EVICTED)
        return None

    def release(self, conn: Connection) -> None:
        """An admitted connection ended."""
        if conn not in self._conns:
            return
        del self._conns[conn]
        self._evicting.discard(conn)
        if conn.address_key is not None and not conn.initiator:
            key = conn.address_key
            self._inbound[key] -= 1
            if not self._inbound[key]:
                del self._inbound[key]

    def _victim(self, newcomer: Connection) -> Connection | None:
        """Whom ``newcomer`` (known, or dialled by us) replaces: the youngest inbound
        connection of a stranger; failing that, for a known newcomer, the inbound peer
        that became known most recently, if after the newcomer did (so that keys made
        known in bulk by a hostile member cannot keep older members out)."""
        candidates = [c for c in self._conns
                      if not c.initiator and c not in self._evicting]
        for conn in reversed(candidates):
            if conn.known_since is None:
                return conn
        since = newcomer.known_since
        if since is None:
            return None
        newer = [c for c in candidates if c.known_since is not None and c.known_since > since]
        return max(newer, key=lambda c: c.known_since or 0.0, default=None)

    def _refuse(self, what: str, message: str, *args: object) -> None:
        self.refused[what] += 1
        now = time.monotonic()
        if now - self._logged.get(what, -_LOG_EVERY) >= _LOG_EVERY:
            self._logged[what] = now
            log.warning(message + " (logged once a minute)", *args)
