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
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final, final

import trio

from p2paid.board.relayplan import plan_relays
from p2paid.board.store import Store, open_store
from p2paid.core.codes import CloseReason, DialSource, SyncEventKind
from p2paid.core.identity import NodeKey, fingerprint
from p2paid.core.invite import Invite
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import SyncEvent
from p2paid.core.text import plural
from p2paid.core.wire import Hello, Message
from p2paid.errors import InviteError, P2paidError, UsageError
from p2paid.net.admission import Admission, AdmissionLimits
from p2paid.net.connection import Connection
from p2paid.net.inbound import serve_inbound
from p2paid.net.interfaces import ConnectionOptions
from p2paid.net.peers import Dialer, DialTarget
from p2paid.net.tcp import format_address, open_listener
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.replica import StoreReplica

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
#: How often the node looks for envelopes other processes (the CLI) stored.
STORE_POLL_INTERVAL: Final = 0.25
STATUS_INTERVAL: Final = 2.0
RELAY_REFRESH_INTERVAL: Final = 5.0
#: Seconds without new envelopes after which the node saves board snapshots.
SNAPSHOT_WHEN_QUIET: Final = 5.0


@final
@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A connected peer, as :meth:`Node.peers` and ``p2paid peers`` show it."""

    node_id: str
    fingerprint: str
    address: str
    direction: str  #: "out" (we dialled) or "in"
    connected_since: float
    shared_boards: int
    bytes_in: int
    bytes_out: int


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
        self._conns: dict[bytes, Connection] = {}
        self._busy = False
        self._boards: dict[bytes, AsyncBoard] = {}
        self._changed = trio.Event()
        self._last_id = store.last_arrival()
        self.listen_address: tuple[str, int] | None = None
        self.last_sync: dict[bytes, float] = {}
        #: how its connections run: big batches are applied once a link falls quiet
        self.connection_options = ConnectionOptions(deferred=self)
        self.dialer = Dialer(self, self.connection_options)
        self._board_ids = {b.id for b in store.boards()}

    def __repr__(self) -> str:
        return f"<Node {fingerprint(self.node_id)} {len(self._conns)} peers>"

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
        self._board_ids = {b.id for b in self.store.boards()}
        for conn in list(self._conns.values()):
            conn.close(CloseReason.BOARDS_CHANGED)
        with contextlib.suppress(P2paidError):
            self.refresh_relays()

    # ------------------------------------------------------------------ peers

    def connect(self, host: str, port: int) -> None:
        """Keep a connection to ``host:port`` (reconnecting with backoff)."""
        self.dialer.add(DialTarget(host, port, source=DialSource.CONFIGURED))

    def relay_plan(self) -> dict[str, frozenset[bytes]]:
        """Which boards to sync through which relay: configured relays (for all or some
        boards) and each board's own (from its invite, added or accepted here, or
        published by this node's member). Relays that other members suggest are not
        dialled until accepted (``relayplan`` explains why)."""
        return plan_relays(self.store.relays(),
                           {b.id: b.relays_in_use() for b in self.store.boards()})

    def refresh_relays(self) -> None:
        """Dial the relays of :meth:`relay_plan`; redial one whose boards changed."""
        wanted = _relay_targets(self.relay_plan())
        for key, target in list(self.dialer.targets.items()):
            if target.source is DialSource.RELAY and (
                    key not in wanted or wanted[key][1] != target.boards
                    or wanted[key][0].key != target.node_id
                    or wanted[key][0].token != target.token):
                self.dialer.remove(*key)
                conn = self._conns.get(target.node_id or b"")
                if conn is not None:
                    conn.close(CloseReason.BOARDS_CHANGED)
        for key, (address, board_ids) in wanted.items():
            if self.dialer.get(*key) is None:
                log.info("syncing %s through relay %s%s", plural(len(board_ids), "board"),
                         address.without_token_text(),
                         " (with an access token)" if address.token else "")
                self.dialer.add(DialTarget(address.host, address.port, source=DialSource.RELAY,
                                           node_id=address.key, pinned=True, to_relay=True,
                                           boards=board_ids, token=address.token))

    async def watch_relays(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """Follow changes of the relays in use (checked every few seconds): relays
        configured, added or accepted by another process, or published by our member."""
        task_status.started()
        while True:
            try:
                self.refresh_relays()
            except P2paidError as exc:
                log.warning("cannot plan relays: %s", exc)
            await trio.sleep(RELAY_REFRESH_INTERVAL)

    def peers(self) -> list[PeerInfo]:
        return [
            PeerInfo(c.remote_id.hex(), fingerprint(c.remote_id), c.address,
                     "out" if c.initiator else "in", c.connected_at,
                     len(c.session.shared_boards) if c.session else 0, c.bytes_in, c.bytes_out)
            for c in self._conns.values()
        ]

    def is_connected(self, node_id: bytes) -> bool:
        return node_id in self._conns

    async def wait_disconnected(self, node_id: bytes) -> None:
        while node_id in self._conns:
            await self.wait_changed()

    async def wait_for_peers(self, count: int = 1) -> None:
        """Wait until at least ``count`` peers are connected."""
        while len(self._conns) < count:
            await self.wait_changed()

    async def wait_in_sync(self, board_id: bytes | None = None) -> None:
        """Wait until every connected peer holds everything we hold (of one board or all)."""
        while True:
            pending = [
                c for c in self._conns.values()
                if c.session is None or not c.session.greeted or any(
                    not c.session.is_in_sync(b)
                    for b in c.session.shared_boards if board_id in (None, b))
            ]
            if not pending:
                return
            await self.wait_changed()

    async def wait_changed(self) -> None:
        """Wait until something happens: a peer comes or goes, or envelopes arrive."""
        await self._changed.wait()

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ ConnectionHost

    def replica_for(self, conn: Connection) -> StoreReplica:
        return self.replica

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message]:
        return []

    def register(self, conn: Connection) -> bool:
        remote = conn.remote_id
        if remote == self.node_id:
            conn.close_reason = CloseReason.SELF
            return False
        conn.known_since = self.peerbook.first_seen(remote)
        existing = self._conns.get(remote)
        if existing is not None and not self._keep_new(existing, conn):
            conn.close_reason = CloseReason.DUPLICATE
            return False
        refusal = self.admission.admit(conn, replacing=existing is not None)
        if refusal is not None:
            conn.close_reason = refusal
            return False
        if existing is not None:
            existing.close(CloseReason.DUPLICATE)
        self._conns[remote] = conn
        log.info("peer %s connected (%s, %s)", fingerprint(remote), conn.address,
                 "outbound" if conn.initiator else "inbound")
        self._pulse()
        return True

    def _keep_new(self, existing: Connection, new: Connection) -> bool:
        """Of two connections to one peer, both sides keep the one opened by the
        smaller node id (so they agree); from one opener, the older one."""
        def opener(c: Connection) -> bytes:
            return self.node_id if c.initiator else c.remote_id

        return opener(new) < opener(existing)

    def unregister(self, conn: Connection) -> None:
        self.admission.release(conn)
        self.after_receive(conn)  # envelopes stored from a batch cut short
        if self._conns.get(conn.remote_id) is conn:
            del self._conns[conn.remote_id]
            log.info("peer %s left (%s)", fingerprint(conn.remote_id),
                     conn.close_reason or "closed")
            self._pulse()

    # ------------------------------------------------------------------ DeferredWork

    def has_deferred(self) -> bool:
        """Bulk syncs stored changes that are not applied yet."""
        return bool(self.replica.deferred)

    def flush_deferred(self) -> bool:
        """Apply (a bounded part of) what bulk syncs stored, then tell peers and
        subscribers; True while more remains. (Unbounded until the replica's flush
        takes a bound.)"""
        for board_id in self.replica.flush():
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
        if event.kind is SyncEventKind.RECEIVED and event.count:
            self.last_sync[event.board_id] = time.time()
            log.info("board %r: %d new envelope(s) from %s", name, event.count, peer)
        elif event.kind is SyncEventKind.IN_SYNC:
            self.last_sync[event.board_id] = time.time()
            log.info("board %r: in sync with %s", name, peer)
        elif event.kind is SyncEventKind.LINKED:
            log.info("board %r: syncing with %s", name, peer)
        elif event.kind is SyncEventKind.REFUSED:
            log.warning("board %r: %s refused: %s", name, peer, event.detail)

    def _board_name(self, board_id: bytes) -> str:
        try:
            return self.store.board(board_id).name
        except UsageError:
            return board_id.hex()[:12]

    def board_changed(self, board_id: bytes, source: Connection | None = None) -> None:
        """The store gained envelopes of ``board_id``: push them and publish events."""
        self._busy = True
        for conn in self._conns.values():
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

    async def watch_store(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        """Pick up what other processes (the CLI) write to the store, within a second."""
        task_status.started()
        quiet_since = trio.current_time()
        while True:
            await trio.sleep(STORE_POLL_INTERVAL)
            while self.has_deferred() and self.flush_deferred():
                await trio.lowlevel.checkpoint()
            if self.poll_store() or self._busy:
                quiet_since = trio.current_time()
                self._busy = False
            elif trio.current_time() - quiet_since > SNAPSHOT_WHEN_QUIET:
                for board in self.store.boards():  # one at a time: each costs O(board)
                    if board.maybe_snapshot():
                        break

    def poll_store(self) -> bool:
        """Apply what other processes stored; True if anything was new."""
        last = self.store.last_arrival()
        boards = {b.id for b in self.store.boards()}
        if boards != self._board_ids:
            log.info("the set of joined boards changed; reconnecting to peers")
            self._boards_changed()
        if last == self._last_id:
            return False
        self._last_id = last
        for board in self.store.boards():
            before = board.seen_id
            board.refresh()
            if board.seen_id != before:
                self.board_changed(board.id)
        return True

    async def write_status(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        """Publish who is connected in the store, for ``p2paid status`` and ``peers``."""
        task_status.started()
        try:
            while True:
                self.store.write_runtime(json.dumps(self.status()).encode())
                await trio.sleep(STATUS_INTERVAL)
        finally:
            with contextlib.suppress(Exception):
                self.store.write_runtime(b"{}")

    def status(self) -> dict[str, object]:
        return {
            "pid": os.getpid(), "updated": time.time(), "node": fingerprint(self.node_id),
            "listen": None if self.listen_address is None else format_address(
                *self.listen_address),
            "peers": [asdict(p) for p in self.peers()],
            "last_sync": {b.hex(): t for b, t in self.last_sync.items()},
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
) -> AsyncIterator[Node]:
    """Run a node for the duration of the ``async with`` block.

    Args:
        data_dir: the store (created if missing); default :func:`default_data_dir`.
        listen: address to accept peers on, or None to only dial out. Port 0 picks a
            free port; if the default port is taken, a free one is used.
        peers: addresses to keep connections to.
        mdns: find peers on the local network (and be found, unless ``advertise`` is False).
        max_connections: cap on simultaneous peer connections.
        max_per_address: cap on inbound connections from one address (an IPv6 /64)
            that are not known peers.
        store: an already open store to use instead of ``data_dir`` (not closed here).

    Raises:
        StorageError: the store cannot be opened.
        OSError: the listen address cannot be bound.
    """
    own_store = store is None
    st = open_store(data_dir) if store is None else store
    try:
        async with trio.open_nursery() as nursery:
            node = Node(st, nursery, max_connections=max_connections,
                        max_per_address=max_per_address)
            for board in st.boards():
                board.load()
            await nursery.start(node.dialer.serve)
            if listen is not None:
                await _start_listener(node, nursery, listen)
            await nursery.start(node.watch_store)
            await nursery.start(node.write_status)
            await nursery.start(node.watch_relays)
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
        if own_store:
            st.close()


def _relay_targets(plan: dict[str, frozenset[bytes]]
                   ) -> dict[tuple[str, int], tuple[RelayAddress, frozenset[bytes]]]:
    """One dial target per relay host and port: the boards of every address naming it,
    and its token if any of them carries one."""
    wanted: dict[tuple[str, int], tuple[RelayAddress, frozenset[bytes]]] = {}
    for text, board_ids in plan.items():
        try:
            address = RelayAddress.parse(text)
        except InviteError as exc:  # kept out of the plan already; never fatal
            log.warning("ignoring relay %r: %s", text[:80], exc)
            continue
        key = (address.host, address.port)
        known = wanted.get(key)
        if known is not None and known[0].key == address.key:
            address = known[0].with_token(known[0].token or address.token)
            board_ids = known[1] | board_ids
        wanted[key] = (address, board_ids)
    return wanted


async def _start_listener(node: Node, nursery: trio.Nursery, listen: tuple[str, int]) -> None:
    host, port = listen
    try:
        await nursery.start(node.serve, host, port)
    except OSError:
        if port != DEFAULT_PORT:
            raise
        log.info("port %d is taken; listening on a free port instead", port)
        await nursery.start(node.serve, host, 0)


def read_runtime(data_dir: str | os.PathLike[str]) -> dict[str, object] | None:
    """The status a running node last published in ``data_dir`` (None if none runs)."""
    with open_store(Path(data_dir), create=False) as store:
        raw = store.read_runtime()
    if not raw:
        return None
    try:
        status = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(status, dict) or not status:
        return None
    updated = status.get("updated")
    if not isinstance(updated, int | float) or time.time() - updated > 3 * STATUS_INTERVAL + 5:
        return None
    return status
