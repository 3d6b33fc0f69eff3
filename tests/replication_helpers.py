"""Test doubles for the sync protocol: in-memory replicas and byte-level connections.

* :class:`FeedWriter` seals the next envelope of one author's feed (real
  :func:`~p2paid.core.envelope.seal_envelope`, arbitrary change bytes: replication never
  looks inside ciphertexts, only at chains and signatures).
* :class:`MemoryReplica` implements :class:`~p2paid.core.replication.Replica`. It stores
  contiguous per-author feeds and checks every batch with
  :func:`~p2paid.core.feed.plan_batch`, as the real store does, so forgeries are refused;
  envelopes that arrive beyond a gap wait in a buffer of at most ``held_cap``.
* :class:`Connection` is the library's :class:`~p2paid.core.pair.ConnectionPair` (two
  :class:`~p2paid.core.connection.SyncConnection` ends whose bytes sit in per-direction
  queues until a test delivers them, all at once or in arbitrary slices) with checks:
  each batch as it is sent: at most ``window`` unacknowledged per board, at most one
  envelope beyond ``batch_bytes``, and no redundancy (nothing sent twice on a session,
  nothing echoed to the peer that sent it, nothing the peer's Hello already declared).
* :class:`Mesh` holds replicas and pairwise connections and, like the node, tells
  every session of a replica when the replica's boards grew.

Nothing here touches sockets or trio.
"""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.core.codes import RefusedCode, Role
from p2paid.core.connection import SyncConnection
from p2paid.core.envelope import ZERO_HASH, Envelope, seal_envelope
from p2paid.core.feed import FeedHead, ForkProof, Rejection, plan_batch
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import BoardKeys, derive_board_keys
from p2paid.core.pair import ConnectionPair, PairEnd
from p2paid.core.replication import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_WINDOW,
    BoardAccess,
    Received,
    Replica,
    peek_envelope,
)
from p2paid.core.wire import Ack, Envelopes, Message, Refused, SecureChannel
from p2paid.errors import EnvelopeError, ForkError

__all__ = [
    "Connection",
    "Endpoint",
    "FeedWriter",
    "MemoryReplica",
    "Mesh",
    "board_keys",
]


def board_keys(n: int) -> BoardKeys:
    """Deterministic keys of test board ``n`` (derived like a real invite's)."""
    return derive_board_keys(bytes([n + 1]) * 32)


class FeedWriter:
    """One author's feed on one board: each call to :meth:`next` seals the next envelope."""

    def __init__(self, keys: BoardKeys, author_key: AuthorKey | None = None) -> None:
        self.keys = keys
        self.author_key = author_key or AuthorKey.generate()
        self.cipher = ChaCha20Poly1305(keys.content_key)
        self.envelopes: list[Envelope] = []

    @property
    def author(self) -> bytes:
        return self.author_key.public

    @property
    def seq(self) -> int:
        return len(self.envelopes)

    def next(self, change: bytes = b"change") -> Envelope:
        prev = self.envelopes[-1].hash if self.envelopes else ZERO_HASH
        env = seal_envelope(
            board_id=self.keys.board_id,
            cipher=self.cipher,
            author_key=self.author_key,
            seq=self.seq + 1,
            prev=prev,
            change=change,
        )
        self.envelopes.append(env)
        return env

    def many(self, count: int, change: bytes = b"change") -> list[Envelope]:
        return [self.next(change) for _ in range(count)]


@dataclass
class _BoardData:
    access: BoardAccess
    feeds: dict[bytes, list[Envelope]] = field(default_factory=dict)
    held: dict[tuple[bytes, int], Envelope] = field(default_factory=dict)
    #: author -> the proof of its fork (its feed ends before the proof's seq)
    proofs: dict[bytes, ForkProof] = field(default_factory=dict)

    def end_feed(self, proof: ForkProof) -> bool:
        """Keep ``proof`` if it is the author's first or lowest; cut the feed back."""
        known = self.proofs.get(proof.author)
        if known is not None and known.seq <= proof.seq:
            return False
        self.proofs[proof.author] = proof
        feed = self.feeds.get(proof.author, [])
        del feed[proof.seq - 1 :]
        self.held = {k: e for k, e in self.held.items()
                     if not (e.author == proof.author and e.seq >= proof.seq)}
        return True


class MemoryReplica:
    """An in-memory :class:`~p2paid.core.replication.Replica` (a node's or a relay's store).

    Args:
        role: "node" or "relay".
        held_cap: most out-of-order envelopes kept per board while a gap is open.
        name: for reprs in failure messages.
        allowed: for a relay, the board ids it agrees to carry (None: any board asked for).
    """

    def __init__(self, role: str = "node", *, held_cap: int = 64, name: str = "",
                 allowed: set[bytes] | None = None) -> None:
        self._role = role
        self.held_cap = held_cap
        self.name = name
        self.allowed = allowed
        self._boards: dict[bytes, _BoardData] = {}
        #: boards whose vector grew through :meth:`receive` since the set was last taken
        self.changed_boards: set[bytes] = set()
        #: every refusal ever made (including of held envelopes), for post-mortems
        self.rejections: list[Rejection] = []
        self.forked_authors: set[tuple[bytes, bytes]] = set()
        #: how many times receive() was called and how many envelopes it was offered
        self.receive_calls = 0
        self.offered = 0

    def __repr__(self) -> str:
        return f"<MemoryReplica {self.name or id(self)} {self._role}>"

    # ---------------------------------------------------------------- Replica protocol

    @property
    def role(self) -> Role:
        return Role(self._role)

    def boards(self) -> Sequence[BoardAccess]:
        return [data.access for data in self._boards.values()]

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        """A relay carries any board asked for (or the allowed ones); a node carries none."""
        if self._role != "relay":
            return (RefusedCode.NOT_A_RELAY, "this is a node; it does not carry boards by id")
        if board_id in self._boards:
            return None
        if self.allowed is not None and board_id not in self.allowed:
            return (RefusedCode.NOT_ALLOWED,
                    "this relay carries only the boards its operator allows")
        self._boards[board_id] = _BoardData(BoardAccess(board_id, None))
        return None

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: len(f) for a, f in self._boards[board_id].feeds.items() if f}

    def feed_envelopes(self, board_id: bytes) -> dict[bytes, list[Envelope]]:
        """Every feed held (a copy), for checks that compare versions."""
        return {a: list(f) for a, f in self._boards[board_id].feeds.items()}

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        return {a: FeedHead(len(f), f[-1].hash)
                for a, f in self._boards[board_id].feeds.items() if f}

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        feed = self._boards[board_id].feeds.get(author, [])
        return feed[seq - 1].hash if 0 < seq <= len(feed) else None

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        return {a: p.seq for a, p in self._boards[board_id].proofs.items()}

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        proof = self._boards[board_id].proofs.get(author)
        return None if proof is None else (proof.first.raw, proof.second.raw)

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        data = self._boards[board_id]
        proof = ForkProof.check(board_id, Envelope.decode(first), Envelope.decode(second))
        if not data.end_feed(proof):
            return False
        self.changed_boards.add(board_id)
        return True

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        feed = self._boards[board_id].feeds.get(author, [])
        out: list[bytes] = []
        total = 0
        for env in feed[after:]:
            if out and total + len(env.raw) > max_bytes:
                break
            out.append(env.raw)
            total += len(env.raw)
        return out

    def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received:
        """Verify and store what extends the feeds; hold what is beyond a gap.

        Only refusals of envelopes offered in *this* call are reported, so a session is
        never blamed for envelopes another peer sent earlier.
        """
        self.receive_calls += 1
        self.offered += len(envelopes)
        data = self._boards[board_id]  # a session must never offer an unshared board
        result = Received()
        decoded: list[Envelope] = []
        for raw in envelopes:
            try:
                decoded.append(Envelope.decode(raw))
            except EnvelopeError as exc:
                result.rejected.append(exc)
        fresh = {id(env) for env in decoded}
        batch = [*data.held.values(), *decoded]
        data.held.clear()
        heads = {a: FeedHead(len(f), f[-1].hash) for a, f in data.feeds.items() if f}

        def held_hashes(author: bytes, lo: int, hi: int) -> dict[int, bytes]:
            feed = data.feeds.get(author, [])
            return {env.seq: env.hash for env in feed[lo - 1 : hi]}

        def fetch(author: bytes, seq: int) -> bytes | None:
            feed = data.feeds.get(author, [])
            return feed[seq - 1].raw if seq <= len(feed) else None

        forked = {a: p.seq for a, p in data.proofs.items()}
        plan = plan_batch(board_id, batch, heads, held_hashes, forked, fetch)
        for proof in plan.forks.values():
            if data.end_feed(proof):
                self.changed_boards.add(board_id)
        for author, run in plan.runs.items():
            feed = data.feeds.setdefault(author, [])
            assert run[0].seq == len(feed) + 1, "plan_batch returned a run that leaves a hole"
            feed.extend(run)
            result.stored += len(run)
        result.duplicates = plan.duplicates
        for rejection in plan.rejected:
            self.rejections.append(rejection)
            if isinstance(rejection.error, ForkError) and rejection.envelope is not None:
                self.forked_authors.add((board_id, rejection.envelope.author))
            if rejection.envelope is None or id(rejection.envelope) in fresh:
                result.rejected.append(rejection.error)
        for env in sorted(plan.gaps, key=lambda e: (e.author, e.seq)):
            if len(data.held) >= self.held_cap:
                break  # dropped: offered again after the gap closes (or on reconnect)
            data.held[(env.author, env.seq)] = env
        if result.stored:
            self.changed_boards.add(board_id)
        return result

    # ---------------------------------------------------------------- test API

    def add_board(self, keys: BoardKeys, *, member: bool = True) -> None:
        """Hold ``keys``' board: as a member (tag key known) or blind (id only)."""
        tag_key = keys.tag_key if member and self._role != "relay" else None
        self._boards[keys.board_id] = _BoardData(BoardAccess(keys.board_id, tag_key))

    def holds(self, board_id: bytes) -> bool:
        return board_id in self._boards

    def write(self, board_id: bytes, envelopes: Iterable[Envelope]) -> int:
        """Store local envelopes (they are checked like any others); returns how many."""
        envs = [e.raw for e in envelopes]
        result = self.receive(board_id, envs)
        assert not result.rejected, result.rejected
        return result.stored

    def feeds(self, board_id: bytes) -> dict[bytes, tuple[bytes, ...]]:
        """``author -> raw envelope bytes in seq order``: what must match across replicas."""
        return {
            a: tuple(e.raw for e in f) for a, f in self._boards[board_id].feeds.items() if f
        }

    def held_count(self, board_id: bytes) -> int:
        return len(self._boards[board_id].held)

    def take_changed(self) -> set[bytes]:
        changed, self.changed_boards = self.changed_boards, set()
        return changed


# ------------------------------------------------------------------------ connections


class FlowControlViolation(AssertionError):
    """A session broke the window or batch-size rule."""


class RedundantSend(AssertionError):
    """A session sent an envelope its peer is known to hold (echo, repeat, or declared)."""


@dataclass(eq=False)
class Endpoint(PairEnd):
    """One side of a :class:`Connection`: what crossed it, checked as it went."""

    replica: MemoryReplica
    batch_bytes: int = DEFAULT_BATCH_BYTES
    window: int = DEFAULT_WINDOW
    #: per board id: Envelopes batches sent, and Acks received for them
    batches_sent: Counter[bytes] = field(default_factory=Counter)
    batches_acked: Counter[bytes] = field(default_factory=Counter)
    max_in_flight: int = 0
    #: the replica's vectors when the session started: what its Hello/Vector declare (a
    #: relay answers later, with at least this much)
    declared: dict[bytes, dict[bytes, tuple[bytes, ...]]] = field(default_factory=dict)
    #: (board, author, seq) of every envelope sent / received on this session
    sent_ids: set[tuple[bytes, bytes, int]] = field(default_factory=set)
    received_ids: set[tuple[bytes, bytes, int]] = field(default_factory=set)
    #: board ids of the batches received whose Ack this side has yet to send
    acking: deque[bytes] = field(default_factory=deque)
    #: board ids of the Acks this side sent, not yet delivered (Acks name the acker's index)
    acks_sent: deque[bytes] = field(default_factory=deque)

    @property
    def channel(self) -> SecureChannel:
        return self.conn.channel

    def in_flight(self, board_id: bytes) -> int:
        return self.batches_sent[board_id] - self.batches_acked[board_id]

    def envelopes_sent(self) -> list[bytes]:
        return [raw for m in self.sent if isinstance(m, Envelopes) for raw in m.envelopes]

    def envelopes_received(self) -> list[bytes]:
        return [raw for m in self.received if isinstance(m, Envelopes) for raw in m.envelopes]


OnChange = Callable[[MemoryReplica], None]


class Connection(ConnectionPair):
    """:class:`~p2paid.core.pair.ConnectionPair` over two :class:`MemoryReplica`, checking
    each batch as it is sent: at most ``window`` unacknowledged per board, at most one
    envelope beyond ``batch_bytes``, and no redundancy (nothing sent twice on a session,
    nothing echoed to the peer that sent it, nothing the peer's Hello already declared).

    Args:
        a: the dialler's replica.
        b: the listener's replica.
        a_to_relay: ``to_relay`` for a's session (b is a relay).
        on_change: called after each message a replica handled, to push what grew;
            by default each endpoint's own session is asked (``local_changed``), which
            must send nothing back to the peer that just supplied it.
    """

    ends: tuple[Endpoint, Endpoint]

    def __init__(
        self,
        a: MemoryReplica,
        b: MemoryReplica,
        *,
        a_to_relay: bool = False,
        a_boards: Sequence[bytes] | None = None,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        window: int = DEFAULT_WINDOW,
        a_key: X25519PrivateKey | None = None,
        b_key: X25519PrivateKey | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        self._on_change = on_change
        self._limits = (batch_bytes, window)
        super().__init__(a, b, a_key=a_key, b_key=b_key, batch_bytes=batch_bytes,
                         window=window, a_options={"to_relay": a_to_relay, "boards": a_boards})

    def new_end(self, conn: SyncConnection, replica: Replica,
                options: dict[str, Any]) -> Endpoint:
        assert isinstance(replica, MemoryReplica)
        return Endpoint(conn, replica, options, batch_bytes=self._limits[0],
                        window=self._limits[1])

    @property
    def a(self) -> Endpoint:
        return self.ends[0]

    @property
    def b(self) -> Endpoint:
        return self.ends[1]

    def _end_of(self, end: PairEnd) -> Endpoint:
        assert isinstance(end, Endpoint)
        return end

    # ---------------------------------------------------------------- checks

    def before_start(self, end: PairEnd) -> None:
        ep = self._end_of(end)
        ep.declared = {
            acc.board_id: {a: tuple(e.hash for e in feed) for a, feed in
                           ep.replica.feed_envelopes(acc.board_id).items()}
            for acc in ep.replica.boards()
        }

    def on_sent(self, end: PairEnd, message: Message) -> None:
        ep = self._end_of(end)
        if isinstance(message, Envelopes):
            self._check_batch(ep, message)
        elif isinstance(message, Ack):
            assert ep.acking, "an Ack that answers no batch"
            ep.acks_sent.append(ep.acking.popleft())
        elif isinstance(message, Refused) and ep.acking and message.board:
            ep.acking.popleft()  # a Refused instead of the Ack
        super().on_sent(ep, message)

    def on_received(self, end: PairEnd, message: Message) -> None:
        ep = self._end_of(end)
        peer = self.ends[1 - self.ends.index(ep)]
        if isinstance(message, Ack):
            # Acks arrive in the order they were sent: pair each with its batch's board.
            ep.batches_acked[peer.acks_sent.popleft()] += 1
        elif isinstance(message, Envelopes) and message.envelopes:
            raw = message.envelopes[0]
            if len(raw) >= 33:
                ep.acking.append(raw[1:33])
            for raw in message.envelopes:
                if len(raw) >= 73:
                    ep.received_ids.add(peek_envelope(raw))
        super().on_received(ep, message)

    def _check_batch(self, end: Endpoint, message: Envelopes) -> None:
        if not message.envelopes:
            raise FlowControlViolation("empty Envelopes batch sent")
        ids = [peek_envelope(raw) for raw in message.envelopes]
        board_ids = {board_id for board_id, _, _ in ids}
        if len(board_ids) != 1:
            raise FlowControlViolation("one batch mixes boards")
        (board_id,) = board_ids
        self._check_redundancy(end, ids)
        sizes = [len(raw) for raw in message.envelopes]
        if sum(sizes[:-1]) >= end.batch_bytes:
            raise FlowControlViolation(
                f"batch of {sum(sizes)} bytes: more than one envelope beyond {end.batch_bytes}")
        end.batches_sent[board_id] += 1
        end.max_in_flight = max(end.max_in_flight, end.in_flight(board_id))
        if end.in_flight(board_id) > end.window:
            raise FlowControlViolation(
                f"{end.in_flight(board_id)} batches unacknowledged, window {end.window}")

    def _check_redundancy(self, end: Endpoint, ids: list[tuple[bytes, bytes, int]]) -> None:
        """Nothing is sent twice, nothing received is echoed, nothing declared is resent
        (unless the peer declared another version of it: a fork being proved)."""
        peer = self.ends[1 - self.ends.index(end)]
        for ident in ids:
            board_id, author, seq = ident
            if ident in end.sent_ids:
                raise RedundantSend(f"seq {seq} sent twice on one session")
            if ident in end.received_ids:
                raise RedundantSend(f"seq {seq} echoed to the peer that sent it")
            held = peer.declared.get(board_id, {}).get(author, ())
            own = end.declared.get(board_id, {}).get(author, ())
            diverged = any(x != y for x, y in zip(held, own, strict=False))
            if seq <= len(held) and not diverged:
                raise RedundantSend(f"seq {seq} sent although the peer's Hello covers it")
            end.sent_ids.add(ident)

    # ---------------------------------------------------------------- propagation

    def after_event(self, end: PairEnd) -> None:
        replica = self._end_of(end).replica
        if not replica.changed_boards:
            return
        if self._on_change is not None:
            self._on_change(replica)
            return
        for board_id in replica.take_changed():
            self.replica_changed(replica, board_id)

    def replica_changed(self, replica: MemoryReplica, board_id: bytes) -> None:
        """Tell the session(s) of ``replica`` on this connection that ``board_id`` grew."""
        for end in self.ends:
            if end.replica is replica and end.session is not None:
                self.local_changed(end, board_id)


class Mesh:
    """Replicas with pairwise connections; a replica that grows tells all its sessions."""

    def __init__(self, replicas: Sequence[MemoryReplica], *, batch_bytes: int,
                 window: int) -> None:
        self.replicas = list(replicas)
        self.batch_bytes = batch_bytes
        self.window = window
        self.pairs = list(itertools.combinations(range(len(replicas)), 2))
        self.links: dict[tuple[int, int], Connection | None] = dict.fromkeys(self.pairs)
        self.node_keys = [X25519PrivateKey.generate() for _ in replicas]

    def connect(self, pair: tuple[int, int], dialler_first: bool = True, *,
                a_to_relay: bool = False) -> Connection:
        i, j = pair if dialler_first else pair[::-1]
        conn = Connection(
            self.replicas[i], self.replicas[j], a_to_relay=a_to_relay,
            batch_bytes=self.batch_bytes,
            window=self.window, a_key=self.node_keys[i], b_key=self.node_keys[j],
            on_change=self.changed,
        )
        self.links[pair] = conn
        return conn

    def drop(self, pair: tuple[int, int]) -> None:
        self.links[pair] = None

    def up(self) -> list[Connection]:
        return [c for c in self.links.values() if c is not None]

    def changed(self, replica: MemoryReplica) -> None:
        """Like the node's ``board_changed``, but the source session is told too."""
        for board_id in replica.take_changed():
            for conn in self.up():
                conn.replica_changed(replica, board_id)

    def drain(self, max_rounds: int = 100_000) -> None:
        rounds = 0
        while not all(c.idle() for c in self.up()):
            assert rounds < max_rounds, "the mesh never went quiet"
            for conn in self.up():
                conn.deliver(0)
                conn.deliver(1)
            rounds += 1
