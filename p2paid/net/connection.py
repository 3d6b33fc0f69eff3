"""One peer connection: the Noise channel and a sync session over a trio stream.

The shell in the style of h11's trio example: read bytes, feed the sans-I/O
:class:`~p2paid.core.wire.SecureChannel`, hand each message to the
:class:`~p2paid.core.replication.SyncSession`, write what they produce. Three tasks
share the connection: the reader, the pusher (sends what the local side gained,
woken by :meth:`Connection.notify`) and the keepalive. Any protocol error, a
handshake timeout or a silent peer ends this connection only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, final

import trio

from p2paid.core.identity import NodeKey, fingerprint
from p2paid.core.replication import Replica, SyncEvent, SyncSession
from p2paid.core.wire import (
    NEED_DATA,
    Close,
    ConnectionClosed,
    HandshakeComplete,
    Hello,
    Message,
    MessageReceived,
    Ping,
    Refused,
    SecureChannel,
)
from p2paid.errors import HandshakeError, P2paidError, RemoteProtocolError

__all__ = ["RESYNC_REASON", "Connection", "ConnectionHost", "run_connection"]

log = logging.getLogger("p2paid.net")

#: Close reason of a connection ended only to announce a changed set of boards.
RESYNC_REASON: Final = "boards changed"
#: Close reason when the two sides share no board (the slot is freed for others).
NOTHING_SHARED: Final = "no shared boards"
#: Pings a peer may send per :data:`KEEPALIVE_INTERVAL` before it counts as flooding.
MAX_PINGS: Final = 20
HANDSHAKE_TIMEOUT: Final = 10.0
#: A peer that has not sent a valid Hello this long after the handshake is dropped.
HELLO_TIMEOUT: Final = 5.0
#: Close reason of a peer dropped by HELLO_TIMEOUT.
HELLO_TIMEOUT_REASON: Final = "no hello"
KEEPALIVE_INTERVAL: Final = 15.0
IDLE_TIMEOUT: Final = 60.0
RECEIVE_SIZE: Final = 64 * 1024
#: A link quiet this long (seconds) gets its deferred changes applied.
IDLE_FLUSH_DELAY: Final = 0.002


class ConnectionHost(Protocol):
    """What a connection needs from the node or relay that runs it."""

    @property
    def node_key(self) -> NodeKey: ...

    def replica_for(self, conn: Connection) -> Replica:
        """The replica a connection's session works on (a relay tells it who uploads)."""
        ...

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        """The peer's Hello, before the session sees it: messages to send first, or None
        (with ``conn.close_reason`` set) to close the connection, e.g. a relay that
        requires an access token."""
        ...

    def register(self, conn: Connection) -> bool:
        """Admit an authenticated connection; False to close it (duplicate, self, full)."""
        ...

    def unregister(self, conn: Connection) -> None: ...

    def after_receive(self, conn: Connection) -> None:
        """The replica may have gained envelopes from ``conn``: tell the others."""
        ...

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None: ...


@final
class Connection:
    """A live, authenticated connection to one peer."""

    def __init__(self, stream: trio.abc.Stream, channel: SecureChannel, address: str,
                 initiator: bool, address_key: str | None = None) -> None:
        self._stream = stream
        self._channel = channel
        self._send_lock = trio.Lock()
        self._dirty: set[bytes] = set()
        self._wake = trio.Event()
        self.address = address
        #: for inbound connections: the remote address as the per-address caps count it
        self.address_key = address_key
        self.initiator = initiator
        #: since when the peer is known (synced a board with us before; for a relay: its
        #: uploads are stored), in ms since the epoch; None for a stranger
        self.known_since: float | None = None
        self.remote_id: bytes = b""
        self.session: SyncSession | None = None
        self.connected_at = time.time()
        self.last_received = time.monotonic()
        self.last_sent = time.monotonic()
        self.cancel_scope = trio.CancelScope()
        self.close_reason: str | None = None
        self._torn = False
        self._ping_window = time.monotonic()
        self._pings = 0

    def __repr__(self) -> str:
        way = "out" if self.initiator else "in"
        return f"<Connection {way} {self.address} {fingerprint(self.remote_id)}>"

    @property
    def known(self) -> bool:
        """A known peer: exempt from the per-address cap; evicts strangers when full."""
        return self.known_since is not None

    @property
    def bytes_in(self) -> int:
        return self._channel.bytes_in

    @property
    def bytes_out(self) -> int:
        return self._channel.bytes_out

    def count_ping(self) -> None:
        """Keepalives are cheap but not free: a peer that floods them is dropped."""
        now = time.monotonic()
        if now - self._ping_window > KEEPALIVE_INTERVAL:
            self._ping_window, self._pings = now, 0
        self._pings += 1
        if self._pings > MAX_PINGS:
            raise RemoteProtocolError("too many pings", close_reason="flood")

    def notify(self, board_id: bytes) -> None:
        """The local side of ``board_id`` grew: push the difference soon."""
        self._dirty.add(board_id)
        self._wake.set()

    def close(self, reason: str) -> None:
        """Ask the connection to end (it sends ``Close(reason)`` first)."""
        self.close_reason = self.close_reason or reason
        self.cancel_scope.cancel()

    async def send(self, messages: list[Message]) -> None:
        if not messages:
            return
        # Encrypt under the lock: Noise nonces are implicit, so frames must reach
        # the wire in the order they were encrypted.
        async with self._send_lock:
            if self._torn:
                raise trio.ClosedResourceError("an earlier send was interrupted")
            for message in messages:
                self._channel.send(message)
            # If this is cancelled midway, part of a frame is on the wire and
            # nothing more can follow it.
            self._torn = True
            await self._stream.send_all(self._channel.data_to_send())
            self._torn = False
        self.last_sent = time.monotonic()

    async def _pusher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            dirty, self._dirty = self._dirty, set()
            assert self.session is not None
            for board_id in dirty:
                await self.send(self.session.local_changed(board_id))

    async def _expect_hello(self) -> None:
        """Drop a peer that authenticated but sends no valid Hello in time (it would
        otherwise hold a slot for free, pinging)."""
        await trio.sleep(HELLO_TIMEOUT)
        if self.session is not None and not self.session.greeted:
            raise RemoteProtocolError(f"no hello within {HELLO_TIMEOUT:g} s",
                                      close_reason=HELLO_TIMEOUT_REASON)

    async def _keepalive(self) -> None:
        while True:
            await trio.sleep(KEEPALIVE_INTERVAL / 3)
            now = time.monotonic()
            if now - self.last_received > IDLE_TIMEOUT:
                raise RemoteProtocolError("peer silent for too long", close_reason="idle")
            if now - self.last_sent > KEEPALIVE_INTERVAL:
                await self.send([Ping(int.from_bytes(os.urandom(4), "big"))])


async def _handshake(stream: trio.abc.Stream, channel: SecureChannel) -> None:
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        while True:
            out = channel.data_to_send()
            if out:
                await stream.send_all(out)
            event = channel.next_event()
            if isinstance(event, HandshakeComplete):
                return
            if event is not NEED_DATA:
                raise HandshakeError("unexpected event during the handshake")
            data = await stream.receive_some(RECEIVE_SIZE)
            channel.receive_data(data)


async def run_connection(
    host: ConnectionHost,
    stream: trio.abc.Stream,
    *,
    address: str,
    initiator: bool,
    expected_remote: bytes | None = None,
    to_relay: bool = False,
    boards: Sequence[bytes] | None = None,
    on_connected: Callable[[Connection], Awaitable[None]] | None = None,
    address_key: str | None = None,
    token: bytes | None = None,
) -> Connection | None:
    """Handshake, then sync until either side closes or misbehaves.

    Args:
        address_key: for inbound connections, the remote address as the caps count it.
        token: a relay access token to send in our Hello (only with ``to_relay``).

    Returns:
        The connection once it has ended (None if the handshake failed).

    Raises:
        Nothing for peer faults (they are logged); cancellation propagates.
    """
    channel = SecureChannel(initiator, host.node_key.private, expected_remote=expected_remote)
    conn = Connection(stream, channel, address, initiator, address_key)
    try:
        await _handshake(stream, channel)
    except (trio.TooSlowError, RemoteProtocolError, trio.BrokenResourceError,
            trio.ClosedResourceError) as exc:
        log.info("handshake with %s failed: %s", address, exc or type(exc).__name__)
        await _close_quietly(stream)
        return None
    conn.remote_id = channel.remote_static or b""
    if not host.register(conn):
        await _goodbye(conn, conn.close_reason or "duplicate")
        return conn
    try:
        await _serve(host, conn, channel, to_relay, boards, on_connected,
                     token if to_relay else None)
    finally:
        host.unregister(conn)
        await _goodbye(conn, conn.close_reason or "bye")
    return conn


async def _serve(host: ConnectionHost, conn: Connection, channel: SecureChannel,
                 to_relay: bool, boards: Sequence[bytes] | None,
                 on_connected: Callable[[Connection], Awaitable[None]] | None,
                 token: bytes | None) -> None:
    assert channel.handshake_hash is not None
    session = SyncSession(host.replica_for(conn), initiator=conn.initiator,
                          handshake_hash=channel.handshake_hash, to_relay=to_relay,
                          boards=boards)
    conn.session = session
    with conn.cancel_scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn._pusher)
                nursery.start_soon(conn._keepalive)
                nursery.start_soon(conn._expect_hello)
                await conn.send(_with_token(session.start(), token))
                if on_connected is not None:
                    await on_connected(conn)
                await _read_loop(host, conn, channel, session)
                nursery.cancel_scope.cancel()
        except* RemoteProtocolError as group:
            exc = group.exceptions[0]
            assert isinstance(exc, RemoteProtocolError)
            _DROPS.log(exc.close_reason != HELLO_TIMEOUT_REASON, "dropping peer %s (%s): %s",
                       fingerprint(conn.remote_id), conn.address, exc)
            conn.close_reason = exc.close_reason
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.close_reason = conn.close_reason or "connection lost"
        except* P2paidError as group:  # e.g. the disk is full: keep serving the others
            log.error("connection to %s ended by a local error: %s", conn.address,
                      group.exceptions[0])
            conn.close_reason = "local error"


async def _read_loop(host: ConnectionHost, conn: Connection, channel: SecureChannel,
                     session: SyncSession) -> None:
    rate: int | None = getattr(host, "rate_limit", None)
    bucket = _TokenBucket(rate) if rate else None
    # Messages may have arrived in the same read as the last handshake message.
    while await _drain(host, conn, channel, session):
        data = await _receive(host, conn)
        conn.last_received = time.monotonic()
        if bucket is not None:
            await bucket.take(len(data), conn)
        channel.receive_data(data)
        if not data:
            await _drain(host, conn, channel, session)
            return


async def _receive(host: ConnectionHost, conn: Connection) -> bytes | bytearray:
    """The next bytes; if the host deferred work (a bulk sync being applied in one go),
    do it as soon as the link falls quiet."""
    flush = getattr(host, "flush_deferred", None)
    if flush is not None and host.replica_has_deferred():  # type: ignore[attr-defined]
        with trio.move_on_after(IDLE_FLUSH_DELAY):
            return await conn._stream.receive_some(RECEIVE_SIZE)
        flush()
    return await conn._stream.receive_some(RECEIVE_SIZE)


async def _drain(host: ConnectionHost, conn: Connection, channel: SecureChannel,
                 session: SyncSession) -> bool:
    """Handle every queued message; False once the connection should end."""
    while True:
        event = channel.next_event()
        if event is NEED_DATA:
            return True
        if isinstance(event, ConnectionClosed):
            return False
        assert isinstance(event, MessageReceived)
        message = event.message
        if isinstance(message, Ping):
            conn.count_ping()
        elif isinstance(message, Hello):
            notices = host.on_hello(conn, message)
            if notices is None:
                return False
            await conn.send(notices)
        await conn.send(session.handle(message))
        for sync_event in session.events:
            host.on_sync_event(conn, sync_event)
        session.events.clear()
        if isinstance(message, Close):
            conn.close_reason = f"peer closed: {message.reason}"
            return False
        if session.greeted and not session.shared_boards:
            conn.close_reason = NOTHING_SHARED
            return False
        host.after_receive(conn)


def _with_token(messages: list[Message], token: bytes | None) -> list[Message]:
    """Our first messages, the Hello carrying a relay access token if we have one."""
    if token is None:
        return messages
    return [dataclasses.replace(m, token=token) if isinstance(m, Hello) else m
            for m in messages]


class _DropLog:
    """Warnings about dropped peers, at most MAX_DROP_WARNINGS a minute: an attacker
    who opens connections only to be dropped must not fill the disk with the log.
    The rest go to debug, and a count of them follows."""

    def __init__(self) -> None:
        self._window = -DROP_LOG_WINDOW
        self._warned = 0
        self._quiet = 0

    def log(self, warn: bool, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._window >= DROP_LOG_WINDOW:
            if self._quiet:
                log.warning("%d more peers dropped in the last minute (debug log has them)",
                            self._quiet)
            self._window, self._warned, self._quiet = now, 0, 0
        if warn and self._warned < MAX_DROP_WARNINGS:
            self._warned += 1
            log.warning(message, *args)
            return
        self._quiet += warn
        log.debug(message, *args)


#: Dropped-peer warnings per DROP_LOG_WINDOW seconds (per process).
MAX_DROP_WARNINGS: Final = 20
DROP_LOG_WINDOW: Final = 60.0
_DROPS = _DropLog()


class _TokenBucket:
    """Per-connection receive rate limit: past a burst, reading pauses (TCP pushes back)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = 4 * rate
        self.tokens = float(self.burst)
        self.at = time.monotonic()
        self.warned = False

    async def take(self, size: int, conn: Connection) -> None:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate) - size
        self.at = now
        if self.tokens < 0:
            if not self.warned:
                self.warned = True
                log.info("throttling %s to %d bytes/s", conn.address, self.rate)
                await conn.send([Refused(b"", "rate-limited",
                                         f"this relay reads at most {self.rate} bytes/s")])
            await trio.sleep(-self.tokens / self.rate)


async def _goodbye(conn: Connection, reason: str) -> None:
    """Send Close(reason) if possible, then close the stream; never raises."""
    with trio.move_on_after(1) as scope:
        scope.shield = True
        with contextlib.suppress(Exception):  # gone already, or a send was torn
            await conn.send([Close(reason[:200])])
        await _close_quietly(conn._stream)


async def _close_quietly(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        with contextlib.suppress(Exception):
            await stream.aclose()
