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

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, final

import trio

from p2paid.core.codes import CloseReason, RefusedCode, Role, SyncEventKind
from p2paid.core.envelope import Envelope
from p2paid.core.feed import FeedHead, ForkProof
from p2paid.core.identity import NodeKey, fingerprint
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import BoardAccess, Received, SyncEvent
from p2paid.core.wire import Hello, Message, Refused
from p2paid.errors import EnvelopeError, UsageError
from p2paid.net.admission import Admission, AdmissionLimits
from p2paid.net.connection import Connection
from p2paid.net.inbound import serve_inbound
from p2paid.net.interfaces import ConnectionOptions
from p2paid.net.tcp import format_address, open_listener
from p2paid.relay.state import ClientInfo, Quotas, RelayLedger, RelayTokens
from p2paid.storage.ingest import ingest, record_fork
from p2paid.storage.sqlite import Database, ForkRow

__all__ = ["ClientReplica", "Relay", "RelayLimits", "RelayReplica", "serve_relay"]

log = logging.getLogger("p2paid.relay.server")

DEFAULT_RELAY_PORT: Final = 7447
RUNTIME_KEY: Final = "relay-runtime"
ROLE_KEY: Final = "role"
_NODE_KEY: Final = "node_key"
STATUS_INTERVAL: Final = 2.0
#: Handshakes in progress, in all and from one address (past the connection cap too,
#: so that a known client can get in and evict a stranger, or a stranger be told
#: Close("full")).
MAX_HANDSHAKES: Final = 256
MAX_HANDSHAKES_PER_ADDRESS: Final = 8
MIB: Final = 1024 * 1024
#: Close reasons of a relay that requires access tokens.
TOKEN_REQUIRED: Final = CloseReason.TOKEN_REQUIRED
TOKEN_INVALID: Final = CloseReason.TOKEN_INVALID


@final
@dataclass(frozen=True, slots=True)
class RelayLimits:
    """What an operator allows. Every limit, when reached, is logged and told to the peer."""

    max_connections: int = 512
    #: inbound connections from one address (IPv4, or IPv6 /64) of clients that hold
    #: nothing here: a community centre's or a carrier NAT's worth of members
    max_per_address: int = 32
    #: bytes per second one connection may send us (beyond a burst of 4 s worth)
    rate_bytes_per_s: int = 1 * MIB
    max_board_bytes: int = 256 * MIB
    max_total_bytes: int = 4 * 1024 * MIB
    #: when not None, only these board ids are carried
    allowed_boards: frozenset[bytes] | None = None
    #: bytes in boards one client key introduced (without a token): a group's board
    #: of 100,000 posts is about 60 MiB
    quota_per_key: int = 256 * MIB
    #: bytes in boards introduced from one address (IPv4, or IPv6 /64)
    quota_per_address: int = 512 * MIB
    #: refuse clients that present no valid access token
    require_token: bool = False


@final
class RelayReplica:
    """A replica holding envelopes blind, for any board the limits allow."""

    def __init__(self, db: Database, limits: RelayLimits) -> None:
        self._db = db
        self._limits = limits
        self._heads: dict[bytes, dict[bytes, FeedHead]] = {}
        self._sizes: dict[bytes, int] = db.board_sizes()
        self._fork_seqs: dict[bytes, dict[bytes, int]] = {}
        self.tokens = RelayTokens(db)
        self.ledger = RelayLedger(db, self.tokens, self._sizes)
        self._quotas = Quotas(limits.quota_per_key, limits.quota_per_address)
        self._full_logged: dict[bytes, float] = {}
        self.changed_boards: set[bytes] = set()
        self.stats: dict[str, int] = {"stored": 0, "duplicates": 0, "refused": 0,
                                      "refused_full": 0, "refused_quota": 0}

    @property
    def role(self) -> Role:
        return Role.RELAY

    @property
    def total_bytes(self) -> int:
        return sum(self._sizes.values())

    def boards(self) -> Sequence[BoardAccess]:
        return [BoardAccess(b, None) for b in self._sizes]

    def board_count(self) -> int:
        return len(self._sizes)

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        allowed = self._limits.allowed_boards
        if allowed is not None and board_id not in allowed:
            return (RefusedCode.NOT_ALLOWED,
                    "this relay carries only the boards its operator allows")
        return None

    def _board_heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        heads = self._heads.get(board_id)
        if heads is None:
            heads = self._heads[board_id] = self._db.heads(board_id)
        return heads

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: h.seq for a, h in self._board_heads(board_id).items()}

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return self._board_heads(board_id)

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return self._db.held_hashes(board_id, author, seq, seq).get(seq)

    def _forked(self, board_id: bytes) -> dict[bytes, int]:
        forked = self._fork_seqs.get(board_id)
        if forked is None:
            forked = self._fork_seqs[board_id] = {
                a: f.seq for a, f in self._db.forks(board_id).items()}
        return forked

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return self._forked(board_id)

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        fork: ForkRow | None = self._db.forks(board_id).get(author)
        return None if fork is None else (fork.first, fork.second)

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        """Learn a fork from evidence a client sent (see :class:`~p2paid.core.feed.ForkProof`).

        Raises:
            EnvelopeError: the evidence proves nothing (the sender's fault).
        """
        proof = ForkProof.check(board_id, Envelope.decode(first), Envelope.decode(second))
        if proof.author not in self._board_heads(board_id):
            return False  # nothing of that author here: the proof changes nothing
        proof_bytes = len(first) + len(second)
        if (self._sizes.get(board_id, 0) + proof_bytes > self._limits.max_board_bytes
                or self.total_bytes + proof_bytes > self._limits.max_total_bytes):
            return False  # no room: the author's envelopes are refused at the cap anyway
        with self._db.write():
            if not record_fork(self._db, board_id, proof):
                return False
            sizes = self._db.board_sizes()
        self._after_forks(board_id, sizes)
        return True

    def _after_forks(self, board_id: bytes, sizes: Mapping[bytes, int]) -> None:
        """Stored feeds were cut back to before a fork: refresh what is cached."""
        self._heads.pop(board_id, None)
        self._fork_seqs.pop(board_id, None)
        self._sizes[board_id] = sizes.get(board_id, 0)
        self.changed_boards.add(board_id)

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        return self._db.read_feed(board_id, author, after, max_bytes)

    def receive(self, board_id: bytes, envelopes: Sequence[bytes],
                client: ClientInfo | None = None) -> Received:
        """Verify and store a batch (SPEC 14.2); ``client`` is who uploads it (None: no
        quota applies, as for a local import)."""
        if self.accepts(board_id) is not None:
            return Received(notice=self.accepts(board_id))
        decoded, rejected = _decode(envelopes)
        notice = None
        size = self._sizes.get(board_id, 0)
        incoming = sum(len(e.raw) for e in decoded)
        if (size + incoming > self._limits.max_board_bytes
                or self.total_bytes + incoming > self._limits.max_total_bytes):
            self.stats["refused_full"] += len(decoded)
            self._log_once(board_id, "board %s is full (%.2f MiB stored); refusing new "
                           "envelopes", board_id.hex()[:12], size / MIB)
            return Received(rejected=rejected, notice=(
                RefusedCode.BOARD_FULL, "this relay has no room for more of this board"))
        if client is not None:
            over = self.ledger.check(board_id, incoming, client, self._quotas)
            if over is not None:
                self.stats["refused_quota"] += len(decoded)
                self._log_once(board_id, "board %s refused: %s", board_id.hex()[:12], over)
                return Received(rejected=rejected, notice=(
                    RefusedCode.QUOTA, f"{over}; ask the relay's operator for an access token"))
        heads = self._board_heads(board_id)
        with self._db.write():
            result = ingest(self._db, board_id, decoded, heads, None,
                            forked=self._forked(board_id))
            stored = sum(len(a.envelope.raw) for a in result.accepted)
            if result.accepted:
                self.ledger.stored(board_id, size, size + stored, client)
            if result.forks:
                sizes = self._db.board_sizes()
        for acc in result.accepted:
            heads[acc.envelope.author] = FeedHead(acc.envelope.seq, acc.envelope.hash)
        if result.accepted:
            self._sizes[board_id] = size + stored
            self.changed_boards.add(board_id)
        if result.forks:
            self._after_forks(board_id, sizes)
        rejected.extend(r.error for r in result.rejected)
        self.stats["stored"] += len(result.accepted)
        self.stats["duplicates"] += result.duplicates
        self.stats["refused"] += len(rejected)
        return Received(len(result.accepted), result.duplicates, rejected, notice)


    def _log_once(self, board_id: bytes, message: str, *args: object) -> None:
        """Warn about a refused board at most once a minute."""
        now = time.monotonic()
        if now - self._full_logged.get(board_id, -3600.0) > 60:
            self._full_logged[board_id] = now
            log.warning(message, *args)


@final
class ClientReplica:
    """The relay's replica as one client's session sees it: uploads are attributed
    to that client (for the quotas and the known-client record)."""

    def __init__(self, replica: RelayReplica, client: ClientInfo) -> None:
        self._replica = replica
        self.client = client

    @property
    def role(self) -> Role:
        return Role.RELAY

    def boards(self) -> Sequence[BoardAccess]:
        return self._replica.boards()

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        return self._replica.accepts(board_id)

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return self._replica.vector(board_id)

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return self._replica.heads(board_id)

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return self._replica.hash_at(board_id, author, seq)

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return self._replica.forked(board_id)

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        return self._replica.fork_evidence(board_id, author)

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        return self._replica.record_fork(board_id, first, second)

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        return self._replica.read(board_id, author, after, max_bytes)

    def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received:
        return self._replica.receive(board_id, envelopes, self.client)


def _decode(envelopes: Iterable[bytes]) -> tuple[list[Envelope], list[EnvelopeError]]:
    decoded: list[Envelope] = []
    rejected: list[EnvelopeError] = []
    for raw in envelopes:
        try:
            decoded.append(Envelope.decode(raw))
        except EnvelopeError as exc:
            rejected.append(exc)
    return decoded, rejected


def open_relay_db(data_dir: str | os.PathLike[str]) -> Database:
    """The relay's store; refuses a data dir that belongs to a node.

    Raises:
        UsageError: the data dir holds a node's boards.
        StorageError: the store cannot be opened.
    """
    db = Database(Path(data_dir))
    role = db.get_meta(ROLE_KEY)
    if role is None:
        if db.boards():
            db.close()
            raise UsageError(f"{data_dir} is a node's data dir; give the relay its own")
        db.set_meta(ROLE_KEY, b"relay")
    elif role != b"relay":
        db.close()
        raise UsageError(f"{data_dir} is not a relay's data dir")
    return db


def relay_key(db: Database) -> NodeKey:
    raw = db.get_meta(_NODE_KEY)
    if raw is None:
        raw = NodeKey.generate().private_bytes()
        db.set_meta(_NODE_KEY, raw)
    return NodeKey(raw)


@final
class Relay:
    """A running relay (the :class:`~p2paid.net.connection.ConnectionHost` for its clients)."""

    def __init__(self, db: Database, limits: RelayLimits, nursery: trio.Nursery) -> None:
        self._db = db
        self.limits = limits
        self.node_key = relay_key(db)
        self.replica = RelayReplica(db, limits)
        self._nursery = nursery
        self._conns: dict[Connection, ClientInfo] = {}
        self.admission = Admission(AdmissionLimits(
            limits.max_connections, limits.max_per_address, MAX_HANDSHAKES,
            MAX_HANDSHAKES_PER_ADDRESS))
        self.listen_address: tuple[str, int] | None = None
        self.public: tuple[str, int] | None = None
        self.started = time.time()
        self.metrics: Any = None
        #: a batch is received in one call (so a quota refuses it whole; a relay only
        #: verifies and stores, about 30 ms for a full batch), at its clients' rate
        self.connection_options = ConnectionOptions(rate_limit=limits.rate_bytes_per_s,
                                                    receive_slice=None)

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
            digest = self.replica.tokens.check(hello.token)
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
        conn.known_since = self.replica.ledger.client_since(conn.remote_id)
        refusal = self.admission.admit(conn)
        if refusal is not None:
            conn.close_reason = refusal
            return False
        self._conns[conn] = ClientInfo(conn.remote_id, conn.address_key or "")
        log.info("client %s connected (%s)", fingerprint(conn.remote_id), conn.address)
        self._metric("connections_gauge", len(self._conns))
        return True

    def unregister(self, conn: Connection) -> None:
        self.admission.release(conn)
        if self._conns.pop(conn, None) is not None:
            log.info("client %s left (%s)", fingerprint(conn.remote_id),
                     conn.close_reason or "closed")
            self._metric("connections_gauge", len(self._conns))
        # A client dropped mid-batch may have left stored envelopes unannounced.
        self.after_receive(conn)

    def after_receive(self, conn: Connection) -> None:
        """Push what was stored to every client. The set of changed boards is shared by
        all connections, so every client is told, the sender included: its session
        knows what it sent, so nothing is echoed."""
        changed, self.replica.changed_boards = self.replica.changed_boards, set()
        for board_id in changed:
            for other in self._conns:
                other.notify(board_id)

    def on_sync_event(self, conn: Connection, event: SyncEvent) -> None:
        if event.kind is SyncEventKind.RECEIVED and event.count:
            # its upload is stored here now: a known client
            conn.known_since = self.replica.ledger.client_since(conn.remote_id)
            self._metric("stored_counter", event.count)
            log.debug("board %s: %d envelope(s) from %s", event.board_id.hex()[:12],
                      event.count, fingerprint(conn.remote_id))

    def _metric(self, name: str, value: int) -> None:
        if self.metrics is not None:
            self.metrics.update(name, value)

    # ------------------------------------------------------------------ service

    async def accept_loop(self, listener: trio.SocketListener,
                          task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                          ) -> None:
        task_status.started()
        await serve_inbound(self, listener, self.admission, self.connection_options)

    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(), "updated": time.time(), "started": self.started,
            "address": str(self.address()), "connections": len(self._conns),
            "boards": self.replica.board_count(), "bytes": self.replica.total_bytes,
            "stats": dict(self.replica.stats), "limits": _limits_json(self.limits),
        }

    async def write_status(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                           ) -> None:
        task_status.started()
        try:
            while True:
                self._db.set_meta(RUNTIME_KEY, json.dumps(self.status()).encode())
                if self.metrics is not None:
                    self.metrics.refresh(self)
                await trio.sleep(STATUS_INTERVAL)
        finally:
            with trio.CancelScope(shield=True):
                self._db.set_meta(RUNTIME_KEY, b"{}")


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


async def serve_relay(
    data_dir: str | os.PathLike[str],
    options: RelayOptions | None = None,
    *,
    task_status: trio.TaskStatus[Relay] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled. ``task_status.started`` gets the :class:`Relay`.

    Raises:
        UsageError: the data dir belongs to a node.
        OSError: the listen or metrics address cannot be bound.
    """
    opts = options or RelayOptions()
    db = open_relay_db(data_dir)
    try:
        listener = await open_listener(*opts.listen)
        async with trio.open_nursery() as nursery:
            relay = Relay(db, opts.limits, nursery)
            bound = listener.socket.getsockname()
            relay.listen_address = (bound[0], bound[1])
            if opts.public is None:
                relay.public = _guess_public(relay.listen_address)
            else:
                relay.public = (opts.public[0], opts.public[1] or relay.listen_address[1])
            if opts.metrics is not None:
                from p2paid.relay.metrics import RelayMetrics

                relay.metrics = RelayMetrics(*opts.metrics)
            try:
                await nursery.start(relay.accept_loop, listener)
                await nursery.start(relay.write_status)
                log.info("relay %s listening on %s", fingerprint(relay.node_key.public),
                         format_address(*relay.listen_address))
                task_status.started(relay)
                await trio.sleep_forever()
            finally:
                if relay.metrics is not None:
                    relay.metrics.close()
    finally:
        db.close()


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
    try:
        status = json.loads(raw or b"{}")
    except ValueError:
        return None
    if not status or time.time() - float(status.get("updated", 0)) > 3 * STATUS_INTERVAL + 5:
        return None
    return dict(status)
