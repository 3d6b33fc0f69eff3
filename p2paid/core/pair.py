"""Two :class:`~p2paid.core.connection.SyncConnection` ends joined back to back in one
process: the real protocol over an in-memory link (h11's ``tests/helpers.py``
``ConnectionPair``).

Bytes wait in per-direction queues until :meth:`ConnectionPair.deliver` moves them
(all at once, or in arbitrary slices), so a test or a benchmark decides when each
flight lands and counts what crossed. Each end drives its connection as the trio
driver does, but synchronously: it starts the session once authenticated, accepts
the peer's Hello, and has its replica receive each batch whole. Subclasses add
checks or propagation through hooks (:meth:`~ConnectionPair.before_start`,
:meth:`~ConnectionPair.on_sent`, :meth:`~ConnectionPair.on_received`,
:meth:`~ConnectionPair.after_event`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2paid.core.connection import (
    Authenticated,
    BatchReceived,
    ConnectionEnded,
    HelloReceived,
    RawMessage,
    SyncConnection,
)
from p2paid.core.replication import Replica, SyncEvent, SyncSession
from p2paid.core.wire import NEED_DATA, Message
from p2paid.errors import LocalProtocolError

__all__ = ["ConnectionPair", "PairEnd"]


@dataclass(eq=False)
class PairEnd:
    """One end of a :class:`ConnectionPair`: its connection, replica and traffic."""

    conn: SyncConnection
    replica: Replica
    #: keyword arguments of :meth:`SyncConnection.start`
    options: dict[str, Any]
    #: bytes sent and not yet delivered to the other end
    outbox: bytearray = field(default_factory=bytearray)
    #: every message this end sent (not those injected) and received
    sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    #: session events, in order
    events: list[SyncEvent] = field(default_factory=list)
    #: the exchange is over for this end
    closed: bool = False

    @property
    def session(self) -> SyncSession | None:
        return self.conn.session

    @property
    def initiator(self) -> bool:
        return self.conn.initiator


class ConnectionPair:
    """A dialler ``a`` and a listener ``b`` over an in-memory link (direction 0 is a->b).

    Args:
        a, b: the two replicas.
        a_key, b_key: the node keys (fresh ones by default).
        a_options: :meth:`SyncConnection.start` options of the dialler (``to_relay``,
            ``boards``, ``token``); ``batch_bytes`` and ``window`` apply to both ends.
        now: the time both connections see (timers fire only through :meth:`tick`).
    """

    def __init__(
        self,
        a: Replica,
        b: Replica,
        *,
        a_key: X25519PrivateKey | None = None,
        b_key: X25519PrivateKey | None = None,
        a_options: dict[str, Any] | None = None,
        batch_bytes: int | None = None,
        window: int | None = None,
        now: float = 0.0,
    ) -> None:
        self.now = now
        shared = {"batch_bytes": batch_bytes, "window": window}
        self.ends = (
            self._end(True, a, a_key, {**(a_options or {}), **shared}),
            self._end(False, b, b_key, shared),
        )
        self.bytes_delivered = 0
        self._injecting = False
        for end in self.ends:
            self._flush(end)

    def _end(self, initiator: bool, replica: Replica, key: X25519PrivateKey | None,
             options: dict[str, Any]) -> PairEnd:
        holder: list[PairEnd] = []

        def tap(outgoing: bool, message: Message) -> None:
            if outgoing and not self._injecting:
                self.on_sent(holder[0], message)
            elif not outgoing:
                self.on_received(holder[0], message)

        conn = SyncConnection(initiator, key or X25519PrivateKey.generate(), now=self.now,
                              on_message=tap)
        holder.append(self.new_end(conn, replica, options))
        return holder[0]

    def new_end(self, conn: SyncConnection, replica: Replica,
                options: dict[str, Any]) -> PairEnd:
        """Make one end (subclasses make ends that record more)."""
        return PairEnd(conn, replica, options)

    @property
    def a(self) -> PairEnd:
        return self.ends[0]

    @property
    def b(self) -> PairEnd:
        return self.ends[1]

    def pending(self, direction: int) -> int:
        """Bytes waiting to go in ``direction``."""
        return len(self.ends[direction].outbox)

    def idle(self) -> bool:
        return not self.ends[0].outbox and not self.ends[1].outbox

    # ---------------------------------------------------------------- hooks

    def before_start(self, end: PairEnd) -> None:
        """``end`` is authenticated; its session starts next."""

    def on_sent(self, end: PairEnd, message: Message) -> None:
        """``end`` sent ``message`` (not an injected one)."""
        end.sent.append(message)

    def on_received(self, end: PairEnd, message: Message) -> None:
        """``end`` received ``message``, before handling it."""
        end.received.append(message)

    def after_event(self, end: PairEnd) -> None:
        """``end`` handled an event, or all that had arrived (push what grew, say)."""

    # ---------------------------------------------------------------- sending

    def _flush(self, end: PairEnd) -> None:
        end.outbox += end.conn.data_to_send(self.now)

    def inject(self, end: PairEnd, message: Message) -> None:
        """Send ``message`` from ``end`` past its session (a misbehaving peer)."""
        self._injecting = True
        try:
            end.conn.inject(message)
        finally:
            self._injecting = False
        self._flush(end)

    def local_changed(self, end: PairEnd, board_id: bytes) -> None:
        """``end``'s replica grew: its session sends the other end what it lacks."""
        if not end.closed:
            end.conn.local_changed(board_id)
            self._flush(end)

    def tick(self, now: float) -> None:
        """Advance both ends' clocks to ``now`` and run their due timers."""
        self.now = now
        for end in self.ends:
            end.conn.tick(now)
            self._flush(end)

    # ---------------------------------------------------------------- delivering

    def deliver(self, direction: int, limit: int | None = None) -> int:
        """Move up to ``limit`` bytes (default all) one way and process what arrives."""
        src, dst = self.ends[direction], self.ends[1 - direction]
        size = len(src.outbox) if limit is None else min(limit, len(src.outbox))
        if size == 0:
            return 0
        data = bytes(src.outbox[:size])
        del src.outbox[:size]
        self.bytes_delivered += size
        dst.conn.receive_data(data, self.now)
        self._process(dst)
        return size

    def close(self, direction: int) -> None:
        """The sender of ``direction`` hangs up cleanly (EOF after its queued bytes)."""
        self.deliver(direction)
        dst = self.ends[1 - direction]
        dst.conn.receive_data(b"", self.now)
        self._process(dst)

    def _process(self, end: PairEnd) -> None:
        conn = end.conn
        while not end.closed:
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, Authenticated):
                self.before_start(end)
                conn.start(end.replica, self.now, **end.options)
            elif isinstance(event, HelloReceived):
                conn.accept_hello()
            elif isinstance(event, BatchReceived):
                conn.batch_done(event.token, end.replica.receive(event.board_id,
                                                                 event.envelopes))
            elif isinstance(event, SyncEvent):
                end.events.append(event)
            elif isinstance(event, ConnectionEnded):
                end.closed = True
            elif isinstance(event, RawMessage):
                raise LocalProtocolError("a message before the session started")
            self._flush(end)
            self.after_event(end)
        self._flush(end)
        self.after_event(end)

    # ---------------------------------------------------------------- driving

    def handshake(self) -> None:
        """Deliver the three handshake messages only."""
        for direction in (0, 1, 0):
            self.deliver(direction)

    def run(self, max_trips: int = 10_000) -> int:
        """Deliver until quiet, both ways at once per trip; returns the one-way trips."""
        trips = 0
        while not self.idle():
            if trips >= max_trips:
                raise LocalProtocolError("the connection never went quiet")
            sizes = [self.pending(0), self.pending(1)]
            for direction in (0, 1):
                self.deliver(direction, sizes[direction])
            trips += 1
        return trips

    def flights(self, max_flights: int = 10_000) -> int:
        """Deliver until quiet, one direction after the other, each time everything
        waiting; returns how many deliveries carried bytes."""
        flights = 0
        while not self.idle():
            for direction in (0, 1):
                if self.deliver(direction):
                    flights += 1
            if flights >= max_flights:
                raise LocalProtocolError("the connection never went quiet")
        return flights
