"""One peer over a real TCP stream, driven by the test: the library's own
:class:`~p2paid.core.connection.SyncConnection`, with every message recorded.

Until a session is started (:meth:`StreamPeer.start_session`, or ``replica=`` when
connecting) the connection is a plain secure channel: the test sends whatever it likes
(:meth:`StreamPeer.send`, even crafted plaintext) and reads what arrives. Once a
session runs, it answers the far side as a node's would (batches are received whole,
synchronously), and the test can still inject messages it never learns of.

:class:`~node_helpers.HandPeer`, :class:`~relay_helpers.RelayClient` and
:class:`~attack_helpers.NoiseClient` are this, with a few conveniences each.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Self, TypeVar

import trio

from p2paid.core.connection import (
    Authenticated,
    BatchReceived,
    ConnectionEnded,
    ConnectionState,
    HelloReceived,
    SyncConnection,
)
from p2paid.core.identity import NodeKey
from p2paid.core.replication import Replica, SyncEvent, SyncSession
from p2paid.core.wire import NEED_DATA, Close, Message, MessageReceived, SecureChannel
from p2paid.errors import RemoteProtocolError

__all__ = ["PeerClosed", "StreamPeer"]

_M = TypeVar("_M", bound=Message)
RECEIVE = 256 * 1024


class PeerClosed(Exception):
    """The far side closed the connection (``reason`` from its Close, if any)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason)
        self.reason = reason


class StreamPeer:
    """One connection the test drives; see the module docstring."""

    def __init__(self, stream: trio.SocketStream, key: NodeKey,
                 expected_remote: bytes | None = None) -> None:
        self.stream = stream
        self.conn = SyncConnection(True, key.private, now=trio.current_time(),
                                   expected_remote=expected_remote, on_message=self._tap)
        #: every message received and sent, in order (injected ones included)
        self.received: list[Message] = []
        self.sent: list[Message] = []
        self.events: list[SyncEvent] = []
        #: the reason in the far side's Close, if it sent one
        self.close_reason: str | None = None
        #: the far side broke the protocol (our session refused what it sent)
        self.error: RemoteProtocolError | None = None
        #: called with every message received, before it is handled
        self.on_message: Callable[[Message], None] | None = None
        self._replica: Replica | None = None
        self.eof = False
        self.closed = trio.Event()
        #: trio.current_time() when the far side closed
        self.closed_at: float | None = None
        self._fresh: list[Message] = []
        self._lock = trio.Lock()

    def _tap(self, outgoing: bool, message: Message) -> None:
        if outgoing:
            self.sent.append(message)
            return
        if self.on_message is not None:
            self.on_message(message)
        self.received.append(message)
        self._fresh.append(message)
        if isinstance(message, Close):
            self.close_reason = message.reason

    # ------------------------------------------------------------ connecting

    @classmethod
    async def open(
        cls,
        address: tuple[str, int],
        key: NodeKey | None = None,
        *,
        expected_remote: bytes | None = None,
        local_address: str | None = None,
        replica: Replica | None = None,
        with_last_message: Callable[[Self], list[Message]] | None = None,
        **start: Any,
    ) -> Self:
        """Dial and complete the Noise handshake as initiator.

        Args:
            replica: start a session over it at once (its Hello goes out with the
                third handshake message); ``start`` are its other options.
            with_last_message: messages to inject in the same write (one TCP segment)
                as the third handshake message; called once the handshake hash is known.

        Raises:
            PeerClosed: the far side closed the connection during the handshake.
            RemoteProtocolError: the handshake failed (wrong key, say).
            OSError, trio.BrokenResourceError: the connection failed.
        """
        stream = await trio.open_tcp_stream(*address, local_address=local_address)
        try:
            peer = cls(stream, key or NodeKey.generate(), expected_remote)
            while not isinstance(peer.conn.next_event(), Authenticated):
                await peer.write()
                data = await stream.receive_some(65536)
                if not data:
                    raise PeerClosed(None)
                peer.conn.receive_data(data, trio.current_time())
            if replica is not None:
                peer._replica = replica
                peer.conn.start(replica, trio.current_time(), **start)
            if with_last_message is not None:
                for message in with_last_message(peer):
                    peer.conn.inject(message)
            await peer.write()  # the third message (and the Hello) in one write
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise
        return peer

    @property
    def channel(self) -> SecureChannel:
        return self.conn.channel

    @property
    def session(self) -> SyncSession | None:
        return self.conn.session

    @property
    def replica(self) -> Replica:
        """The replica of the session (once one runs)."""
        assert self._replica is not None, "no session started"
        return self._replica

    @property
    def handshake_hash(self) -> bytes:
        return self.conn.handshake_hash

    @property
    def is_closed(self) -> bool:
        return self.closed.is_set()

    async def start_session(self, replica: Replica, **start: Any) -> None:
        """Start syncing ``replica`` (our Hello goes out)."""
        self._replica = replica
        self.conn.start(replica, trio.current_time(), **start)
        await self.write()

    # ------------------------------------------------------------ sending

    async def write(self) -> None:
        """Write what the connection has queued (nothing if the far side is gone)."""
        async with self._lock:
            data = self.conn.data_to_send(trio.current_time())
            if data:
                try:
                    await self.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._ended()

    async def send(self, *messages: Message) -> None:
        """Send ``messages`` past the session (the test speaks for itself)."""
        for message in messages:
            self.conn.inject(message)
        await self.write()

    def frame_plaintext(self, plaintext: bytes) -> bytes:
        """Encrypt arbitrary plaintext as transport frames (bypassing the message
        encoder), to inject malformed messages inside valid Noise frames."""
        transport = self.channel._transport  # test reaches in: no public raw-plaintext API
        assert transport is not None
        out = bytearray()
        for start in range(0, len(plaintext), 65535 - 16):
            ct = transport.encrypt(plaintext[start : start + 65535 - 16])
            out += len(ct).to_bytes(2, "big") + ct
        return bytes(out)

    async def send_raw(self, data: bytes) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(data)

    async def send_plaintext(self, plaintext: bytes) -> None:
        await self.stream.send_all(self.frame_plaintext(plaintext))

    async def push(self, board_id: bytes) -> None:
        """The replica grew (the test wrote to it): send the far side what it lacks."""
        self.conn.local_changed(board_id)
        await self.write()

    # ------------------------------------------------------------ receiving

    async def receive(self) -> list[Message]:
        """Read once, answer (if a session runs), and return the messages received
        (raise PeerClosed at the end)."""
        if self.eof:
            raise PeerClosed(self.close_reason)
        try:
            data = await self.stream.receive_some(RECEIVE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self._fresh = []
        try:
            if self._over():
                self._record_rest(data)
            else:
                self.conn.receive_data(data, trio.current_time())
                self._drive()
        except RemoteProtocolError as exc:
            self.error = exc
            data = b""  # cut mid-frame, or broke the protocol: closed all the same
        await self.write()
        got, self._fresh = self._fresh, []
        if not data:
            self._ended()
            if not got:
                raise PeerClosed(self.close_reason)
        return got

    def _over(self) -> bool:
        return self.conn.state in (ConnectionState.CLOSED, ConnectionState.ERROR)

    def _record_rest(self, data: bytes | None) -> None:
        """Our side's exchange is over (nothing shared, say), but the test still wants
        to see what the far side says: read the channel itself (after feeding it
        ``data``, if any)."""
        channel = self.channel
        if data is not None:
            channel.receive_data(data)
        while isinstance(event := channel.next_event(), MessageReceived):
            self._tap(False, event.message)

    def _drive(self) -> None:
        conn = self.conn
        while True:
            event = conn.next_event()
            if isinstance(event, ConnectionEnded) and conn.state is ConnectionState.CLOSED:
                self._record_rest(None)  # (what was read along with the end)
                return
            if event is NEED_DATA or isinstance(event, ConnectionEnded):
                return
            if isinstance(event, HelloReceived):
                conn.accept_hello()
            elif isinstance(event, BatchReceived):
                conn.batch_done(event.token,
                                self.replica.receive(event.board_id, event.envelopes))
            elif isinstance(event, SyncEvent):
                self.events.append(event)

    def _ended(self) -> None:
        self.eof = True
        if not self.closed.is_set():
            self.closed_at = trio.current_time()
            self.closed.set()

    async def wait_for(self, kind: type[_M]) -> _M:
        """Read until a message of type ``kind`` arrives (raise PeerClosed at the end)."""
        while True:
            for message in await self.receive():
                if isinstance(message, kind):
                    return message

    async def wait_closed(self) -> str | None:
        """Read (discarding) until the far side closes; the reason it gave, if any."""
        while True:
            try:
                await self.receive()
            except PeerClosed as exc:
                return exc.reason

    async def run_session(self, until: Callable[[], bool]) -> None:
        """Let the session answer the far side until ``until()`` holds."""
        while not until():
            await self.receive()

    async def run(self) -> None:
        """Read and answer until the far side closes (run in a nursery)."""
        with contextlib.suppress(PeerClosed):
            while not self.eof:
                await self.receive()
        self._ended()

    async def aclose(self) -> None:
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self.stream.aclose()
