"""The async node: :func:`open_node` wires store, connections, dialers and discovery.

>>> async with p2paid.open_node(data_dir, listen=("0.0.0.0", 0)) as node:  # doctest: +SKIP
...     board = await node.join(invite)
...     await board.post_need("Insulin, cold chain", category="medical", urgency="critical")
...     async for event in board.events():
...         print(event)

Everything runs in the node's own nursery; leaving the ``async with`` block
cancels it and closes the store. Store and Automerge work runs on the trio
thread, in short steps (batches are received in slices, deferred changes applied
in bounded steps: :mod:`p2paid.net.connection`), which keeps the design
single-threaded and deterministic.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict
from typing import Final, final

import trio

from p2paid.board.store import Store, open_store
from p2paid.core.codes import CloseReason, DialSource, SyncEventKind
from p2paid.core.identity import NodeKey, fingerprint
from p2paid.core.invite import Invite
from p2paid.core.pacing import StepSizer
from p2paid.core.replication import SyncEvent
from p2paid.core.wire import Hello, Message
from p2paid.errors import ListenError, P2paidError, UsageError
from p2paid.net.admission import Admission, AdmissionLimits
from p2paid.net.connection import Connection
from p2paid.net.groups import collapse_single_errors
from p2paid.net.inbound import serve_inbound
from p2paid.net.interfaces import ConnectionOptions
from p2paid.net.peers import Dialer, DialTarget
from p2paid.net.tcp import format_address, open_listener
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.peertable import PeerInfo, PeerTable
from p2paid.node.relays import RelayDialing
from p2paid.node.replica import StoreReplica
from p2paid.node.status import StatusPublisher
from p2paid.node.storewatch import StoreWatcher
from p2paid.node.syncprogress import SyncProgress
from p2paid.node.syncrecord import SyncRecorder
from p2paid.storage.lock import DataDirLock
from p2paid.storage.protect import CredentialSource
from p2paid.storage.runtime import encode_runtime
from p2paid.storage.wipe import wipe

__all__ = ["Node", "PeerInfo", "open_node"]

log = logging.getLogger("p2paid.node.node")

DEFAULT_PORT: Final = 7446
MAX_CONNECTIONS: Final = 64
#: Inbound connections from one address (an IPv6 /64) that is not a known peer: a few
#: devices behind one router, not one machine taking every slot.
MAX_PER_ADDRESS: Final = 8
#: Handshakes in progress, in all and from one address.
MAX_HANDSHAKES: Final = 32
MAX_HANDSHAKES_PER_ADDRESS: Final = 4
#: Seconds one step of deferred Automerge work should take (other tasks run between
#: steps; ``p2paid bench --only stall`` measures the longest pause).
FLUSH_STEP_S: Final = 0.015


@final
class Node:
    """A running node. Use :func:`open_node`; do not construct it."""

    def __init__(self, store: Store, nursery: trio.Nursery, *, max_connections: int,
                 max_per_address: int = MAX_PER_ADDRESS) -> None:
        self.store = store
        self.node_key: NodeKey = store.node_key
        self.node_id = self.node_key.public
        self.replica = StoreReplica(store)
        self._nursery = nursery
        self.admission = Admission(AdmissionLimits(
            max_connections, max_per_address, MAX_HANDSHAKES, MAX_HANDSHAKES_PER_ADDRESS))
        self.peerbook = store.peer_book()
        self._peers = PeerTable(self.node_id)
        self._boards: dict[bytes, AsyncBoard] = {}
        self.listen_address: tuple[str, int] | None = None
        self.last_sync: dict[bytes, float] = {}
        #: more to publish with the status (the web interface's address, say)
        self.status_extras: dict[str, object] = {}
        self._sync_record = SyncRecorder(store)
        self._sync_progress = SyncProgress()
        #: how its connections run: big batches are applied once a link falls quiet
        self.connection_options = ConnectionOptions(deferred=self)
        self.dialer = Dialer(self, self.connection_options)
        self.relays = RelayDialing(
            store, self.dialer, lambda node_id: self._peers.close(
                node_id, CloseReason.BOARDS_CHANGED))
        self.store_watcher = StoreWatcher(store, board_changed=self.board_changed,
                                          boards_changed=self._boards_changed,
                                          before_poll=self._before_store_poll)
        #: deferred work whose connection ended before its link fell quiet
        self._orphaned_work = False
        self._flush_step = StepSizer(FLUSH_STEP_S, first=256, minimum=32, maximum=8192)
        #: the data dir was wiped while the node ran (see :meth:`stop`)
        self.wiped = False

    def __repr__(self) -> str:
        return f"<Node {fingerprint(self.node_id)} {len(self._peers)} peers>"

    # ------------------------------------------------------------------ boards

    def boards(self) -> list[AsyncBoard]:
        """Every joined board."""
        return [self._async_board(b.id) for b in self.store.boards()]

    def board(self, selector: str | bytes | None = None) -> AsyncBoard:
        """A joined board by id prefix, name, or alone (see :meth:`Store.board`)."""
        return self._async_board(self.store.board(selector).id)

    def _async_board(self, board_id: bytes) -> AsyncBoard:
        board = self._boards.get(board_id)
        if board is None:
            board = self._boards[board_id] = AsyncBoard(
                self.store.board(board_id), self.board_changed, self._relays_changed)
            self._nursery.start_soon(board.run_writer)
        return board

    async def join(self, invite: str | Invite, *, display_name: str | None = None) -> AsyncBoard:
        """Join a board and start syncing it with every peer.

        Raises:
            InviteError: the invite is malformed.
            UsageError: already joined.
        """
        board = self.store.join(invite, display_name=display_name)
        self._boards_changed()
        return self._async_board(board.id)

    async def create_board(self, name: str, *, display_name: str | None = None,
                           relays: Iterable[str] = ()) -> AsyncBoard:
        """Create a board (you are its first member) and offer it to peers."""
        board = self.store.create_board(name, display_name=display_name, relays=relays)
        self._boards_changed()
        return self._async_board(board.id)

    def _relays_changed(self) -> None:
        with contextlib.suppress(P2paidError):
            self.refresh_relays()

    def _boards_changed(self) -> None:
        """Peers learn our boards in the Hello: reconnect so they learn the new one."""
        self.store_watcher.note_boards()
        for conn in self._peers:
            conn.close(CloseReason.BOARDS_CHANGED)
        with contextlib.suppress(P2paidError):
            self.refresh_relays()

    # ------------------------------------------------------------------ peers

    def connect(self, host: str, port: int) -> None:
        """Keep a connection to ``host:port`` (reconnecting with backoff)."""
        self.dialer.add(DialTarget(host, port, source=DialSource.CONFIGURED))

    def relay_plan(self) -> dict[str, frozenset[bytes]]:
        """Which boards this node syncs through which relay (:meth:`RelayDialing.plan`)."""
        return self.relays.plan()

    def refresh_relays(self) -> None:
        """Dial the relays of :meth:`relay_plan` now (the node does every few seconds)."""
        self.relays.refresh()

    def peers(self) -> list[PeerInfo]:
        """The connected peers."""
        return self._peers.info()

    def is_connected(self, node_id: bytes) -> bool:
        return self._peers.get(node_id) is not None

    async def wait_disconnected(self, node_id: bytes) -> None:
        await self._peers.wait_disconnected(node_id)

    async def wait_for_peers(self, count: int = 1) -> None:
        """Wait until at least ``count`` peers are connected."""
        await self._peers.wait_for_peers(count)

    async def wait_in_sync(self, board_id: bytes | None = None) -> None:
        """Wait until every connected peer holds everything we hold (of one board or all)."""
        await self._peers.wait_in_sync(board_id)

    async def wait_changed(self) -> None:
        """Wait until something happens: a peer comes or goes, or envelopes arrive."""
        await self._peers.wait_changed()

    def _pulse(self) -> None:
        self._peers.pulse()

    # ------------------------------------------------------------------ ConnectionHost

    def replica_for(self, conn: Connection) -> StoreReplica:
        return self.replica

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message]:
        self.dialer.greeted(conn)
        return []

    def register(self, conn: Connection) -> bool:
        remote = conn.remote_id
        if remote == self.node_id:
            conn.close_reason = CloseReason.SELF
            return False
        conn.known_since = self.peerbook.first_seen(remote)
        replacing = self._peers.get(remote) is not None
        if not self._peers.keeps_new(conn):
            conn.close_reason = CloseReason.DUPLICATE
            return False
        refusal = self.admission.admit(conn, replacing=replacing)
        if refusal is not None:
            conn.close_reason = refusal
            return False
        self._peers.add(conn)
        return True

    def unregister(self, conn: Connection) -> None:
        self.admission.release(conn)
        self.after_receive(conn)  # envelopes stored from a batch cut short
        self._orphaned_work = self._orphaned_work or self.has_deferred()
        self._sync_progress.forget(conn)
        self._peers.discard(conn)

    # ------------------------------------------------------------------ DeferredWork

    def has_deferred(self) -> bool:
        """Bulk syncs stored changes that are not applied yet."""
        return bool(self.replica.deferred)

    def flush_deferred(self) -> bool:
        """Apply a part of the changes bulk syncs stored (sized to take about
        :data:`FLUSH_STEP_S`), then tell peers and subscribers; True while more remains."""
        before, started = self.replica.stats["applied"], time.perf_counter()
        touched = self.replica.flush(self._flush_step.size)
        self._flush_step.record(int(self.replica.stats["applied"] - before),
                                time.perf_counter() - started)
        for board_id in touched:
            board = self._boards.get(board_id)
            if board is not None:
                board.publish_events()
        self._pulse()
        return self.has_deferred()

    def after_receive(self, conn: Connection) -> None:
        # The set is shared by all connections: tell every peer (the sender's session
        # knows what it sent, so nothing is echoed).
        changed, self.replica.changed_boards = self.replica.changed_boards, set()
        for board_id in changed:
            self.board_changed(board_id)
        self._pulse()

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        if event.kind in (SyncEventKind.LINKED, SyncEventKind.IN_SYNC) and not conn.known:
            # It named a board we hold (only members can): a known peer from now on.
            self.peerbook.add(conn.remote_id)
            conn.known_since = self.peerbook.first_seen(conn.remote_id)
        name = self._board_name(event.board_id)
        peer = fingerprint(conn.remote_id)
        if event.kind is SyncEventKind.RECEIVED:
            remaining = conn.session.missing(event.board_id) if conn.session else 0
            line = self._sync_progress.received(event.board_id, conn, peer, event.count,
                                                remaining)
            if line is not None:
                log.info("board %r: %s", name, line)
            if event.count:
                self._synced(conn, event.board_id)
        elif event.kind is SyncEventKind.IN_SYNC:
            self._synced(conn, event.board_id)
            log.info("board %r: in sync with %s", name, peer)
        elif event.kind is SyncEventKind.LINKED:
            log.info("board %r: syncing with %s", name, peer)
        elif event.kind is SyncEventKind.REFUSED:
            log.warning("board %r: %s refused: %s", name, peer, event.detail)

    def _synced(self, conn: Connection, board_id: bytes) -> None:
        self.last_sync[board_id] = time.time()
        relay = conn.session is not None and conn.session.peer_role == "relay"
        self._sync_record.synced(board_id, "relay" if relay else "peer")

    def _board_name(self, board_id: bytes) -> str:
        try:
            return self.store.board(board_id).name
        except UsageError:
            return board_id.hex()[:12]

    def board_changed(self, board_id: bytes, source: Connection | None = None) -> None:
        """The store gained envelopes of ``board_id``: push them and publish events."""
        self.store_watcher.note_activity()
        for conn in self._peers:
            if conn is not source:
                conn.notify(board_id)
        board = self._boards.get(board_id)
        if board is not None:
            board.publish_events()

    # ------------------------------------------------------------------ services

    async def serve(self, host: str, port: int,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept connections on ``host:port`` (0 picks a free port)."""
        listener = await open_listener(host, port)
        bound = listener.socket.getsockname()
        self.listen_address = (bound[0], bound[1])
        log.info("listening on %s (node key %s)", format_address(*self.listen_address),
                 fingerprint(self.node_id))
        task_status.started(self.listen_address)
        await serve_inbound(self, listener, self.admission, self.connection_options)

    async def _before_store_poll(self) -> None:
        """Every store poll: write the last syncs due, and apply deferred work whose
        connection ended before its link fell quiet (a live connection does its own),
        in steps."""
        self._sync_record.flush()
        if self._orphaned_work:
            self._orphaned_work = False
            while self.has_deferred() and self.flush_deferred():
                await trio.lowlevel.checkpoint()

    def stop(self, *, after: float = 0.0, wiped: bool = False) -> None:
        """End the node's services in ``after`` seconds: the block of :func:`open_node`
        is cancelled and returns. ``wiped``: its data dir was wiped (a remote wipe, say),
        so :func:`open_node` wipes what the stopping node writes meanwhile too."""
        self.wiped = self.wiped or wiped

        async def later() -> None:
            await trio.sleep(after)
            self._nursery.cancel_scope.cancel()

        self._nursery.start_soon(later)

    def stopped(self) -> None:
        """The node's services ended: write what is still pending."""
        with contextlib.suppress(P2paidError):
            self._sync_record.flush(everything=True)

    def publish_status(self) -> None:
        """Publish :meth:`status` now (it is also published every few seconds)."""
        self.store.write_runtime(encode_runtime(self.status()))

    def status(self) -> dict[str, object]:
        """What ``p2paid status`` and ``peers`` show of a running node: its connected
        ``peers`` (each with its ``kind``, ``peer`` or ``relay``), each configured peer
        and relay in ``targets`` (connected, or unreachable since when and why), and
        each board's ``last_sync``."""
        return {
            "pid": os.getpid(), "node": fingerprint(self.node_id),
            "listen": None if self.listen_address is None else format_address(
                *self.listen_address),
            "peers": [asdict(p) for p in self.peers()],
            "targets": [asdict(t) for t in self.dialer.states()],
            "last_sync": {b.hex(): t for b, t in self.last_sync.items()},
            **self.status_extras,
        }


@contextlib.asynccontextmanager
async def open_node(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    listen: tuple[str, int] | None = ("0.0.0.0", DEFAULT_PORT),
    peers: Sequence[tuple[str, int]] = (),
    mdns: bool = True,
    advertise: bool = True,
    max_connections: int = MAX_CONNECTIONS,
    max_per_address: int = MAX_PER_ADDRESS,
    store: Store | None = None,
    credentials: CredentialSource = None,
) -> AsyncIterator[Node]:
    """Run a node for the duration of the ``async with`` block.

    One node runs on a data dir at a time: the node holds its lock
    (:class:`~p2paid.storage.lock.DataDirLock`) while it runs. Other processes may
    still open the store beside it (the CLI's ``list``, ``post``, ...): the node
    picks their writes up.

    An error that leaves the block, from the node or from the block itself, comes
    out as raised, not wrapped in an ``ExceptionGroup`` (several at once do come out
    as a group; see :mod:`p2paid.net.groups`), so ``except p2paid.P2paidError``
    works as it reads.

    Args:
        data_dir: the store (created if missing, which is logged); default
            :func:`default_data_dir`.
        listen: IP address and port to accept peers on, or None to only dial out.
            Port 0 picks a free port; if the default port is in use, a free one is used.
        peers: addresses to keep connections to.
        mdns: find peers on the local network (and be found, unless ``advertise`` is False).
        max_connections: cap on simultaneous peer connections.
        max_per_address: cap on inbound connections from one address (an IPv6 /64)
            that are not known peers.
        store: an already open store to use instead of ``data_dir`` (not closed here).
        credentials: the passphrase of a protected data dir (see :func:`open_store`).

    Raises:
        DataDirBusyError: another node or a relay runs on this data dir.
        UsageError: the data dir is a relay's.
        FileError: the data dir cannot be used.
        StorageError: the store cannot be opened.
        ListenError: the listen address cannot be bound (in use, privileged, not an
            address of this machine).
    """
    with collapse_single_errors():
        own_store = store is None
        st = open_store(data_dir, credentials=credentials) if store is None else store
        ran: list[Node] = []
        try:
            with DataDirLock(st.data_dir, "node"):
                async with _running_node(st, listen, peers, mdns, advertise,
                                         max_connections, max_per_address) as node:
                    ran.append(node)
                    if own_store and st.created:  # (a mistyped data dir, say)
                        log.info("created a new data dir at %s", st.data_dir)
                    yield node
        finally:
            if own_store:
                st.close()
            if ran and ran[0].wiped:  # what the node wrote while it stopped goes too
                wipe(st.data_dir, stop_node=False)


@contextlib.asynccontextmanager
async def _running_node(st: Store, listen: tuple[str, int] | None,
                        peers: Sequence[tuple[str, int]], mdns: bool, advertise: bool,
                        max_connections: int, max_per_address: int) -> AsyncIterator[Node]:
    """The node's nursery and services, on an open, locked store."""
    started: list[Node] = []
    try:
        async with trio.open_nursery() as nursery:
            node = Node(st, nursery, max_connections=max_connections,
                        max_per_address=max_per_address)
            started.append(node)
            for board in st.boards():
                board.load()
            await nursery.start(node.dialer.serve)
            if listen is not None:
                await _start_listener(node, nursery, listen)
            await nursery.start(node.store_watcher.run)
            await nursery.start(StatusPublisher(st, node.status).run)
            await nursery.start(node.relays.watch)
            for host, port in peers:
                node.connect(host, port)
            if mdns:
                from p2paid.net.mdns import run_mdns

                listen_host = node.listen_address[0] if node.listen_address else None
                announce = node.listen_address[1] if node.listen_address and advertise else None
                await nursery.start(run_mdns, node.dialer, listen_host, announce)
            try:
                yield node
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for node in started:  # (its tasks have ended: nothing races this)
            node.stopped()


async def _start_listener(node: Node, nursery: trio.Nursery, listen: tuple[str, int]) -> None:
    """Listen on ``listen``; on the default port, if it is in use, on a free one."""
    host, port = listen
    try:
        await nursery.start(node.serve, host, port)
    except ListenError as exc:
        if port != DEFAULT_PORT or exc.errno != errno.EADDRINUSE:
            raise
        log.info("port %d on %s is in use; listening on a free port instead", port, host)
        await nursery.start(node.serve, host, 0)
