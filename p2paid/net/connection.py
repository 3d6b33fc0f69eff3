"""The trio driver of one peer connection: reading, writing and timers around the sans-I/O
:class:`~p2paid.core.connection.SyncConnection` (h11's ``examples/trio-server.py`` shape).

Three tasks share a connection: the reader (which also hands the host what the
connection surfaces), the pusher (sends what the local side gained, woken by
:meth:`Connection.notify`) and the timer (keepalive, the hello and idle timeouts).
What is heavy leaves the event loop's way: a received batch goes to the replica in
slices of ``RECEIVE_SLICE`` envelopes with a checkpoint between them, and deferred
work (a node's Automerge apply) runs in bounded steps once the link falls quiet. Any
protocol error, a handshake timeout or a silent peer ends this connection only.

Policies this driver leaves to its host (:class:`~p2paid.net.interfaces.ConnectionHost`;
how it is driven is :class:`~p2paid.net.interfaces.ConnectionOptions`): who is admitted,
which of two duplicate connections stays, who is known, what a Hello's token is
worth, and whom to tell about new envelopes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, final

import trio

from p2paid.core.checkpoint import is_checkpoint
from p2paid.core.codes import CloseReason
from p2paid.core.connection import (
    PAUSED,
    BatchReceived,
    ConnectionEnded,
    HelloReceived,
    SyncConnection,
    Throttled,
)
from p2paid.core.identity import fingerprint
from p2paid.core.replication import Received, Replica, SyncEvent, SyncSession
from p2paid.core.wire import NEED_DATA, NeedData
from p2paid.errors import HandshakeError, LocalProtocolError, P2paidError, RemoteProtocolError
from p2paid.net.interfaces import ConnectionHost, ConnectionOptions, DeferredWork

__all__ = [
    "IDLE_FLUSH_DELAY",
    "Connection",
    "receive_in_slices",
    "run_connection",
]

log = logging.getLogger("p2paid.net")

RECEIVE_SIZE: Final = 64 * 1024
#: A link quiet this long (seconds) gets the host's deferred work done.
IDLE_FLUSH_DELAY: Final = 0.002


@final
class Connection:
    """A live, authenticated connection to one peer, as its host sees it."""

    def __init__(self, stream: trio.abc.Stream, core: SyncConnection, address: str,
                 address_key: str | None = None) -> None:
        self.stream = stream
        self.core = core
        self.address = address
        #: for inbound connections: the remote address as the per-address caps count it
        self.address_key = address_key
        #: since when the peer is known (synced a board with us before; for a relay: its
        #: uploads are stored), in ms since the epoch; None for a stranger
        self.known_since: float | None = None
        self.connected_at = time.time()
        self.cancel_scope = trio.CancelScope()
        self._send_lock = trio.Lock()
        self._torn = False
        self._dirty: set[bytes] = set()
        self._wake = trio.Event()

    def __repr__(self) -> str:
        way = "out" if self.initiator else "in"
        return f"<Connection {way} {self.address} {fingerprint(self.remote_id)}>"

    @property
    def initiator(self) -> bool:
        return self.core.initiator

    @property
    def remote_id(self) -> bytes:
        return self.core.remote_id

    @property
    def session(self) -> SyncSession | None:
        return self.core.session

    @property
    def known(self) -> bool:
        """A known peer: exempt from the per-address cap; evicts strangers when full."""
        return self.known_since is not None

    @property
    def bytes_in(self) -> int:
        return self.core.channel.bytes_in

    @property
    def bytes_out(self) -> int:
        return self.core.channel.bytes_out

    @property
    def close_reason(self) -> str | None:
        """Why the connection ends (None while it runs, or when the peer hung up)."""
        return self.core.close_reason

    @close_reason.setter
    def close_reason(self, reason: str | None) -> None:
        self.core.close_reason = reason

    def notify(self, board_id: bytes) -> None:
        """The local side of ``board_id`` grew: push the difference soon."""
        self._dirty.add(board_id)
        self._wake.set()

    def close(self, reason: str) -> None:
        """Ask the connection to end (it sends ``Close(reason)`` first)."""
        self.core.close_reason = self.core.close_reason or reason
        self.cancel_scope.cancel()

    async def flush(self) -> None:
        """Write what the connection has queued.

        Raises:
            trio.ClosedResourceError: an earlier write was cut short.
            trio.BrokenResourceError: the stream broke.
        """
        if not self.core.has_data_to_send:
            return
        # Take the bytes under the lock: Noise nonces are implicit, so frames must
        # reach the wire in the order they were encrypted.
        async with self._send_lock:
            if self._torn:
                raise trio.ClosedResourceError("an earlier send was interrupted")
            data = self.core.data_to_send(trio.current_time())
            if not data:
                return
            # If this is cancelled midway, part of a frame is on the wire and nothing
            # more can follow it.
            self._torn = True
            try:
                await self.stream.send_all(data)
            except BaseException:
                self.core.send_failed()
                raise
            self._torn = False


async def receive_in_slices(replica: Replica, board_id: bytes, envelopes: Sequence[bytes],
                            slice_size: int | None) -> Received:
    """Have ``replica`` receive a batch in contiguous slices of about ``slice_size``
    envelopes, letting other tasks run between them; the combined result.

    The slices are of equal size, so a batch of at least 100 envelopes (a node defers
    applying those) is received as slices of at least 128.
    """
    precheck = getattr(replica, "precheck", None)
    if precheck is not None and any(is_checkpoint(raw) for raw in envelopes):
        # A member's check of a checkpoint takes a tenth of a second of Python at
        # 10,000 needs: in a worker thread, other tasks run meanwhile (but for
        # Automerge's load of the content, which holds the GIL).
        await trio.to_thread.run_sync(precheck, board_id, envelopes)
    if slice_size is None or len(envelopes) <= slice_size:
        return replica.receive(board_id, envelopes)
    parts = -(-len(envelopes) // slice_size)
    total = Received()
    for i in range(parts):
        if i:
            await trio.lowlevel.checkpoint()
        start, end = len(envelopes) * i // parts, len(envelopes) * (i + 1) // parts
        total.add(replica.receive(board_id, envelopes[start:end]))
    return total


async def _handshake(conn: Connection) -> bool:
    """Complete the Noise handshake in time; False (logged, stream closed) if not."""
    core = conn.core
    try:
        with trio.move_on_at(core.next_deadline()):
            while True:
                await conn.flush()
                event = core.next_event()
                if not isinstance(event, NeedData):
                    if isinstance(event, ConnectionEnded):
                        raise HandshakeError("the connection ended during the handshake")
                    return True  # Authenticated
                data = await conn.stream.receive_some(RECEIVE_SIZE)
                core.receive_data(data, trio.current_time())
        core.tick(trio.current_time())  # the deadline passed: raises
        raise HandshakeError("the handshake took too long")  # pragma: no cover
    except (RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.info("handshake with %s failed: %s", conn.address, exc or type(exc).__name__)
        await _close_quietly(conn.stream)
        return False


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
    options: ConnectionOptions | None = None,
) -> Connection | None:
    """Handshake, then sync until either side closes or misbehaves.

    Args:
        address_key: for inbound connections, the remote address as the caps count it.
        token: a relay access token to send in our Hello (only with ``to_relay``).
        options: rate limit, deferred work and batch slicing (the defaults: none,
            none, ``RECEIVE_SLICE`` envelopes).

    Returns:
        The connection once it has ended (None if the handshake failed).

    Raises:
        Nothing for peer faults (they are logged); cancellation propagates.
    """
    opts = options or ConnectionOptions()
    core = SyncConnection(initiator, host.node_key.private, now=trio.current_time(),
                          expected_remote=expected_remote, rate_limit=opts.rate_limit)
    conn = Connection(stream, core, address, address_key)
    if not await _handshake(conn):
        return None
    if not host.register(conn):
        await _goodbye(conn, conn.close_reason or CloseReason.DUPLICATE)
        return conn
    try:
        await _serve(host, conn, _Start(to_relay, boards, token if to_relay else None),
                     on_connected, opts)
    finally:
        host.unregister(conn)
        await _goodbye(conn, conn.close_reason)
    return conn


@dataclass(frozen=True, slots=True)
class _Start:
    """What the session offers: see :meth:`SyncConnection.start`."""

    to_relay: bool
    boards: Sequence[bytes] | None
    token: bytes | None


async def _serve(host: ConnectionHost, conn: Connection, start: _Start,
                 on_connected: Callable[[Connection], Awaitable[None]] | None,
                 opts: ConnectionOptions) -> None:
    with conn.cancel_scope:
        try:
            replica = host.replica_for(conn)
            conn.core.start(replica, trio.current_time(), to_relay=start.to_relay,
                            boards=start.boards, token=start.token)
            async with trio.open_nursery() as nursery:
                await nursery.start(_run_timers, conn)
                await nursery.start(_push, conn)
                await conn.flush()  # our Hello
                if on_connected is not None:
                    await on_connected(conn)
                await _read_loop(host, conn, replica, opts)
                nursery.cancel_scope.cancel()
        except* RemoteProtocolError as group:
            exc = group.exceptions[0]
            assert isinstance(exc, RemoteProtocolError)
            _DROPS.log(exc.close_reason != CloseReason.NO_HELLO, "dropping peer %s (%s): %s",
                       fingerprint(conn.remote_id), conn.address, exc)
            conn.close_reason = exc.close_reason
        except* (trio.BrokenResourceError, trio.ClosedResourceError):
            conn.close_reason = conn.close_reason or CloseReason.CONNECTION_LOST
        except* P2paidError as group:  # e.g. the disk is full: keep serving the others
            log.error("connection to %s ended by a local error: %s", conn.address,
                      group.exceptions[0])
            conn.close_reason = CloseReason.LOCAL_ERROR


async def _read_loop(host: ConnectionHost, conn: Connection, replica: Replica,
                     opts: ConnectionOptions) -> None:
    """Hand the host what the connection surfaces; read when it needs data."""
    core = conn.core
    while True:
        event = core.next_event()
        if event is PAUSED:
            raise LocalProtocolError("the connection waits for an answer never given")
        if event is NEED_DATA:
            host.after_receive(conn)
            await conn.flush()
            if core.read_delay:  # over its rate limit: TCP pushes back meanwhile
                await trio.sleep(core.read_delay)
            data = await _receive(conn, opts.deferred)
            core.receive_data(data, trio.current_time())
        elif isinstance(event, BatchReceived):
            if opts.receive_in_thread:
                received = await trio.to_thread.run_sync(replica.receive, event.board_id,
                                                         event.envelopes)
            else:
                received = await receive_in_slices(replica, event.board_id, event.envelopes,
                                                   opts.receive_slice)
            core.batch_done(event.token, received)
            host.after_receive(conn)
        elif isinstance(event, HelloReceived):
            notices = host.on_hello(conn, event.hello)
            if notices is None:
                return
            core.accept_hello(notices)
        elif isinstance(event, SyncEvent):
            host.on_sync_event(conn, event)
        elif isinstance(event, Throttled):
            log.info("throttling %s to %d bytes/s", conn.address, event.rate)
        elif isinstance(event, ConnectionEnded):
            return
        await conn.flush()


async def _receive(conn: Connection, deferred: DeferredWork | None) -> bytes | bytearray:
    """The next bytes; if the host deferred work (a bulk sync being applied in one go),
    do it, in bounded steps, as soon as the link falls quiet."""
    if deferred is not None and deferred.has_deferred():
        with trio.move_on_after(IDLE_FLUSH_DELAY):
            return await conn.stream.receive_some(RECEIVE_SIZE)
        while deferred.flush_deferred():
            await trio.lowlevel.checkpoint()
    return await conn.stream.receive_some(RECEIVE_SIZE)


async def _run_timers(conn: Connection,
                      task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Call the connection's timers when they are due (they raise to end it)."""
    task_status.started()
    while True:
        await trio.sleep_until(conn.core.next_deadline())
        conn.core.tick(trio.current_time())
        await conn.flush()


async def _push(conn: Connection,
                task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    """Send the peer what the local side gained, when :meth:`Connection.notify`'d."""
    task_status.started()
    while True:
        await conn._wake.wait()
        conn._wake = trio.Event()
        dirty, conn._dirty = conn._dirty, set()
        for board_id in dirty:
            conn.core.local_changed(board_id)
            await conn.flush()


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


async def _goodbye(conn: Connection, reason: str | None) -> None:
    """Send Close(reason, default "bye") if possible, then close the stream; never raises."""
    with trio.move_on_after(1) as scope:
        scope.shield = True
        conn.core.close(reason)
        with contextlib.suppress(Exception):  # gone already, or a send was torn
            await conn.flush()
        await _close_quietly(conn.stream)


async def _close_quietly(stream: trio.abc.Stream) -> None:
    with trio.move_on_after(1) as scope:
        scope.shield = True
        with contextlib.suppress(Exception):
            await stream.aclose()
