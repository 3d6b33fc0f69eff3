"""Relays: blind store-and-forward servers for boards whose members are not on one LAN.

A relay speaks the same Noise transport and replication protocol as a node,
with boards named by id instead of tags. It holds no board secret: it checks
every envelope's signature and hash chain (so nothing forged or forked passes
through it), stores what extends a feed, and pushes it at once to every other
connected client of that board. It can read nothing; see ``protocol/SPEC.md``
section 14 for what it does see.

``serve_relay`` is a trio service (``await nursery.start(serve_relay, ...)``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, final

import trio

from p2paid.core.codes import CloseReason, RefusedCode, SyncEventKind
from p2paid.core.identity import NodeKey, fingerprint
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import SyncEvent
from p2paid.core.wire import Hello, Message, Refused
from p2paid.errors import StorageError, UsageError
from p2paid.net.admission import Admission, AdmissionLimits
from p2paid.net.connection import Connection
from p2paid.net.groups import collapse_single_errors
from p2paid.net.inbound import serve_inbound
from p2paid.net.interfaces import ConnectionOptions
from p2paid.net.tcp import check_listen_host, format_address, listen_error, open_listener
from p2paid.relay.replica import Carrier, ClientReplica, RelayLimits, RelayReplica
from p2paid.relay.state import ClientInfo
from p2paid.storage.lock import DataDirLock
from p2paid.storage.roles import NODE_KEY, claim_for_relay
from p2paid.storage.runtime import STATUS_INTERVAL, encode_runtime, fresh_runtime
from p2paid.storage.sqlite import Database

if TYPE_CHECKING:
    from p2paid.relay.metrics import RelayMetrics

__all__ = ["Relay", "RelayOptions", "serve_relay"]

log = logging.getLogger("p2paid.relay.server")

DEFAULT_RELAY_PORT: Final = 7447
RUNTIME_KEY: Final = "relay-runtime"
#: Handshakes in progress, in all and from one address (past the connection cap too,
#: so that a known client can get in and evict a stranger, or a stranger be told
#: Close("full")).
MAX_HANDSHAKES: Final = 256
MAX_HANDSHAKES_PER_ADDRESS: Final = 8
#: Close reasons of a relay that requires access tokens.
TOKEN_REQUIRED: Final = CloseReason.TOKEN_REQUIRED
TOKEN_INVALID: Final = CloseReason.TOKEN_INVALID


def open_relay_db(data_dir: str | os.PathLike[str]) -> Database:
    """The relay's store; refuses a data dir that belongs to a node.

    Raises:
        UsageError: the data dir is a node's (it has boards or a node key).
        StorageError: the store cannot be opened.
    """
    db = Database(Path(data_dir))
    try:
        claim_for_relay(db, data_dir)
    except BaseException:
        db.close()
        raise
    return db


def relay_key(db: Database) -> NodeKey:
    raw = db.get_meta(NODE_KEY)
    if raw is None:
        raw = NodeKey.generate().private_bytes()
        db.set_meta(NODE_KEY, raw)
    return NodeKey(raw)


class StatusSink(Protocol):
    """Where a relay process publishes its status: its data dir, or the cluster's table."""

    def publish(self, status: dict[str, Any]) -> None: ...

    def clear(self) -> None: ...


@final
class _MetaStatus:
    """The status in the data dir's SQLite meta table (one process per data dir)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def publish(self, status: dict[str, Any]) -> None:
        self._db.set_meta(RUNTIME_KEY, encode_runtime(status))

    def clear(self) -> None:
        self._db.set_meta(RUNTIME_KEY, b"{}")


@final
class Relay:
    """A running relay (the :class:`~p2paid.net.connection.ConnectionHost` for its clients).

    Args:
        replica: the process's replica: SQLite's :class:`RelayReplica`, or a cluster's
            :class:`~p2paid.relay.cluster.ClusterReplica` (then ``in_thread``: batches
            are received in worker threads, and the status is written from one).
    """

    def __init__(self, node_key: NodeKey, replica: Carrier, status: StatusSink,
                 limits: RelayLimits, nursery: trio.Nursery, *, in_thread: bool = False,
                 tokens_check: Callable[[bytes], bytes | None] | None = None,
                 client_since: Callable[[bytes], int | None] | None = None) -> None:
        self.limits = limits
        self.node_key = node_key
        self.replica = replica
        self._status = status
        self._in_thread = in_thread
        self._check_token = tokens_check or (lambda token: None)
        self._client_since = client_since or (lambda node_id: None)
        self._nursery = nursery
        self._conns: dict[Connection, ClientInfo] = {}
        self.admission = Admission(AdmissionLimits(
            limits.max_connections, limits.max_per_address, MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_ADDRESS))
        self.listen_address: tuple[str, int] | None = None
        self.public: tuple[str, int] | None = None
        self.started = time.time()
        self.metrics: RelayMetrics | None = None
        #: a batch is received in one call (so a quota refuses it whole; a relay only
        #: verifies and stores, about 30 ms for a full batch), at its clients' rate
        self.connection_options = ConnectionOptions(rate_limit=limits.rate_bytes_per_s,
                                                    receive_slice=None,
                                                    receive_in_thread=in_thread)

    @classmethod
    def on_sqlite(cls, db: Database, limits: RelayLimits, nursery: trio.Nursery,
                  key: NodeKey | None = None) -> Relay:
        """A relay whose envelopes and tokens (and key, unless given) are in one data
        dir's SQLite file."""
        replica = RelayReplica.open(db, limits)
        return cls(key or relay_key(db), replica, _MetaStatus(db), limits, nursery,
                   tokens_check=replica.tokens.check,
                   client_since=replica.ledger.client_since)

    @property
    def connections(self) -> int:
        return len(self._conns)

    def address(self) -> RelayAddress:
        host, port = self.public or self.listen_address or ("127.0.0.1", DEFAULT_RELAY_PORT)
        return RelayAddress(host, port, self.node_key.public)

    # ------------------------------------------------------------------ ConnectionHost

    def replica_for(self, conn: Connection) -> ClientReplica:
        info = self._conns.get(conn) or ClientInfo(conn.remote_id, conn.address_key or "")
        return ClientReplica(self.replica, info)

    def on_hello(self, conn: Connection, hello: Hello) -> list[Message] | None:
        """Check the client's access token (SPEC 14.3)."""
        info = self._conns.get(conn)
        if hello.token is not None:
            digest = self._check_token(hello.token)
            if digest is not None:
                if info is not None:
                    info.token_hash = digest
                return []
            if self.limits.require_token:
                conn.close_reason = TOKEN_INVALID
                log.info("client %s (%s) presented an unknown or revoked token",
                         fingerprint(conn.remote_id), conn.address)
                return None
            return [Refused(b"", RefusedCode.TOKEN_INVALID, "this relay does not know that "
                            "access token (revoked?); serving without it, within the "
                            "new-board quotas")]
        if self.limits.require_token:
            conn.close_reason = TOKEN_REQUIRED
            log.info("client %s (%s) has no access token", fingerprint(conn.remote_id),
                     conn.address)
            return None
        return []

    def register(self, conn: Connection) -> bool:
        conn.known_since = self._known_since(conn.remote_id)
        refusal = self.admission.admit(conn)
        if refusal is not None:
            conn.close_reason = refusal
            return False
        self._conns[conn] = ClientInfo(conn.remote_id, conn.address_key or "")
        log.info("client %s connected (%s)", fingerprint(conn.remote_id), conn.address)
        if self.metrics is not None:
            self.metrics.connected(len(self._conns))
        return True

    def _known_since(self, node_id: bytes) -> int | None:
        try:
            return self._client_since(node_id)
        except StorageError as exc:  # the cluster's database is away: a stranger for now
            log.warning("cannot look up client %s: %s", fingerprint(node_id), exc)
            return None

    def unregister(self, conn: Connection) -> None:
        self.admission.release(conn)
        if self._conns.pop(conn, None) is not None:
            log.info("client %s left (%s)", fingerprint(conn.remote_id),
                     conn.close_reason or "closed")
            if self.metrics is not None:
                self.metrics.connected(len(self._conns))
        # A client dropped mid-batch may have left stored envelopes unannounced.
        self.after_receive(conn)

    def after_receive(self, conn: Connection) -> None:
        """Push what was stored to every client. The set of changed boards is shared by
        all connections, so every client is told, the sender included: its session
        knows what it sent, so nothing is echoed."""
        for board_id in self.replica.take_changed():
            self.notify_board(board_id)

    def notify_board(self, board_id: bytes) -> None:
        """Tell every client that ``board_id`` grew (here, or in another process)."""
        for other in self._conns:
            other.notify(board_id)

    def resync(self) -> None:
        """After a gap in the cluster's notifications: every client checks every board
        it shares with us again."""
        for conn in self._conns:
            if conn.session is not None:
                for board_id in conn.session.shared_boards:
                    conn.notify(board_id)

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        if event.kind is SyncEventKind.RECEIVED and event.count:
            # its upload is stored here now: a known client
            conn.known_since = self._known_since(conn.remote_id)
            if self.metrics is not None:
                self.metrics.envelopes_stored(event.count)
            log.debug("board %s: %d envelope(s) from %s", event.board_id.hex()[:12],
                      event.count, fingerprint(conn.remote_id))

    # ------------------------------------------------------------------ service

    async def accept_loop(self, listener: trio.SocketListener,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        task_status.started()
        await serve_inbound(self, listener, self.admission, self.connection_options)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "started": self.started,
            "address": str(self.address()), "connections": len(self._conns),
            "boards": self.replica.board_count(), "bytes": self.replica.total_bytes,
            "stats": asdict(self.replica.stats), "limits": _limits_json(self.limits),
        }

    async def _blocking(self, fn: Callable[[], None]) -> None:
        if self._in_thread:
            await trio.to_thread.run_sync(fn)
        else:
            fn()

    async def write_status(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        task_status.started()
        try:
            while True:
                try:
                    refresh = getattr(self.replica, "refresh_sizes", None)
                    if refresh is not None:
                        await self._blocking(refresh)
                    status = self.status()
                    await self._blocking(functools.partial(self._status.publish, status))
                except StorageError as exc:  # a cluster's database restarting
                    log.warning("cannot publish the relay's status: %s", exc)
                if self.metrics is not None:
                    self.metrics.refresh(self.replica.board_count(), self.replica.total_bytes,
                                         self.replica.stats)
                await trio.sleep(STATUS_INTERVAL)
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self._blocking(self._status.clear)


def _limits_json(limits: RelayLimits) -> dict[str, Any]:
    out = asdict(limits)
    allowed = out.pop("allowed_boards")
    out["allowed_boards"] = None if allowed is None else sorted(b.hex() for b in allowed)
    return out


@dataclass
class RelayOptions:
    listen: tuple[str, int] = ("0.0.0.0", DEFAULT_RELAY_PORT)
    #: host (and port; None = the listening port) that members use to reach the relay
    public: tuple[str, int | None] | None = None
    metrics: tuple[str, int] | None = None
    limits: RelayLimits = field(default_factory=RelayLimits)
    #: a ``postgresql://`` URL: one process of a cluster sharing that database (None:
    #: the data dir's SQLite file)
    store: str | None = None
    #: the relay's key (``relay key export``); a cluster's processes share one
    key_file: str | None = None
    #: connections to the database per process (a cluster only)
    pool_size: int = 8


async def serve_relay(
    data_dir: str | os.PathLike[str] | None,
    options: RelayOptions | None = None,
    *,
    task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled. ``task_status.started`` gets the :class:`Relay`.

    On SQLite (no ``options.store``) the relay holds the data dir's lock
    (:class:`~p2paid.storage.lock.DataDirLock`) while it runs; ``relay status`` and
    ``relay token`` still open it beside. With a ``postgresql://`` store it is one
    process of a cluster and needs no data dir (:func:`serve_cluster_relay`). A
    single error comes out as raised, not in an ``ExceptionGroup``
    (:mod:`p2paid.net.groups`).

    Raises:
        UsageError: the data dir belongs to a node; a cluster without a key file.
        DataDirBusyError: a relay (or a node) already runs on it.
        ListenError: the listen or metrics address cannot be bound.
        StorageError: the cluster's database is unreachable or at another schema.
    """
    opts = options or RelayOptions()
    with collapse_single_errors():
        if opts.store is not None:
            await _serve_cluster(opts, task_status)
            return
        if data_dir is None:
            raise UsageError("a relay on SQLite needs a data dir")
        db = open_relay_db(data_dir)
        try:
            with DataDirLock(data_dir, "relay"):
                key = None if opts.key_file is None else _key_from(opts.key_file)
                await _serve(lambda nursery: Relay.on_sqlite(db, opts.limits, nursery, key),
                             opts, task_status)
                if db.created:
                    log.info("created a new data dir at %s", db.data_dir)
        finally:
            db.close()


def _key_from(path: str) -> NodeKey:
    from p2paid.relay.keyfile import read_key_file

    return read_key_file(path)


async def _serve_cluster(opts: RelayOptions, task_status: trio.TaskStatus[Relay]) -> None:
    """One process of a relay cluster on ``opts.store`` (PostgreSQL)."""
    if opts.key_file is None:
        raise UsageError("a relay on PostgreSQL needs its key: export it once with "
                         "'p2paid relay key export > relay.key' and give every process "
                         "--key-file relay.key")
    from p2paid.relay.processes import open_cluster

    key = _key_from(opts.key_file)
    assert opts.store is not None
    cluster = await trio.to_thread.run_sync(open_cluster, opts.store, opts.limits,
                                            opts.pool_size)
    try:
        await _serve(lambda nursery: cluster.relay(key, nursery), opts, task_status,
                     cluster.start_tasks)
    finally:
        await trio.to_thread.run_sync(cluster.close)


async def _serve(make: Callable[[trio.Nursery], Relay], opts: RelayOptions,
                 task_status: trio.TaskStatus[Relay],
                 more: Callable[[Relay, trio.Nursery], Any] | None = None) -> None:
    """The relay's listener, metrics and tasks."""
    listener = await open_listener(*opts.listen, holder="another p2paid relay")
    async with trio.open_nursery() as nursery:
        relay = make(nursery)
        bound = listener.socket.getsockname()
        relay.listen_address = (bound[0], bound[1])
        if opts.public is None:
            relay.public = _guess_public(relay.listen_address)
        else:
            relay.public = (opts.public[0], opts.public[1] or relay.listen_address[1])
        if opts.metrics is not None:
            try:
                relay.metrics = _open_metrics(*opts.metrics)
            except BaseException:
                await listener.aclose()
                raise
        try:
            if more is not None:
                await more(relay, nursery)
            await nursery.start(relay.accept_loop, listener)
            await nursery.start(relay.write_status)
            log.info("relay %s listening on %s", fingerprint(relay.node_key.public),
                     format_address(*relay.listen_address))
            task_status.started(relay)
            await trio.sleep_forever()
        finally:
            if relay.metrics is not None:
                relay.metrics.close()


def _open_metrics(host: str, port: int) -> RelayMetrics:
    """Serve metrics on ``host:port``.

    Raises:
        ListenError: the address cannot be bound.
    """
    from p2paid.relay.metrics import RelayMetrics

    check_listen_host(host, port)
    try:
        return RelayMetrics(host, port)
    except OSError as exc:
        raise listen_error(host, port, exc, option="--metrics",
                           holder="another relay's metrics") from exc


def _guess_public(listen: tuple[str, int]) -> tuple[str, int]:
    """The listen address, or this host's first non-loopback IPv4 address."""
    host, port = listen
    if host not in ("0.0.0.0", "::", ""):
        return host, port
    from p2paid.net.mdns import local_networks

    networks = local_networks()
    return (str(networks[0].ip) if networks else "127.0.0.1"), port


def read_relay_runtime(data_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a relay running on ``data_dir`` last published (None if none runs)."""
    db = open_relay_db(data_dir)
    try:
        raw = db.get_meta(RUNTIME_KEY)
    finally:
        db.close()
    return fresh_runtime(raw)
