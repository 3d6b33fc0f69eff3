"""One peer connection, sans-I/O: the secure channel and the sync session behind one API.

Theory of operation
-------------------
:class:`SyncConnection` is h11's ``Connection`` for p2paid. It owns a
:class:`~p2paid.core.wire.SecureChannel` (Noise, framing, messages) and, once the host
has admitted the peer, a :class:`~p2paid.core.replication.SyncSession`. It does no
I/O and reads no clock: the driver feeds it bytes with :meth:`receive_data` (``b""``
= EOF), pulls events with :meth:`next_event`, writes out :meth:`data_to_send`, and
calls :meth:`tick` at :meth:`next_deadline`, passing the time each time.

Most messages are answered inside :meth:`next_event` (Vectors, Acks, Pings...).
What needs the host comes out as an event, and the connection then waits
(:data:`PAUSED`) for the host's answer:

* :class:`Authenticated`: the handshake is done; the host admits the peer with
  :meth:`start` (which begins the session) or refuses it with :meth:`close`.
  Until :meth:`start`, the connection is a plain secure channel: every message comes
  out as :class:`RawMessage` (tools and hostile test peers use this).
* :class:`HelloReceived`: the host checks the peer's Hello (a relay's tokens) and
  answers :meth:`accept_hello` or :meth:`close`.
* :class:`BatchReceived`: an Envelopes batch, checked but not received. Verifying,
  storing and applying it is heavy, so the *driver* has the replica receive it (in
  slices, with the event loop running between them) and reports the combined
  result with :meth:`batch_done`, which sends the Ack (or Refused).

Session events (:class:`~p2paid.core.replication.SyncEvent`) come out as they happen;
:class:`ConnectionEnded` says the exchange is over. Our own goodbye is
:meth:`close`, which queues ``Close(reason)`` once, whatever the state (after an
error too: the peer is told why).

Timers, all from times the driver passes in: the handshake must finish within
HANDSHAKE_TIMEOUT of the connection's creation, the peer's Hello must arrive within
HELLO_TIMEOUT of :meth:`start`, a peer silent for IDLE_TIMEOUT is dropped, a Ping
goes out after KEEPALIVE_INTERVAL without sending, and more than MAX_PINGS Pings
per KEEPALIVE_INTERVAL are a flood. A relay's upload rate limit is a token bucket
fed by :meth:`receive_data`; :attr:`read_delay` says how long to wait before reading
more.

States (one table, :data:`TRANSITIONS`)::

    HANDSHAKING --handshake done--> AUTHENTICATED --start()--> GREETING
    GREETING --peer's Hello--> CHECKING_HELLO --accept_hello()--> SYNCING
    SYNCING --Envelopes--> APPLYING --batch_done()--> SYNCING
    any state --close(), the peer's Close or EOF, no shared board--> CLOSED
    any state --an exception from any method, send_failed()--> ERROR

After a raise the connection is in ERROR and inert: :meth:`next_event` returns
:class:`ConnectionEnded`, input is ignored, and only :meth:`close` still does
something (it queues the Close, if the channel can still send).
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Final, ParamSpec, TypeVar, final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2paid.core.codes import CloseReason, RefusedCode
from p2paid.core.events import (
    PAUSED,
    Authenticated,
    BatchReceived,
    ConnectionEnded,
    ConnectionEvent,
    HelloReceived,
    Paused,
    RawMessage,
    Throttled,
)
from p2paid.core.ratelimit import TokenBucket
from p2paid.core.replication import PendingBatch, Received, Replica, SyncSession
from p2paid.core.wire import (
    NEED_DATA,
    Ack,
    Checkpoints,
    Close,
    ConnectionClosed,
    Envelopes,
    HandshakeComplete,
    Hello,
    Message,
    NeedData,
    Ping,
    Refused,
    SecureChannel,
)
from p2paid.errors import (
    HandshakeError,
    LocalProtocolError,
    P2paidError,
    RemoteProtocolError,
)

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "HELLO_TIMEOUT",
    "IDLE_TIMEOUT",
    "KEEPALIVE_INTERVAL",
    "MAX_PINGS",
    "NEED_DATA",
    "PAUSED",
    "TRANSITIONS",
    "Authenticated",
    "BatchReceived",
    "ConnectionEnded",
    "ConnectionEvent",
    "ConnectionState",
    "HelloReceived",
    "RawMessage",
    "SyncConnection",
    "Throttled",
]

# Read when a connection is made (tests shorten them by patching this module).
HANDSHAKE_TIMEOUT: Final = 10.0
#: A peer that has not sent a Hello this long after the session started is dropped.
HELLO_TIMEOUT: Final = 5.0
KEEPALIVE_INTERVAL: Final = 15.0
IDLE_TIMEOUT: Final = 60.0
#: Pings a peer may send per KEEPALIVE_INTERVAL before it counts as flooding.
MAX_PINGS: Final = 20
_NEVER: Final = float("inf")
_P = ParamSpec("_P")
_R = TypeVar("_R")


class ConnectionState(enum.Enum):
    """Where a :class:`SyncConnection` is (see the module docstring)."""

    #: Noise handshake messages are being exchanged
    HANDSHAKING = "handshaking"
    #: authenticated; waiting for the host to admit the peer (a plain channel until then)
    AUTHENTICATED = "authenticated"
    #: the session started (our Hello sent, unless we are a relay); the peer's awaited
    GREETING = "greeting"
    #: the peer's Hello is with the host, to be accepted or refused
    CHECKING_HELLO = "checking hello"
    #: both Hellos exchanged: vectors, batches, acknowledgements, live pushes
    SYNCING = "syncing"
    #: a batch from the peer is with the driver, being received by the replica
    APPLYING = "applying"
    #: the exchange is over (only our Close may still go out)
    CLOSED = "closed"
    #: a method raised, or a write failed; nothing more happens
    ERROR = "error"


class _Input(enum.Enum):
    HANDSHAKE_DONE = "handshake done"
    START = "start()"
    PEER_HELLO = "the peer's Hello"
    ACCEPT_HELLO = "accept_hello()"
    BATCH = "an Envelopes batch"
    BATCH_DONE = "batch_done()"


_S = ConnectionState
#: Every regular transition: ``(state, input) -> next state``. Besides these, any state
#: goes to CLOSED (close(), the peer's Close or EOF, nothing shared) or ERROR (a raise).
TRANSITIONS: Final[dict[tuple[ConnectionState, _Input], ConnectionState]] = {
    (_S.HANDSHAKING, _Input.HANDSHAKE_DONE): _S.AUTHENTICATED,
    (_S.AUTHENTICATED, _Input.START): _S.GREETING,
    (_S.GREETING, _Input.PEER_HELLO): _S.CHECKING_HELLO,
    (_S.CHECKING_HELLO, _Input.ACCEPT_HELLO): _S.SYNCING,
    (_S.SYNCING, _Input.BATCH): _S.APPLYING,
    (_S.APPLYING, _Input.BATCH_DONE): _S.SYNCING,
}
#: States in which the connection waits for the host's answer to an event.
_WAITING: Final = frozenset({_S.CHECKING_HELLO, _S.APPLYING})
#: States with a running session.
_SESSION: Final = frozenset({_S.GREETING, _S.CHECKING_HELLO, _S.SYNCING, _S.APPLYING})


# ---------------------------------------------------------------------- connection


@final
class SyncConnection:
    """The Noise channel and the sync session of one connection. Sans-I/O.

    Args:
        initiator: True on the side that dialled.
        node_key: our static X25519 key.
        now: the driver's clock now (any monotonic clock, in seconds).
        expected_remote: for a dialler that knows whom it calls: abort the handshake
            before revealing our identity if the responder's node id differs.
        rate_limit: bytes/s the peer may send us (a relay's per-client limit), or None.
        on_message: called with ``(outgoing, message)`` for every message sent and
            received (test doubles record traffic with it).
    """

    def __init__(
        self,
        initiator: bool,
        node_key: X25519PrivateKey,
        *,
        now: float,
        expected_remote: bytes | None = None,
        rate_limit: int | None = None,
        on_message: Callable[[bool, Message], None] | None = None,
    ) -> None:
        self.channel = SecureChannel(initiator, node_key, expected_remote=expected_remote)
        self.state = _S.HANDSHAKING
        self.session: SyncSession | None = None
        #: why the connection ends: None while it runs, or when the peer simply hung up
        self.close_reason: str | None = None
        #: the reason the peer gave in its Close, if it sent one
        self.peer_close_reason: str | None = None
        #: seconds to wait before reading more (the rate limit)
        self.read_delay = 0.0
        self._on_message = on_message
        self._rate = rate_limit or None  # (0: no limit)
        self._bucket: TokenBucket | None = None
        self._throttled = False
        self._events: deque[ConnectionEvent] = deque()
        self._hello: Hello | None = None
        self._batch: PendingBatch | None = None
        self._token = 0
        self._injected_batches: set[int] = set()
        self._can_send = True
        self._close_sent = False
        self._handshake_deadline = now + HANDSHAKE_TIMEOUT
        self._hello_deadline = _NEVER
        self._hello_seen = False
        self._last_received = self._last_sent = self._ping_window = now
        self._pings = 0
        self._now = now

    def __repr__(self) -> str:
        return f"<SyncConnection {self.state.value}>"

    # -------------------------------------------------------------- state

    @property
    def initiator(self) -> bool:
        return self.channel.initiator

    @property
    def remote_id(self) -> bytes:
        """The peer's node id (empty before the handshake completed)."""
        return self.channel.remote_static or b""

    @property
    def handshake_hash(self) -> bytes:
        """The channel binding (empty before the handshake completed)."""
        return self.channel.handshake_hash or b""

    @property
    def has_data_to_send(self) -> bool:
        return self.channel.has_data_to_send

    def _move(self, event: _Input) -> None:
        after = TRANSITIONS.get((self.state, event))
        if after is None:
            raise LocalProtocolError(f"{event.value} in state {self.state.value}")
        self.state = after

    def _fail(self, exc: BaseException) -> None:
        """Any raise leaves the connection in ERROR, knowing the reason to give."""
        self.state = _S.ERROR
        self._events.clear()
        if isinstance(exc, RemoteProtocolError):
            self.close_reason = exc.close_reason
        elif isinstance(exc, P2paidError):
            self.close_reason = CloseReason.LOCAL_ERROR

    def _guarded(self, method: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(*args, **kwargs)
        except BaseException as exc:
            self._fail(exc)
            raise

    # -------------------------------------------------------------- output

    def _send(self, messages: Iterable[Message]) -> None:
        for message in messages:
            if self._on_message is not None:
                self._on_message(True, message)
            self.channel.send(message)

    def data_to_send(self, now: float) -> bytes:
        """Bytes to write now (possibly empty); ``now`` is when they go out."""
        if not self._can_send:
            return b""
        data = self.channel.data_to_send()
        if data:
            self._last_sent = now
        return data

    def send_failed(self) -> None:
        """A write failed or was cut short: nothing more can follow it on the stream."""
        self._can_send = False
        self.state = _S.ERROR

    def inject(self, message: Message) -> None:
        """Send ``message`` past the session, which never learns of it: for tools and
        test peers that must misbehave (a forged batch, a second Hello). The Ack that
        answers an injected batch is kept from the session too.

        Raises:
            LocalProtocolError: before the handshake completed.
        """
        self._send([message])
        if isinstance(message, Envelopes):
            self._injected_batches.add(message.batch)

    def close(self, reason: str | None = None) -> None:
        """End the connection: queue ``Close(reason)`` (once; if the channel can still
        send), default the reason already known or ``"bye"``. Allowed in every state."""
        if reason is not None and self.close_reason is None:
            self.close_reason = reason
        text = reason or self.close_reason or CloseReason.BYE
        if not self._close_sent and self._can_send and self.channel.is_open:
            self._close_sent = True
            self._send([Close(text[:200])])
        if self.state is not _S.ERROR:
            self.state = _S.CLOSED

    # -------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray, now: float) -> None:
        """Feed bytes read from the stream at ``now``; ``b""`` means the peer closed.

        Raises:
            RemoteProtocolError: the bytes break the protocol (the connection is then
                in ERROR; tell the peer with :meth:`close`).
        """
        if self.state in (_S.CLOSED, _S.ERROR):
            return
        self._guarded(self._receive_data, data, now)

    def _receive_data(self, data: bytes | bytearray, now: float) -> None:
        self._now = self._last_received = now
        bucket = self._bucket
        if bucket is not None:
            self.read_delay = bucket.take(len(data), now)
            if self.read_delay and not self._throttled:
                # Told once, to the driver (for its log) and to the peer.
                self._throttled = True
                self._events.append(Throttled(bucket.rate))
                self._send([Refused(b"", RefusedCode.RATE_LIMITED,
                                    f"this relay reads at most {bucket.rate} bytes/s")])
        self.channel.receive_data(data)

    def next_event(self) -> ConnectionEvent | NeedData | Paused:
        """The next event, :data:`NEED_DATA`, or :data:`PAUSED` while the host has an
        event to answer. Messages that need no host are answered here.

        Raises:
            RemoteProtocolError: the peer broke the protocol (the connection is then
                in ERROR; tell the peer with :meth:`close`).
        """
        if self._events:
            return self._events.popleft()
        if self.state in (_S.CLOSED, _S.ERROR):
            return ConnectionEnded(self.close_reason)
        return self._guarded(self._next_event)

    def _next_event(self) -> ConnectionEvent | NeedData | Paused:
        while not self._events:
            if self.state in _WAITING:
                return PAUSED
            if self.state in (_S.CLOSED, _S.ERROR):
                return ConnectionEnded(self.close_reason)
            event = self.channel.next_event()
            if isinstance(event, NeedData):
                return NEED_DATA
            if isinstance(event, HandshakeComplete):
                self._move(_Input.HANDSHAKE_DONE)
                return Authenticated(event.remote_static, event.handshake_hash)
            if isinstance(event, ConnectionClosed):
                self.state = _S.CLOSED
                return ConnectionEnded(None)
            if self._on_message is not None:
                self._on_message(False, event.message)
            if self.session is None:
                return RawMessage(event.message)
            self._on_session_message(event.message)
        return self._events.popleft()

    def _on_session_message(self, message: Message) -> None:
        session = self.session
        assert session is not None
        if isinstance(message, Ping):
            self._count_ping()
        if isinstance(message, Hello) and self.state is _S.GREETING:
            self._move(_Input.PEER_HELLO)
            self._hello_seen = True
            self._hello = message
            self._events.append(HelloReceived(message))
            return
        if isinstance(message, Ack) and message.batch in self._injected_batches:
            self._injected_batches.discard(message.batch)  # the session never sent it
            return
        if isinstance(message, Envelopes | Checkpoints):
            self._batch = session.begin_batch(message)
            self._move(_Input.BATCH)
            self._token += 1
            self._events.append(BatchReceived(self._token, self._batch.board_id,
                                              self._batch.envelopes))
            return
        self._send(session.handle(message))
        self._take_session_events()
        if isinstance(message, Close):
            self.peer_close_reason = message.reason
            self._end(f"{CloseReason.PEER_CLOSED}: {message.reason}")

    def _count_ping(self) -> None:
        """Keepalives are cheap but not free: a peer that floods them is dropped."""
        if self._now - self._ping_window > KEEPALIVE_INTERVAL:
            self._ping_window, self._pings = self._now, 0
        self._pings += 1
        if self._pings > MAX_PINGS:
            raise RemoteProtocolError("too many pings", close_reason=CloseReason.FLOOD)

    def _take_session_events(self) -> None:
        assert self.session is not None
        self._events.extend(self.session.events)
        self.session.events.clear()

    def _end(self, reason: str | None) -> None:
        self.close_reason = reason
        self.state = _S.CLOSED
        self._events.append(ConnectionEnded(reason))

    # -------------------------------------------------------------- the host's answers

    def start(
        self,
        replica: Replica,
        now: float,
        *,
        to_relay: bool = False,
        boards: Sequence[bytes] | None = None,
        token: bytes | None = None,
        batch_bytes: int | None = None,
        window: int | None = None,
    ) -> None:
        """Admit the peer: start the sync session over ``replica`` (our Hello goes out,
        unless we are a relay, which answers).

        Args:
            to_relay: we dialled a relay (boards are named by id).
            boards: only these board ids are offered (default: all of the replica's).
            token: a relay access token for our Hello.
            batch_bytes, window: the session's batch size and window (its defaults).
        """
        self._guarded(self._start, replica, now, to_relay, boards, token, batch_bytes, window)

    def _start(self, replica: Replica, now: float, to_relay: bool,
               boards: Sequence[bytes] | None, token: bytes | None,
               batch_bytes: int | None, window: int | None) -> None:
        self._move(_Input.START)
        options: dict[str, int] = {}
        if batch_bytes is not None:
            options["batch_bytes"] = batch_bytes
        if window is not None:
            options["window"] = window
        self.session = SyncSession(replica, initiator=self.initiator,
                                   handshake_hash=self.handshake_hash, to_relay=to_relay,
                                   boards=boards, **options)
        self._now = now
        self._hello_deadline = now + HELLO_TIMEOUT
        if self._rate is not None:
            self._bucket = TokenBucket(self._rate, now)
        self._send(replace(m, token=token) if token is not None and isinstance(m, Hello)
                   else m for m in self.session.start())

    def accept_hello(self, notices: Sequence[Message] = ()) -> None:
        """Let the session take the peer's Hello, after sending ``notices`` (a relay's
        Refused about a token, say).

        Raises:
            RemoteProtocolError: the Hello breaks the protocol.
        """
        self._guarded(self._accept_hello, notices)

    def _accept_hello(self, notices: Sequence[Message]) -> None:
        self._move(_Input.ACCEPT_HELLO)
        session, hello = self.session, self._hello
        assert session is not None and hello is not None
        self._hello = None
        self._send(notices)
        self._send(session.handle(hello))
        self._take_session_events()
        if session.greeted and not session.shared_boards:
            self._end(CloseReason.NOTHING_SHARED)

    def batch_done(self, token: int, received: Received) -> None:
        """The replica received the batch of :class:`BatchReceived` ``token``: send the
        Ack (or Refused) and go on.

        Raises:
            RemoteProtocolError: the batch proves the peer at fault (a forgery, say).
        """
        self._guarded(self._batch_done, token, received)

    def _batch_done(self, token: int, received: Received) -> None:
        if token != self._token or self._batch is None:
            raise LocalProtocolError(f"batch_done for batch {token}, not the one pending")
        self._move(_Input.BATCH_DONE)
        batch, self._batch = self._batch, None
        assert self.session is not None
        self._send(self.session.end_batch(batch, received))
        self._take_session_events()

    def local_changed(self, board_id: bytes) -> None:
        """The replica's holdings of ``board_id`` grew: send the peer what it lacks."""
        if self.session is not None and self.state in _SESSION:
            self._guarded(self._local_changed, self.session, board_id)

    def _local_changed(self, session: SyncSession, board_id: bytes) -> None:
        self._send(session.local_changed(board_id))

    # -------------------------------------------------------------- timers

    def next_deadline(self) -> float:
        """When :meth:`tick` has something to do next (``inf``: never, as things stand)."""
        if self.state is _S.HANDSHAKING:
            return self._handshake_deadline
        if self.state not in _SESSION:
            return _NEVER
        hello = _NEVER if self._hello_seen else self._hello_deadline
        return min(hello, self._last_received + IDLE_TIMEOUT,
                   self._last_sent + KEEPALIVE_INTERVAL)

    def tick(self, now: float) -> None:
        """Run the timers that are due at ``now`` (a Ping may be queued).

        Raises:
            HandshakeError: the handshake took too long.
            RemoteProtocolError: no Hello in time, or the peer fell silent.
        """
        if self.state not in (_S.CLOSED, _S.ERROR):
            self._guarded(self._tick, now)

    def _tick(self, now: float) -> None:
        self._now = now
        if self.state is _S.HANDSHAKING:
            if now >= self._handshake_deadline:
                raise HandshakeError(f"no handshake within {HANDSHAKE_TIMEOUT:g} s")
            return
        if self.state not in _SESSION:
            return
        if not self._hello_seen and now >= self._hello_deadline:
            raise RemoteProtocolError(f"no hello within {HELLO_TIMEOUT:g} s",
                                      close_reason=CloseReason.NO_HELLO)
        if now - self._last_received >= IDLE_TIMEOUT:
            raise RemoteProtocolError("peer silent for too long", close_reason=CloseReason.IDLE)
        if now - self._last_sent >= KEEPALIVE_INTERVAL:
            self._send([Ping(int.from_bytes(os.urandom(4), "big"))])
