"""The replication protocol over one connection, sans-I/O (``protocol/SPEC.md`` section 12).

Theory of operation
-------------------
A :class:`SyncSession` starts once the Noise handshake is done, knowing the
handshake hash ``h``. It knows nothing of Automerge: it moves envelopes between
two :class:`Replica` objects (a node's store, a relay's store).

1. **Hello.** Each side lists its boards. Between nodes a board is listed by a
   tag, ``HMAC(tag_key, role || h)``, so only members recognise it and nothing is
   linkable across sessions; the expected tag of the *other* role is what a side
   looks for, so echoing a tag back proves nothing. To and from relays, boards
   are listed by id. Each entry carries a 16-byte digest of the sender's version
   vector, keyed and bound to ``h``.
2. **Digest.** Equal digests mean the board is in sync: nothing more is sent for
   it (the reconnect of two synced nodes costs the handshake and two Hellos). The
   digest covers each feed's head hash, so two versions of one feed differ.
3. **Vectors.** Otherwise both send their version vector ``{author: (seq, tag)}``,
   the tag being the start of the head envelope's hash. A side whose own envelope
   at that seq has another hash resends the peer that author's whole feed: the
   peer then finds the lowest seq where they differ, a proof that the author forked.
4. **Envelopes.** Each side sends, per author, the envelopes the peer lacks, in
   seq order, in batches of at most ``batch_bytes``, with at most ``window``
   batches unacknowledged. ``peer_has`` records what the peer holds or was sent,
   so nothing is sent twice and nothing received is echoed back.
5. **Live.** When the local vector grows (a local post, another peer, another
   process), :meth:`SyncSession.local_changed` pumps the difference.
   A batch from the peer is taken in two steps, so that the caller can apply it
   off the event loop's critical path (in slices): :meth:`SyncSession.begin_batch`
   checks it and records what the peer now holds; the caller has the replica
   receive it; :meth:`SyncSession.end_batch` answers with the Ack (or Refused).
6. **Forks.** When the peer holds an author's envelope at or beyond a seq where
   this side knows the author forked (two validly signed versions of one seq), this
   side sends the proof (Evidence, once per author and connection); a replica that
   receives a valid proof ends the author's feed before it, as every replica does.

Every message names a board by its index in the *sender's* Hello.

States per board link::

    (Hello exchanged) -> digests equal ---------------------> LIVE
                      -> digests differ -> send Vector -> (their Vector) -> LIVE
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, final

from p2paid.core.checkpoint import is_checkpoint
from p2paid.core.codes import CloseReason, RefusedCode, Role, SyncEventKind
from p2paid.core.envelope import HEADER_BYTES
from p2paid.core.feed import FeedHead
from p2paid.core.wire import (
    CHECKPOINTS_VERSION,
    PROTOCOL_VERSION,
    Ack,
    Checkpoints,
    Close,
    Envelopes,
    Evidence,
    Hello,
    HelloBoard,
    Message,
    Ping,
    Pong,
    Refused,
    Vector,
)
from p2paid.errors import (
    EnvelopeError,
    LocalProtocolError,
    MalformedEnvelopeError,
    OversizedEnvelopeError,
    RemoteProtocolError,
    SignatureError,
    WrongBoardError,
)

__all__ = [
    "BoardAccess",
    "PendingBatch",
    "Received",
    "Replica",
    "SyncEvent",
    "SyncSession",
    "peek_checkpoint",
    "peek_envelope",
    "vector_digest",
]

#: Errors that prove the *peer* sent bad data (not merely that an author misbehaved).
PEER_FAULTS: Final = (SignatureError, MalformedEnvelopeError, OversizedEnvelopeError,
                      WrongBoardError)
#: Bigger batches mean fewer Automerge apply calls (each costs O(document)) on the
#: receiver; a batch stays well inside MAX_MESSAGE_BYTES.
DEFAULT_BATCH_BYTES: Final = 900 * 1024
DEFAULT_WINDOW: Final = 4
#: Refusal codes after which a sender stops sending that board on the connection.
STALLING: Final = frozenset({RefusedCode.BOARD_FULL, RefusedCode.NOT_ALLOWED,
                              RefusedCode.QUOTA})
_ROLE_LABEL: Final = {True: b"p2paid/1 initiator", False: b"p2paid/1 responder"}


@final
@dataclass(frozen=True, slots=True)
class BoardAccess:
    """A board a replica holds: its id and, for members, its tag key."""

    board_id: bytes
    tag_key: bytes | None


@final
@dataclass(slots=True)
class Received:
    """What a replica did with a batch."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[EnvelopeError] = field(default_factory=list)
    #: ``(code, text)`` when a limit refused (part of) the batch; told to the peer
    notice: tuple[str, str] | None = None

    def add(self, other: Received) -> None:
        """Count ``other`` (a later part of the same batch) in this result."""
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.rejected.extend(other.rejected)
        self.notice = other.notice or self.notice


@final
@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A checked Envelopes batch from the peer, waiting for the replica to receive it
    (see :meth:`SyncSession.begin_batch`)."""

    board_id: bytes
    batch: int
    envelopes: tuple[bytes, ...] = field(repr=False)


class Replica(Protocol):
    """The local side of replication: implemented by the node and by the relay."""

    @property
    def role(self) -> Role: ...

    def boards(self) -> Sequence[BoardAccess]: ...

    def vector(self, board_id: bytes) -> Mapping[bytes, int]:
        """Highest contiguous seq held per author."""
        ...

    def heads(self, board_id: bytes) -> Mapping[bytes, FeedHead]:
        """The newest envelope held per author (seq and hash)."""
        ...

    def hash_at(self, board_id: bytes, author: bytes, seq: int) -> bytes | None:
        """The hash of the held envelope ``(author, seq)``, if any."""
        ...

    def read(self, board_id: bytes, author: bytes, after: int, max_bytes: int) -> list[bytes]:
        """Raw envelopes ``after+1, after+2, ...`` of one author, at least one if any, in at
        most ``max_bytes`` (unless a single envelope is larger)."""
        ...

    def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received: ...

    def accepts(self, board_id: bytes) -> tuple[str, str] | None:
        """For a relay answering a Hello: None to carry ``board_id``, else ``(code, text)``."""
        ...

    def forked(self, board_id: bytes) -> Mapping[bytes, int]:
        """``author -> seq`` of every proven fork: the author's feed ends before ``seq``."""
        ...

    def fork_evidence(self, board_id: bytes, author: bytes) -> tuple[bytes, bytes] | None:
        """The two envelopes that prove ``author``'s fork."""
        ...

    def record_fork(self, board_id: bytes, first: bytes, second: bytes) -> bool:
        """Learn a fork from a peer's evidence; True if it was news.

        Raises:
            EnvelopeError: the evidence proves nothing (the peer's fault).
        """
        ...


@final
@dataclass(frozen=True, slots=True)
class SyncEvent:
    """Something worth logging (see :class:`~p2paid.core.codes.SyncEventKind`; for a
    fork, ``count`` is the seq and ``detail`` the author)."""

    kind: SyncEventKind
    board_id: bytes
    count: int = 0
    detail: str = ""


def peek_envelope(raw: bytes) -> tuple[bytes, bytes, int]:
    """``(board_id, author, seq)`` from raw envelope bytes without full decoding.

    Raises:
        MalformedEnvelopeError: too short to hold the header.
    """
    if len(raw) < HEADER_BYTES:
        raise MalformedEnvelopeError("envelope is truncated")
    return raw[1:33], raw[33:65], int.from_bytes(raw[65:73], "big")


def peek_checkpoint(raw: bytes) -> tuple[bytes, bytes, int]:
    """``(board_id, author, seq)`` from raw checkpoint bytes without full decoding.

    Raises:
        MalformedEnvelopeError: not a checkpoint, or too short to hold its header.
    """
    if len(raw) < 77 or not is_checkpoint(raw):
        raise MalformedEnvelopeError("not a checkpoint, or truncated")
    return raw[5:37], raw[37:69], int.from_bytes(raw[69:77], "big")


#: ``(board_id, author) -> checkpoint bytes or None``: a replica's ``checkpoint_for``.
CheckpointSource = Callable[[bytes, bytes], bytes | None]


def _vector_entries(heads: Mapping[bytes, FeedHead]) -> tuple[tuple[bytes, int, bytes], ...]:
    """The entries to send, at most Vector.MAX_ENTRIES (the longest feeds first: the
    peer then resends at worst the short feeds left out, which is correct, only slower)."""
    entries = sorted(((a, h.seq, h.hash[: Vector.TAG_BYTES]) for a, h in heads.items()
                      if h.seq), key=lambda e: -e[1])
    return tuple(entries[: Vector.MAX_ENTRIES])


def vector_digest(key: bytes, handshake_hash: bytes, heads: Mapping[bytes, FeedHead]) -> bytes:
    """16-byte digest of the feed heads held, keyed and bound to one session."""
    mac = hmac.new(key, b"p2paid/1 digest\x00" + handshake_hash, hashlib.sha256)
    for author in sorted(heads):
        head = heads[author]
        if head.seq:
            mac.update(author + head.seq.to_bytes(8, "big") + head.hash)
    return mac.digest()[:16]


def board_tag(tag_key: bytes, initiator: bool, handshake_hash: bytes) -> bytes:
    return hmac.new(tag_key, _ROLE_LABEL[initiator] + handshake_hash, hashlib.sha256).digest()


@dataclass(slots=True)
class _Link:
    board_id: bytes
    digest_key: bytes
    local_index: int
    sent_digest: bytes
    sent_heads: dict[bytes, FeedHead]
    remote_index: int | None = None
    live: bool = False
    peer_has: dict[bytes, int] = field(default_factory=dict)
    in_flight: int = 0
    next_batch: int = 0
    #: the peer refused to store more of this board (a full relay): stop sending it
    stalled: bool = False
    #: ``author -> forked seq`` whose evidence the peer has (sent by us, or by it)
    evidence: dict[bytes, int] = field(default_factory=dict)
    #: authors whose feed the peer holds in another version: sent whole, as envelopes
    whole: set[bytes] = field(default_factory=set)
    #: authors whose checkpoint was looked up on this link (each is, once at most)
    asked: set[bytes] = field(default_factory=set)


@final
class SyncSession:
    """Replication over one connection, after the handshake.

    Args:
        replica: the local data.
        initiator: whether we dialled (decides which tag label is ours).
        handshake_hash: the Noise ``h`` of this connection.
        to_relay: True when we dialled a relay (boards are named by id).
        boards: when given, only these board ids are offered.
    """

    def __init__(
        self,
        replica: Replica,
        *,
        initiator: bool,
        handshake_hash: bytes,
        to_relay: bool = False,
        boards: Sequence[bytes] | None = None,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self._replica = replica
        self._initiator = initiator
        self._h = handshake_hash
        self._by_id = to_relay or replica.role == Role.RELAY
        self._only = None if boards is None else set(boards)
        self._batch_bytes = batch_bytes
        self._window = window
        self._links: list[_Link] = []
        self._by_remote: dict[int, _Link] = {}
        self._hello_sent = False
        self._hello_received = False
        self.peer_role: str | None = None
        #: the replica's checkpoints (SPEC 8a), if it keeps any: it then takes them too
        self._checkpoint_for: CheckpointSource | None = getattr(replica, "checkpoint_for",
                                                                None)
        self._peer_takes_checkpoints = False
        self.events: list[SyncEvent] = []
        self.closed_reason: str | None = None

    # -------------------------------------------------------------- public

    @property
    def greeted(self) -> bool:
        """Both Hellos have been exchanged (which boards are shared is known)."""
        return self._hello_sent and self._hello_received

    @property
    def shared_boards(self) -> list[bytes]:
        return [link.board_id for link in self._links if link.remote_index is not None]

    def is_in_sync(self, board_id: bytes) -> bool:
        """True when nothing is in flight and the peer holds everything we hold."""
        for link in self._links:
            if link.board_id == board_id and link.stalled:
                return True  # nothing more can be done on this connection
            if link.board_id == board_id and link.live:
                local = self._replica.vector(board_id)
                return link.in_flight == 0 and all(
                    link.peer_has.get(a, 0) >= s for a, s in local.items()
                )
        return False

    def missing(self, board_id: bytes) -> int:
        """Envelopes of ``board_id`` the peer holds and we do not, as far as its vector
        and batches tell (0 before its vector, or when the board is not shared)."""
        for link in self._links:
            if link.board_id == board_id and link.live:
                local = self._replica.vector(board_id)
                return sum(max(0, seq - local.get(a, 0)) for a, seq in link.peer_has.items())
        return 0

    def start(self) -> list[Message]:
        """Messages to send first. A relay answers instead of speaking first."""
        if self._replica.role == Role.RELAY:
            return []
        accesses = [
            acc for acc in self._replica.boards()
            if (self._only is None or acc.board_id in self._only)
            and (self._by_id or acc.tag_key is not None)
        ]
        return [self._hello(accesses)]

    def handle_whole(self, message: Message) -> list[Message]:
        """:meth:`handle` any message, an Envelopes batch included (received by the
        replica in one call): for a driver that need not keep each step short, such
        as a test, a vector generator or a command-line tool.

        Raises:
            RemoteProtocolError: the peer broke the protocol; drop it.
        """
        if isinstance(message, Envelopes | Checkpoints):
            pending = self.begin_batch(message)
            return self.end_batch(
                pending, self._replica.receive(pending.board_id, pending.envelopes))
        return self.handle(message)

    def handle(self, message: Message) -> list[Message]:
        """Process one message from the peer; return the messages to send.

        Envelopes are not taken here (:meth:`begin_batch`, or :meth:`handle_whole`):
        the replica's work on a batch is the caller's to schedule.

        Raises:
            RemoteProtocolError: the peer broke the protocol; drop it.
            LocalProtocolError: ``message`` is an Envelopes batch.
        """
        if isinstance(message, Hello):
            return self._on_hello(message)
        if isinstance(message, Ping):
            return [Pong(message.nonce)]
        if isinstance(message, Pong):
            return []
        if isinstance(message, Close):
            self.closed_reason = message.reason
            return []
        if not self._hello_received and not isinstance(message, Refused):
            raise RemoteProtocolError("message before hello")
        if isinstance(message, Refused):
            self.events.append(SyncEvent(SyncEventKind.REFUSED, message.board, 0,
                                         f"{message.code}: {message.text}"))
            if message.code in STALLING:
                for link in self._links:
                    if link.board_id == message.board:
                        link.stalled = True
            return []
        if isinstance(message, Vector):
            return self._on_vector(message)
        if isinstance(message, Envelopes | Checkpoints):
            raise LocalProtocolError("an Envelopes batch goes to begin_batch(), not handle()")
        if isinstance(message, Ack):
            return self._on_ack(message)
        if isinstance(message, Evidence):
            return self._on_evidence(message)
        raise RemoteProtocolError(f"unexpected message {type(message).__name__}")

    def local_changed(self, board_id: bytes) -> list[Message]:
        """The local vector of ``board_id`` grew: send the peer what it lacks."""
        out: list[Message] = []
        for link in self._links:
            if link.board_id == board_id and link.live:
                out.extend(self._pump(link))
        return out

    # -------------------------------------------------------------- hello

    def _hello(self, accesses: Sequence[BoardAccess]) -> Hello:
        entries = []
        for index, acc in enumerate(accesses):
            key = acc.board_id if self._by_id else acc.tag_key
            assert key is not None
            heads = dict(self._replica.heads(acc.board_id))
            digest = vector_digest(key, self._h, heads)
            self._links.append(_Link(acc.board_id, key, index, digest, heads))
            ident = acc.board_id if self._by_id else board_tag(key, self._initiator, self._h)
            entries.append(HelloBoard(ident, digest))
        self._hello_sent = True
        version = PROTOCOL_VERSION if self._checkpoint_for is None else CHECKPOINTS_VERSION
        return Hello(version, str(self._replica.role), self._by_id, tuple(entries))

    def _on_hello(self, hello: Hello) -> list[Message]:
        if self._hello_received:
            raise RemoteProtocolError("second hello")
        if hello.version < 1:
            raise RemoteProtocolError(f"unsupported protocol version {hello.version}")
        if hello.by_id != self._by_id:
            raise RemoteProtocolError("hello names boards the wrong way for this connection")
        if len({entry.key for entry in hello.boards}) != len(hello.boards):
            raise RemoteProtocolError("hello lists a board twice")
        self._hello_received = True
        self.peer_role = hello.role
        self._peer_takes_checkpoints = hello.version >= CHECKPOINTS_VERSION
        out: list[Message] = []
        if not self._hello_sent:  # we are a relay: answer for the boards asked about
            accepted: list[BoardAccess] = []
            for entry in hello.boards:
                refusal = self._replica.accepts(entry.key)
                if refusal is None:
                    accepted.append(BoardAccess(entry.key, None))
                else:
                    out.append(Refused(entry.key, *refusal))
            out.insert(0, self._hello(accepted))
        expected: dict[bytes, _Link] = {}
        for link in self._links:
            ident = link.board_id if self._by_id else board_tag(
                link.digest_key, not self._initiator, self._h)
            expected[ident] = link
        for index, entry in enumerate(hello.boards):
            found = expected.get(entry.key)
            if found is None or found.remote_index is not None:
                continue
            link = found
            link.remote_index = index
            self._by_remote[index] = link
            if hmac.compare_digest(entry.digest, link.sent_digest):
                link.live = True
                link.peer_has = {a: h.seq for a, h in link.sent_heads.items()}
                self.events.append(SyncEvent(SyncEventKind.IN_SYNC, link.board_id))
                out.extend(self._pump(link))
            else:
                self.events.append(SyncEvent(SyncEventKind.LINKED, link.board_id))
                out.append(Vector(link.local_index, _vector_entries(link.sent_heads)))
        return out

    def _remote_link(self, index: int) -> _Link:
        link = self._by_remote.get(index)
        if link is None:
            raise RemoteProtocolError(f"message for board {index}, which is not shared")
        return link

    # -------------------------------------------------------------- vectors and batches

    def _on_vector(self, message: Vector) -> list[Message]:
        link = self._remote_link(message.board)
        if link.live:
            raise RemoteProtocolError("second vector for a board")
        link.live = True
        heads = link.sent_heads
        for author, seq, tag in message.entries:
            if seq > link.peer_has.get(author, 0):
                link.peer_has[author] = seq
            ours = heads.get(author)
            if not tag or ours is None or seq > ours.seq:
                continue  # (if ahead of us, it compares our tag with its envelope)
            mine = ours.hash if seq == ours.seq else self._replica.hash_at(
                link.board_id, author, seq)
            if mine is not None and mine[: Vector.TAG_BYTES] != tag:
                # Another version of this feed: resend ours whole, so that the peer
                # finds the lowest seq where they differ (a proof of the fork).
                link.peer_has[author] = 0
                link.whole.add(author)
        return self._pump(link)

    def begin_batch(self, message: Envelopes | Checkpoints) -> PendingBatch:
        """Check a batch from the peer and record what it holds now (so nothing of it is
        echoed back); the caller then has the replica receive ``envelopes`` (all at
        once, or in contiguous slices: they are per author in seq order) and passes
        the combined result to :meth:`end_batch`.

        Raises:
            RemoteProtocolError: the batch is out of order, for a board not shared, or
                holds an envelope of another board or one too short to have a header.
        """
        if not self._hello_received:
            raise RemoteProtocolError("message before hello")
        link = self._remote_link(message.board)
        if not link.live:
            raise RemoteProtocolError("envelopes before the vector")
        if isinstance(message, Checkpoints):
            if self._checkpoint_for is None:
                raise RemoteProtocolError("checkpoints to a side whose hello did not ask "
                                          "for them")
            for raw in message.checkpoints:
                board_id, author, seq = peek_checkpoint(raw)
                if board_id != link.board_id:
                    raise WrongBoardError("checkpoint for another board on this board's link")
                if seq > link.peer_has.get(author, 0):
                    link.peer_has[author] = seq
            return PendingBatch(link.board_id, message.batch, message.checkpoints)
        for raw in message.envelopes:
            board_id, author, seq = peek_envelope(raw)
            if board_id != link.board_id:
                raise WrongBoardError("envelope for another board in this board's batch")
            if seq > link.peer_has.get(author, 0):
                link.peer_has[author] = seq
        return PendingBatch(link.board_id, message.batch, message.envelopes)

    def end_batch(self, pending: PendingBatch, result: Received) -> list[Message]:
        """The replica received ``pending`` with ``result``: the Ack (or the Refused that
        replaces it) and any fork evidence the peer now needs.

        Raises:
            RemoteProtocolError: the batch held an envelope that proves the *peer* at
                fault (a forgery, say), not merely its author.
        """
        link = next(lk for lk in self._links if lk.board_id == pending.board_id
                    and lk.remote_index is not None)
        for error in result.rejected:
            if isinstance(error, PEER_FAULTS):
                raise RemoteProtocolError(f"peer sent an invalid envelope: {error}",
                                          close_reason=error.code)
        self.events.append(SyncEvent(SyncEventKind.RECEIVED, link.board_id, result.stored,
                                     f"{result.duplicates} duplicates"))
        if result.notice is not None and result.notice[0] in STALLING:
            # Not stored: no Ack (an Ack promises the batch is kept), and the sender
            # stops sending this board on this connection.
            return [Refused(link.board_id, *result.notice)]
        out: list[Message] = [Ack(link.local_index, pending.batch)]
        if result.notice is not None:
            out.append(Refused(link.board_id, *result.notice))
        out.extend(self._evidence(link))  # it sent what we know to be forked
        return out

    def _on_evidence(self, message: Evidence) -> list[Message]:
        link = self._remote_link(message.board)
        first, second = message.envelopes
        for raw in (first, second):
            if peek_envelope(raw)[0] != link.board_id:
                raise WrongBoardError("fork evidence for another board")
        try:
            news = self._replica.record_fork(link.board_id, first, second)
        except EnvelopeError as exc:
            raise RemoteProtocolError(f"peer sent bogus fork evidence: {exc}",
                                      close_reason=CloseReason.BAD_EVIDENCE) from exc
        _, author, seq = peek_envelope(first)
        link.evidence[author] = min(seq, link.evidence.get(author, seq))
        if news:
            self.events.append(SyncEvent(SyncEventKind.FORK, link.board_id, seq, author.hex()))
        return []

    def _evidence(self, link: _Link) -> list[Message]:
        """Evidence of every fork the peer may hold something of and has not been told."""
        out: list[Message] = []
        for author, seq in self._replica.forked(link.board_id).items():
            if link.peer_has.get(author, 0) < seq or link.evidence.get(author, seq + 1) <= seq:
                continue
            pair = self._replica.fork_evidence(link.board_id, author)
            if pair is None:
                continue
            out.append(Evidence(link.local_index, pair))
            link.evidence[author] = seq
            link.peer_has[author] = seq - 1  # what it keeps once it checked the proof
        return out

    def _on_ack(self, message: Ack) -> list[Message]:
        link = self._remote_link(message.board)
        if link.in_flight <= 0:
            raise RemoteProtocolError("acknowledgement of a batch never sent")
        link.in_flight -= 1
        return self._pump(link)

    def _pump(self, link: _Link) -> list[Message]:
        out: list[Message] = []
        if not link.live or link.stalled:
            return out
        out.extend(self._evidence(link))
        while link.in_flight < self._window:
            checkpoints = self._next_checkpoints(link)
            if checkpoints:
                out.append(Checkpoints(link.local_index, link.next_batch, tuple(checkpoints)))
            else:
                batch = self._next_batch(link)
                if not batch:
                    break
                out.append(Envelopes(link.local_index, link.next_batch, tuple(batch)))
            link.next_batch += 1
            link.in_flight += 1
        return out

    def _next_checkpoints(self, link: _Link) -> list[bytes]:
        """Checkpoints of authors the peer holds nothing of, if the peer takes them (SPEC
        12.3), in place of their envelopes up to each one's seq; and to a member holding
        part of a feed that this side holds only as a checkpoint (it cannot send the
        envelopes that follow the peer's): one batch, filled up to ``batch_bytes`` (at
        least one)."""
        source = self._checkpoint_for
        if source is None or not self._peer_takes_checkpoints:
            return []
        out: list[bytes] = []
        budget = self._batch_bytes
        for author, seq in self._replica.vector(link.board_id).items():
            have = link.peer_has.get(author, 0)
            if seq < 2 or author in link.whole or author in link.asked:
                continue
            if have and (have >= seq - 1 or self.peer_role == Role.RELAY
                         or self._can_send_after(link, author, have)):
                link.asked.add(author)  # (envelopes serve it; a relay cannot check a
                continue                # continuation: not looked at again on this link)
            raw = source(link.board_id, author)
            if raw is not None and out and (
                    len(raw) > budget or len(out) == Checkpoints.MAX_CHECKPOINTS):
                break  # (for the next batch: not asked yet)
            link.asked.add(author)
            if raw is None:
                continue
            _, _, reaches = peek_checkpoint(raw)
            if have < reaches <= seq:
                link.peer_has[author] = reaches
                out.append(raw)
                budget -= len(raw)
        return out

    def _can_send_after(self, link: _Link, author: bytes, have: int) -> bool:
        """Whether this side holds the author's envelope ``have + 1`` to send."""
        envs = self._replica.read(link.board_id, author, have, 1)
        return bool(envs) and peek_envelope(envs[0])[2] == have + 1

    def _next_batch(self, link: _Link) -> list[bytes]:
        batch: list[bytes] = []
        budget = self._batch_bytes
        for author, seq in self._replica.vector(link.board_id).items():
            have = link.peer_has.get(author, 0)
            while seq > have and budget > 0:
                envs = self._replica.read(link.board_id, author, have, budget)
                if not envs or peek_envelope(envs[0])[2] != have + 1:
                    # (a feed held from a checkpoint has nothing stored before its
                    # head: a peer that cannot take the checkpoint cannot be served it)
                    break
                batch.extend(envs)
                budget -= sum(len(e) for e in envs)
                have += len(envs)
            link.peer_has[author] = max(have, link.peer_has.get(author, 0))
            if budget <= 0:
                break
        return batch

