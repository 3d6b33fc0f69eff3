"""The relay's replica: envelopes held blind, with the operator's limits and quotas.

:class:`RelayReplica` implements :class:`~p2paid.core.replication.Replica` for every
board a relay carries: it checks signatures and chains (:func:`~p2paid.storage.ingest.ingest`
with no content check), stores through the :class:`~p2paid.storage.base.EnvelopeStore`
port, and refuses what the limits and quotas do not allow (SPEC 14.2).
:class:`ClientReplica` is the same replica as one client's session sees it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol, final

from p2paid.core.checkpoint import Checkpoint, decode_record
from p2paid.core.codes import RefusedCode, Role
from p2paid.core.envelope import Envelope
from p2paid.core.feed import EMPTY_HEAD, FeedHead, ForkProof
from p2paid.core.replication import BoardAccess, Received
from p2paid.errors import EnvelopeError, MalformedEnvelopeError
from p2paid.relay.state import ClientInfo, Quotas, RelayLedger, RelayTokens, TokenInfo
from p2paid.storage.base import EnvelopeStore, ForkRow
from p2paid.storage.ingest import ingest, ingest_checkpoint, merge_results, record_fork
from p2paid.storage.sqlite import Database

__all__ = ["Carrier", "ClientReplica", "RelayLimits", "RelayReplica", "RelayStats",
           "TokenStore", "decode_batch"]

log = logging.getLogger("p2paid.relay.replica")

MIB: Final = 1024 * 1024


@final
@dataclass(slots=True)
class RelayStats:
    """Envelopes since the relay started (published in its status as ``stats``)."""

    stored: int = 0
    duplicates: int = 0
    #: forged, forked, malformed
    refused: int = 0
    #: for lack of room (board or relay at its byte cap)
    refused_full: int = 0
    #: over the new-board quota of the client or address that introduced the board
    refused_quota: int = 0


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
    """A replica holding envelopes blind, for any board the limits allow.

    Envelopes go through the :class:`~p2paid.storage.base.EnvelopeStore` port only;
    ``sizes`` (bytes held per board, from ``store.board_sizes()``) is the dict the
    ledger shares: this replica keeps it up to date. :meth:`open` builds one on a
    relay's SQLite store.
    """

    def __init__(self, store: EnvelopeStore, limits: RelayLimits, tokens: RelayTokens,
                 ledger: RelayLedger, sizes: dict[bytes, int]) -> None:
        self._store = store
        self._limits = limits
        self._heads: dict[bytes, dict[bytes, FeedHead]] = {}
        self._sizes = sizes
        self._fork_seqs: dict[bytes, dict[bytes, int]] = {}
        self.tokens = tokens
        self.ledger = ledger
        self._quotas = Quotas(limits.quota_per_key, limits.quota_per_address)
        self._full_logged: dict[bytes, float] = {}
        self.changed_boards: set[bytes] = set()
        self.stats = RelayStats()

    def take_changed(self) -> set[bytes]:
        """Boards stored into since the last call."""
        changed, self.changed_boards = self.changed_boards, set()
        return changed

    @classmethod
    def open(cls, db: Database, limits: RelayLimits) -> RelayReplica:
        """The replica of a relay whose envelopes, tokens and ledger share one SQLite file."""
        sizes = db.board_sizes()
        tokens = RelayTokens(db)
        return cls(db, limits, tokens, RelayLedger(db, tokens, sizes), sizes)

    @property
    def role(self) -> Role:
        return Role.RELAY

    @property
    def keeps_checkpoints(self) -> bool:
        """Whether the store keeps checkpoints (SPEC 8a), so clients may send them."""
        return isinstance(self._store, Database)

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
            heads = self._heads[board_id] = self._store.heads(board_id)
        return heads

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: h.seq for a, h in self._board_heads(board_id).items()}

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return self._board_heads(board_id)

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        return self._store.held_hashes(board_id, author, seq, seq).get(seq)

    def _forked(self, board_id: bytes) -> dict[bytes, int]:
        forked = self._fork_seqs.get(board_id)
        if forked is None:
            forked = self._fork_seqs[board_id] = {
                a: f.seq for a, f in self._store.forks(board_id).items()}
        return forked

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return self._forked(board_id)

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        fork: ForkRow | None = self._store.forks(board_id).get(author)
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
        with self._store.write():
            if not record_fork(self._store, board_id, proof):
                return False
            sizes = self._store.board_sizes()
        self._after_forks(board_id, sizes)
        return True

    def _after_forks(self, board_id: bytes, sizes: Mapping[bytes, int]) -> None:
        """Stored feeds were cut back to before a fork: refresh what is cached."""
        self._heads.pop(board_id, None)
        self._fork_seqs.pop(board_id, None)
        self._sizes[board_id] = sizes.get(board_id, 0)
        self.changed_boards.add(board_id)

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        return self._store.read_feed(board_id, author, after, max_bytes)

    def receive(self, board_id: bytes, envelopes: Sequence[bytes],
                client: ClientInfo | None = None) -> Received:
        """Verify and store a batch (SPEC 14.2); ``client`` is who uploads it (None: no
        quota applies, as for a local import)."""
        if self.accepts(board_id) is not None:
            return Received(notice=self.accepts(board_id))
        decoded, checkpoints, rejected = _decode_with_checkpoints(envelopes)
        notice = None
        size = self._sizes.get(board_id, 0)
        incoming = sum(len(e.raw) for e in decoded) + sum(len(c.raw) for c in checkpoints)
        if (size + incoming > self._limits.max_board_bytes
                or self.total_bytes + incoming > self._limits.max_total_bytes):
            self.stats.refused_full += len(decoded)
            self._log_once(board_id, "board %s is full (%.2f MiB stored); refusing new "
                           "envelopes", board_id.hex()[:12], size / MIB)
            return Received(rejected=rejected, notice=(
                RefusedCode.BOARD_FULL, "this relay has no room for more of this board"))
        if client is not None:
            over = self.ledger.check(board_id, incoming, client, self._quotas)
            if over is not None:
                self.stats.refused_quota += len(decoded)
                self._log_once(board_id, "board %s refused: %s", board_id.hex()[:12], over)
                return Received(rejected=rejected, notice=(
                    RefusedCode.QUOTA, f"{over}; ask the relay's operator for an access token"))
        heads = self._board_heads(board_id)
        with self._store.write():
            starts = {env.author for env in decoded if env.seq == 1}
            first = [cp for cp in checkpoints if cp.author not in starts
                     and not heads.get(cp.author, EMPTY_HEAD).seq]
            taken = self._take_checkpoints(board_id, first, heads, decoded, rejected)
            result = ingest(self._store, board_id, decoded, heads, None,
                            forked=self._forked(board_id))
            for acc in result.accepted:
                heads[acc.envelope.author] = FeedHead(acc.envelope.seq, acc.envelope.hash)
            taken_first = {id(cp) for cp in first}
            later = [cp for cp in checkpoints if id(cp) not in taken_first]
            if later:
                offered: list[Envelope] = []
                taken += self._take_checkpoints(board_id, later, heads, offered, rejected)
                if offered:
                    result = merge_results(result, ingest(
                        self._store, board_id, offered, heads, None,
                        forked=self._forked(board_id)))
            stored = sum(len(a.envelope.raw) for a in result.accepted) + taken
            if taken:
                self.changed_boards.add(board_id)
            if result.accepted or taken:
                self.ledger.stored(board_id, size, size + stored, client)
            if result.forks:
                sizes = self._store.board_sizes()
        for acc in result.accepted:
            heads[acc.envelope.author] = FeedHead(acc.envelope.seq, acc.envelope.hash)
        if result.accepted or taken:
            self._sizes[board_id] = size + stored
            self.changed_boards.add(board_id)
        if result.forks:
            self._after_forks(board_id, sizes)
        rejected.extend(r.error for r in result.rejected)
        self.stats.stored += len(result.accepted)
        self.stats.duplicates += result.duplicates
        self.stats.refused += len(rejected)
        return Received(len(result.accepted), result.duplicates, rejected, notice)


    def checkpoint_for(self, board_id: bytes, author: bytes) -> bytes | None:
        """The author's checkpoint, for a client that holds nothing of the author."""
        store = self._store
        if not isinstance(store, Database):
            return None
        held = store.checkpoint(board_id, author)
        return None if held is None else held[1]

    def _take_checkpoints(self, board_id: bytes, checkpoints: list[Checkpoint],
                          heads: dict[bytes, FeedHead], decoded: list[Envelope],
                          rejected: list[EnvelopeError]) -> int:
        """Store, blind, the checkpoints of authors held nothing of (SPEC 8a.4); the heads
        of the others join ``decoded``. Returns the bytes stored."""
        store = self._store
        stored = 0
        for cp in checkpoints:
            if not isinstance(store, Database):
                decoded.append(cp.head)
                continue
            result = ingest_checkpoint(store, board_id, cp, heads, None,
                                       self._forked(board_id))
            if result.head is not None:
                decoded.append(result.head)
            elif result.rejected is not None:
                rejected.append(result.rejected.error)
            elif result.taken:
                heads[cp.author] = FeedHead(cp.seq, cp.head.hash)
                stored += len(cp.raw) + len(cp.head.raw)
                self.stats.stored += 1
            elif result.kept:
                stored += len(cp.raw)
        return stored

    def _log_once(self, board_id: bytes, message: str, *args: object) -> None:
        """Warn about a refused board at most once a minute."""
        now = time.monotonic()
        if now - self._full_logged.get(board_id, -3600.0) > 60:
            self._full_logged[board_id] = now
            log.warning(message, *args)


class TokenStore(Protocol):
    """The operator's access tokens: :class:`RelayTokens`, or a cluster's."""

    def create(self, note: str = "") -> tuple[bytes, TokenInfo]: ...
    def list(self) -> list[TokenInfo]: ...
    def revoke(self, token_id: str) -> TokenInfo: ...
    def check(self, token: bytes) -> bytes | None: ...


class Carrier(Protocol):
    """What a relay's connections need of its replica: :class:`RelayReplica` (SQLite, one
    process) or :class:`~p2paid.relay.cluster.ClusterReplica` (PostgreSQL, a cluster)."""

    stats: RelayStats

    @property
    def tokens(self) -> TokenStore: ...

    @property
    def role(self) -> Role: ...
    @property
    def total_bytes(self) -> int: ...
    def board_count(self) -> int: ...
    def boards(self) -> Sequence[BoardAccess]: ...
    def accepts(self, board_id: bytes) -> tuple[str, str] | None: ...
    def vector(self, board_id: bytes) -> Mapping[bytes, int]: ...
    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]: ...
    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None: ...
    def forked(self, board_id: bytes) -> Mapping[bytes, int]: ...
    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None: ...
    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool: ...
    def read(self, board_id: bytes, author: bytes, after: int,
             max_bytes: int) -> list[bytes]: ...
    def receive(self, board_id: bytes, envelopes: Sequence[bytes],
                client: ClientInfo | None = None) -> Received: ...
    def take_changed(self) -> set[bytes]: ...


@final
class ClientReplica:
    """The relay's replica as one client's session sees it: uploads are attributed
    to that client (for the quotas and the known-client record)."""

    def __init__(self, replica: Carrier, client: ClientInfo) -> None:
        self._replica = replica
        self.client = client
        if isinstance(replica, RelayReplica) and replica.keeps_checkpoints:
            self.checkpoint_for = replica.checkpoint_for  # (then the session takes them)

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


def decode_batch(envelopes: Iterable[bytes]) -> tuple[list[Envelope], list[EnvelopeError]]:
    """The envelopes of a batch that decode, and why the others did not (for a store
    that keeps no checkpoints: one offered is refused, as the session never asked)."""
    decoded, checkpoints, rejected = _decode_with_checkpoints(envelopes)
    rejected.extend(MalformedEnvelopeError("a checkpoint to a relay that keeps none")
                    for _ in checkpoints)
    return decoded, rejected


def _decode_with_checkpoints(envelopes: Iterable[bytes]
                             ) -> tuple[list[Envelope], list[Checkpoint], list[EnvelopeError]]:
    """:func:`decode_batch`, with the checkpoints (SPEC 8a) of the batch apart."""
    decoded: list[Envelope] = []
    checkpoints: list[Checkpoint] = []
    rejected: list[EnvelopeError] = []
    for raw in envelopes:
        try:
            record = decode_record(raw)
        except EnvelopeError as exc:
            rejected.append(exc)
            continue
        if isinstance(record, Checkpoint):
            checkpoints.append(record)
        else:
            decoded.append(record)
    return decoded, checkpoints, rejected
