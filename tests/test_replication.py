"""p2paid.core.replication: the sync protocol between in-memory replicas, over real Noise channels.

No sockets and no trio: :mod:`replication_helpers` pipes bytes between
:class:`~p2paid.core.wire.SecureChannel` + :class:`~p2paid.core.replication.SyncSession` endpoints
and stores envelopes in :class:`MemoryReplica` objects that verify chains and signatures
with :func:`p2paid.core.feed.plan_batch`, as the real store does.

What this file proves:

* replicas with disjoint data converge, and each envelope crosses the wire once;
* a reconnect of two synced replicas costs the handshake and one Hello each way (under
  1 KB and two round trips for a board of 100 authors and 10,000 envelopes);
* a replica one envelope behind receives exactly that envelope, and nothing is echoed;
* boards are only linked when both sides know the tag key; echoed tags link nothing;
* to and from a relay, boards are linked by id, and the relay answers rather than speaks;
* forged, malformed or misfiled envelopes make the receiving session raise
  :class:`RemoteProtocolError` (a validly signed fork does not: peers relay forks innocently);
* flow control: never more than ``window`` unacknowledged batches per board, and no batch
  holds more than one envelope beyond ``batch_bytes`` (checked on every batch any test
  sends, together with: nothing sent twice, echoed, or already declared by the peer);
* a hypothesis state machine (2 and 3 endpoints, full mesh, and hub-and-spoke via a relay)
  with local writes, byte-level delivery in arbitrary slices and interleavings, dropped
  connections (losing everything in flight) and reconnects: bounded buffers at every step,
  no honest envelope refused, and identical feeds everywhere once delivery drains.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from replication_helpers import (
    Connection,
    FeedWriter,
    MemoryReplica,
    Mesh,
    board_keys,
)

from p2paid.core.envelope import HEADER_BYTES, MAX_CIPHERTEXT
from p2paid.core.feed import FeedHead
from p2paid.core.invite import BoardKeys
from p2paid.core.replication import SyncSession, vector_digest
from p2paid.core.wire import (
    MAX_MESSAGE_BYTES,
    Ack,
    Envelopes,
    Hello,
    Message,
    Refused,
    Vector,
    encode_message,
)
from p2paid.errors import RemoteProtocolError, SignatureError

BOARD = board_keys(0)
OTHER_BOARD = board_keys(1)


def kinds(messages: list[Message]) -> list[str]:
    return [type(m).__name__ for m in messages]


def replica_with(
    writers: list[FeedWriter], *, keys: BoardKeys = BOARD, role: str = "node", name: str = ""
) -> MemoryReplica:
    """A replica holding ``keys``' board with every envelope the writers sealed so far."""
    replica = MemoryReplica(role, name=name)
    replica.add_board(keys)
    replica.write(keys.board_id, [e for w in writers for e in w.envelopes])
    replica.take_changed()
    return replica


def expected_feeds(writers: list[FeedWriter]) -> dict[bytes, tuple[bytes, ...]]:
    return {w.author: tuple(e.raw for e in w.envelopes) for w in writers if w.envelopes}


# --------------------------------------------------------------------- convergence


@pytest.mark.parametrize("dialler_has_more", [True, False], ids=["dialler-more", "listener-more"])
def test_disjoint_replicas_converge_and_send_each_envelope_once(dialler_has_more: bool) -> None:
    """Two replicas with different authors end with identical feeds; every envelope crosses
    the wire exactly once, and only towards the side that lacked it."""
    mine = [FeedWriter(BOARD), FeedWriter(BOARD)]
    for w, count in zip(mine, (5, 12), strict=True):
        w.many(count)
    theirs = [FeedWriter(BOARD)]
    theirs[0].many(7)
    a_writers, b_writers = (mine, theirs) if dialler_has_more else (theirs, mine)
    a, b = replica_with(a_writers, name="a"), replica_with(b_writers, name="b")
    conn = Connection(a, b)
    conn.run()
    everything = expected_feeds(mine + theirs)
    assert a.feeds(BOARD.board_id) == everything == b.feeds(BOARD.board_id)
    sent_ab, sent_ba = conn.a.envelopes_sent(), conn.b.envelopes_sent()
    assert sorted(sent_ab) == sorted(e.raw for w in a_writers for e in w.envelopes)
    assert sorted(sent_ba) == sorted(e.raw for w in b_writers for e in w.envelopes)
    assert conn.b.envelopes_received() == sent_ab and conn.a.envelopes_received() == sent_ba
    for end in conn.ends:
        assert end.session is not None
        assert end.session.shared_boards == [BOARD.board_id]
        assert end.session.is_in_sync(BOARD.board_id)
        assert next(e.kind for e in end.events) == "linked"
    assert a.rejections == [] and b.rejections == []


def test_empty_replica_catches_up_on_a_board_in_many_batches() -> None:
    """A newcomer receives a whole board in order over many flow-controlled batches."""
    writers = [FeedWriter(BOARD) for _ in range(3)]
    for w in writers:
        w.many(40, change=bytes(300))
    full, empty = replica_with(writers), replica_with([])
    conn = Connection(empty, full, batch_bytes=4096, window=2)
    conn.run()
    assert empty.feeds(BOARD.board_id) == expected_feeds(writers)
    batches = [m for m in conn.b.sent if isinstance(m, Envelopes)]
    assert len(batches) > 2 * conn.b.window  # flow control was actually exercised
    assert conn.b.max_in_flight == conn.b.window
    assert [m.batch for m in batches] == list(range(len(batches)))
    assert empty.held_count(BOARD.board_id) == 0  # in-order delivery: nothing held


@pytest.mark.parametrize("window", [1, 3])
def test_sender_stops_at_the_window_until_acks_arrive(window: int) -> None:
    """With Acks held back, exactly ``window`` batches go out and then nothing; each Ack
    that arrives releases exactly one more batch."""
    w = FeedWriter(BOARD)
    w.many(60, change=bytes(400))
    empty, full = replica_with([]), replica_with([w])
    conn = Connection(empty, full, batch_bytes=2000, window=window)
    conn.handshake()
    conn.deliver(1)  # the full side's Hello and Vector
    conn.deliver(0)  # the empty side's Vector: the full side starts pumping
    assert kinds(conn.b.sent).count("Envelopes") == window
    conn.deliver(1)  # the batches arrive; the Acks stay queued on the empty side
    assert conn.pending(1) == 0 and conn.b.in_flight(BOARD.board_id) == window
    assert kinds(conn.a.sent).count("Ack") == window
    conn.deliver(0, limit=_first_frame_size(conn.a.outbox))  # exactly one Ack
    assert kinds(conn.b.sent).count("Envelopes") == window + 1
    conn.run()
    assert empty.feeds(BOARD.board_id) == expected_feeds([w])
    assert conn.b.max_in_flight == window


def _first_frame_size(outbox: bytearray) -> int:
    return 2 + int.from_bytes(outbox[:2], "big")


def test_a_batch_holds_at_most_one_envelope_beyond_batch_bytes() -> None:
    """Batches fill up to ``batch_bytes``; an envelope larger than the budget still goes, alone
    at the end of a batch, so a big envelope can never stall a feed."""
    w = FeedWriter(BOARD)
    sizes = [500, 40_000, 500, 500, 10, 60_000, 10]
    for size in sizes:
        w.next(bytes(size))
    empty, full = replica_with([]), replica_with([w])
    conn = Connection(empty, full, batch_bytes=1000, window=2)
    conn.run()
    assert empty.feeds(BOARD.board_id) == expected_feeds([w])
    batches = [[len(raw) for raw in m.envelopes] for m in conn.b.sent
               if isinstance(m, Envelopes)]
    overhead = len(w.envelopes[0].raw) - sizes[0]
    assert batches == [[s + overhead for s in chunk] for chunk in
                       ([500, 40_000], [500, 500], [10, 60_000], [10])]
    assert all(sum(b[:-1]) < 1000 for b in batches)


@pytest.fixture(scope="module")
def big_board() -> list[FeedWriter]:
    """100 authors with 100 envelopes each: 10,000 envelopes (sealed once per module)."""
    writers = [FeedWriter(BOARD) for _ in range(100)]
    for w in writers:
        w.many(100, change=b"12345678")
    return writers


def test_synced_reconnect_costs_the_handshake_and_one_hello_each_way(
    big_board: list[FeedWriter],
) -> None:
    """Equal digests mean nothing but Hellos: < 1 KB on the wire (handshake included) and two
    round trips, however big the board (100 authors, 10,000 envelopes here)."""
    a, b = replica_with(big_board), replica_with(big_board)
    assert sum(a.vector(BOARD.board_id).values()) == 10_000
    conn = Connection(a, b)
    one_way_trips = conn.run()
    assert conn.bytes_delivered < 1024
    assert conn.bytes_delivered == conn.a.channel.bytes_out + conn.b.channel.bytes_out
    # msg1; msg2; msg3 + the dialler's Hello; the listener's Hello
    assert one_way_trips == 4
    assert (one_way_trips + 1) // 2 <= 3
    assert kinds(conn.a.sent) == kinds(conn.b.sent) == ["Hello"]
    for end in conn.ends:
        assert end.session is not None
        assert [e.kind for e in end.events] == ["in-sync"]
        assert end.session.is_in_sync(BOARD.board_id)
    assert a.receive_calls == b.receive_calls == 1  # only the initial load


@pytest.mark.parametrize("behind", ["dialler", "listener"])
@pytest.mark.parametrize("new_author", [False, True], ids=["old-author", "new-author"])
def test_replica_one_behind_receives_exactly_that_envelope(
    big_board: list[FeedWriter], behind: str, new_author: bool
) -> None:
    """After a reconnect, the replica that lacks one envelope gets that one only, in one
    batch; nothing travels the other way (no echo), and both end in sync."""
    ahead = replica_with(big_board)
    lagging = replica_with(big_board)
    writer = FeedWriter(BOARD) if new_author else big_board[37]
    try:
        extra = writer.next(b"one more")
        ahead.write(BOARD.board_id, [extra])
    finally:
        if not new_author:
            writer.envelopes.pop()  # keep the shared fixture unchanged
    a, b = (lagging, ahead) if behind == "dialler" else (ahead, lagging)
    conn = Connection(a, b)
    conn.run()
    to_lagging, to_ahead = (conn.a, conn.b) if behind == "dialler" else (conn.b, conn.a)
    assert to_lagging.envelopes_received() == [extra.raw]
    assert to_ahead.envelopes_received() == []
    assert kinds(to_ahead.sent) == ["Hello", "Vector", "Envelopes"]
    assert kinds(to_lagging.sent) == ["Hello", "Vector", "Ack"]
    assert lagging.feeds(BOARD.board_id) == ahead.feeds(BOARD.board_id)
    assert lagging.offered - 10_000 == 1  # the one envelope, offered once


def test_live_push_sends_a_new_envelope_once_and_nothing_comes_back() -> None:
    """While connected and in sync, a local write is pushed once; the receiver, told that its
    board grew, sends nothing back to the peer that supplied it."""
    writers = [FeedWriter(BOARD), FeedWriter(BOARD)]
    writers[0].many(3)
    writers[1].many(2)
    a = replica_with([writers[0]])
    b = replica_with([writers[1]])
    conn = Connection(a, b)
    conn.run()
    before = (len(conn.a.sent), len(conn.b.sent))
    env = writers[0].next(b"live")
    a.write(BOARD.board_id, [env])
    conn.replica_changed(a, a.take_changed().pop())
    conn.run()
    assert kinds(conn.a.sent[before[0]:]) == ["Envelopes"]
    assert kinds(conn.b.sent[before[1]:]) == ["Ack"]  # no echo of what b just received
    assert conn.b.envelopes_received()[-1:] == [env.raw]
    assert a.feeds(BOARD.board_id) == b.feeds(BOARD.board_id) == expected_feeds(writers)
    # the same local change announced again sends nothing
    conn.replica_changed(a, BOARD.board_id)
    assert conn.idle()


def test_live_push_in_three_node_line_reaches_the_far_end() -> None:
    """a - b - c: a write on a reaches c through b's live push, and each link carries it once."""
    w = FeedWriter(BOARD)
    replicas = [replica_with([], name=n) for n in "abc"]
    mesh = Mesh(replicas, batch_bytes=4096, window=2)
    ab, bc = mesh.connect((0, 1)), mesh.connect((1, 2))
    mesh.drain()
    replicas[0].write(BOARD.board_id, w.many(3))
    mesh.changed(replicas[0])
    mesh.drain()
    assert all(r.feeds(BOARD.board_id) == expected_feeds([w]) for r in replicas)
    assert len(ab.a.envelopes_sent()) == len(bc.a.envelopes_sent()) == 3
    assert ab.b.envelopes_sent() == bc.b.envelopes_sent() == []


# --------------------------------------------------------------------- what peers learn


def test_unshared_boards_are_not_revealed() -> None:
    """Replicas with different boards link nothing: no Vector, no Envelopes, and the Hellos
    carry neither board ids nor tag keys."""
    wa, wb = FeedWriter(BOARD), FeedWriter(OTHER_BOARD)
    wa.many(3)
    wb.many(3)
    a = replica_with([wa])
    b = replica_with([wb], keys=OTHER_BOARD)
    conn = Connection(a, b)
    conn.run()
    for end in conn.ends:
        assert end.session is not None
        assert end.session.shared_boards == []
        assert kinds(end.sent) == ["Hello"]
        assert end.events == []
        (hello,) = end.sent
        assert isinstance(hello, Hello) and not hello.by_id and len(hello.boards) == 1
        secrets = {k for keys in (BOARD, OTHER_BOARD) for k in (keys.board_id, keys.tag_key)}
        assert not any(s in encode_message(hello) for s in secrets)
    assert a.receive_calls == b.receive_calls == 1


def test_a_peer_without_the_tag_key_learns_no_board() -> None:
    """A node that carries a board's envelopes blind (id, no tag key) neither offers nor
    recognises it: nothing is linked and nothing flows either way."""
    w = FeedWriter(BOARD)
    w.many(4)
    member = replica_with([w])
    carrier = MemoryReplica("node")
    carrier.add_board(BOARD, member=False)
    conn = Connection(carrier, member)
    conn.run()
    assert kinds(conn.a.sent) == kinds(conn.b.sent) == ["Hello"]
    hello_a = conn.a.sent[0]
    assert isinstance(hello_a, Hello) and hello_a.boards == ()
    for end in conn.ends:
        assert end.session is not None and end.session.shared_boards == []
    assert carrier.feeds(BOARD.board_id) == {}


def test_tags_differ_per_session_and_per_role() -> None:
    """A board's tag changes with every handshake and with the role, so a listener cannot
    link two sessions, nor be fooled by its own tag echoed back."""
    member = replica_with([])
    hellos = []
    for _ in range(2):
        conn = Connection(member, replica_with([]))
        conn.run()
        hellos += [conn.a.sent[0], conn.b.sent[0]]
    keys = [m.boards[0].key for m in hellos if isinstance(m, Hello)]
    assert len(set(keys)) == 4


def test_an_echoed_hello_links_nothing() -> None:
    """Sending a node its own Hello back (a peer that does not know the board) links nothing."""
    member = replica_with([FeedWriter(BOARD)])
    session = SyncSession(member, initiator=True, handshake_hash=bytes(range(32)))
    (hello,) = session.start()
    assert isinstance(hello, Hello)
    assert session.handle(hello) == []
    assert session.shared_boards == []


def test_offered_boards_can_be_restricted() -> None:
    """``boards=`` limits what a session offers: other shared boards stay unlinked."""
    a, b = MemoryReplica(), MemoryReplica()
    for r in (a, b):
        r.add_board(BOARD)
        r.add_board(OTHER_BOARD)
    conn = Connection(a, b, a_boards=[OTHER_BOARD.board_id])
    conn.run()
    for end in conn.ends:
        assert end.session is not None and end.session.shared_boards == [OTHER_BOARD.board_id]


def test_digest_is_keyed_and_bound_to_the_session() -> None:
    """The vector digest changes with the key, the handshake hash, the vector and the
    head hashes (two versions of one feed of equal length differ); zero seqs do not
    count (an author with nothing held is no author)."""
    h1, h2 = b"1" * 32, b"2" * 32
    vec = {b"a" * 32: FeedHead(3, h1), b"b" * 32: FeedHead(1, h2)}
    base = vector_digest(b"k" * 32, b"h" * 32, vec)
    assert len(base) == 16
    assert vector_digest(b"K" * 32, b"h" * 32, vec) != base
    assert vector_digest(b"k" * 32, b"H" * 32, vec) != base
    assert vector_digest(b"k" * 32, b"h" * 32, {**vec, b"a" * 32: FeedHead(4, h1)}) != base
    assert vector_digest(b"k" * 32, b"h" * 32, {**vec, b"a" * 32: FeedHead(3, h2)}) != base
    assert vector_digest(b"k" * 32, b"h" * 32, {**vec, b"c" * 32: FeedHead(0, h1)}) == base
    assert vector_digest(b"k" * 32, b"h" * 32, dict(reversed(vec.items()))) == base


# --------------------------------------------------------------------- relays


def test_relay_session_links_boards_by_id() -> None:
    """A node dialling a relay names boards by id; the relay answers (never speaks first)
    for the boards it holds among those asked, and stores envelopes blind. A second node then
    gets them from the relay."""
    w = FeedWriter(BOARD)
    w.many(6)
    node = replica_with([w])
    node.add_board(OTHER_BOARD)  # a board this relay will not carry
    hidden = board_keys(7)
    relay = MemoryReplica("relay", allowed={BOARD.board_id, hidden.board_id})
    relay.add_board(hidden)  # a board the node did not ask about
    assert SyncSession(relay, initiator=False, handshake_hash=bytes(32)).start() == []
    up = Connection(node, relay, a_to_relay=True)
    up.handshake()
    assert kinds(up.b.received) == ["Hello"]
    # The relay answers: its Hello, a notice for the board it will not carry, its Vector.
    assert kinds(up.b.sent) == ["Hello", "Refused", "Vector"]
    up.run()
    hello_node, hello_relay, refused = up.a.sent[0], up.b.sent[0], up.b.sent[1]
    assert isinstance(hello_node, Hello) and isinstance(hello_relay, Hello)
    assert hello_node.by_id and hello_relay.by_id and hello_relay.role == "relay"
    assert {b.key for b in hello_node.boards} == {BOARD.board_id, OTHER_BOARD.board_id}
    assert [b.key for b in hello_relay.boards] == [BOARD.board_id]  # hidden stays hidden
    assert isinstance(refused, Refused) and refused.board == OTHER_BOARD.board_id
    for end in up.ends:
        assert end.session is not None and end.session.shared_boards == [BOARD.board_id]
    assert up.a.session is not None
    assert [(e.kind, e.board_id) for e in up.a.events][:2] == [
        ("linked", BOARD.board_id), ("refused", OTHER_BOARD.board_id)]
    assert all(acc.tag_key is None for acc in relay.boards())
    assert not relay.holds(OTHER_BOARD.board_id)
    assert relay.feeds(BOARD.board_id) == expected_feeds([w])
    down = Connection(replica_with([]), relay, a_to_relay=True)
    down.run()
    assert down.a.replica.feeds(BOARD.board_id) == expected_feeds([w])


def test_open_relay_carries_a_board_it_has_never_seen() -> None:
    """A relay without an allow-list starts carrying a board the first time a node offers
    it, so the first member to reach it can upload."""
    w = FeedWriter(OTHER_BOARD)
    w.many(3)
    relay = MemoryReplica("relay")
    conn = Connection(replica_with([w], keys=OTHER_BOARD), relay, a_to_relay=True)
    conn.run()
    assert relay.feeds(OTHER_BOARD.board_id) == expected_feeds([w])
    assert kinds(conn.b.sent) == ["Hello", "Vector", "Ack"]


def test_node_that_does_not_know_it_dials_a_relay_is_refused() -> None:
    """A node Hello naming boards by tag is refused by a relay (boards must go by id)."""
    relay = MemoryReplica("relay")
    relay.add_board(BOARD)
    conn = Connection(replica_with([]), relay)
    with pytest.raises(RemoteProtocolError):
        conn.run()


# --------------------------------------------------------------------- misbehaving peers


def _flip(raw: bytes, pos: int) -> bytes:
    out = bytearray(raw)
    out[pos] ^= 0x01
    return bytes(out)


def _forgeries() -> dict[str, Callable[[FeedWriter], bytes]]:
    """Envelopes a peer could offer for ``writer``'s feed, which holds seq 1..3."""

    def resigned(writer: FeedWriter, *, seq: int, prev: bytes) -> bytes:
        # Sealed by another key, then relabelled with the writer's author id.
        impostor = FeedWriter(writer.keys)
        impostor.envelopes = [e for e in writer.envelopes[: seq - 1]]
        env = impostor.next(b"forged")
        raw = bytearray(env.raw)
        raw[33:65] = writer.author
        raw[73:105] = prev
        return bytes(raw)

    def next_raw(writer: FeedWriter) -> bytes:
        env = writer.next(b"genuine")
        writer.envelopes.pop()
        return env.raw

    return {
        "bad-signature-next": lambda w: _flip(next_raw(w), HEADER_BYTES + 1),
        "wrong-signer-next": lambda w: resigned(w, seq=4, prev=w.envelopes[-1].hash),
        "bad-signature-held-seq": lambda w: _flip(w.envelopes[1].raw, HEADER_BYTES + 1),
        "truncated": lambda w: next_raw(w)[: HEADER_BYTES - 1],
        "bad-length": lambda w: next_raw(w)[:-1],
        "bad-version": lambda w: b"\x02" + next_raw(w)[1:],
        "seq-zero": lambda w: (lambda raw: raw[:65] + bytes(8) + raw[73:])(next_raw(w)),
        "oversized": lambda w: next_raw(w) + bytes(MAX_CIPHERTEXT),
        "other-board": lambda w: FeedWriter(OTHER_BOARD).next().raw,
        # A forgery that also breaks the chain: junk prev, and a signature that cannot verify.
        "forged-prev": lambda w: resigned(w, seq=4, prev=b"\xee" * 32),
    }


FORGERIES = _forgeries()
#: The fault each forgery must be named by (an EnvelopeError ``code``).
FORGERY_REASONS = {
    "bad-signature-next": "bad-signature",
    "wrong-signer-next": "bad-signature",
    "bad-signature-held-seq": "bad-signature",
    "truncated": "malformed",
    "bad-length": "malformed",
    "bad-version": "malformed",
    "seq-zero": "malformed",
    "oversized": "too-large",
    "other-board": "wrong-board",
    "forged-prev": "bad-signature",
}


@pytest.mark.parametrize("kind", list(FORGERIES))
def test_forged_or_malformed_envelope_drops_the_peer(kind: str) -> None:
    """A live session receiving a forged, malformed or misfiled envelope raises
    RemoteProtocolError naming the fault (the shell then drops that peer), and nothing of it
    is stored."""
    w = FeedWriter(BOARD)
    w.many(3)
    a, b = replica_with([w]), replica_with([w])
    conn = Connection(a, b)
    conn.run()
    forged = FORGERIES[kind](w)
    conn.inject(conn.a, Envelopes(0, 0, (forged,)))
    with pytest.raises(RemoteProtocolError) as info:
        conn.deliver(0)
    # Refusals reported by the replica close with the error's code; an error the session
    # raises itself carries the code on the exception.
    reason = FORGERY_REASONS[kind]
    assert reason in (info.value.close_reason, getattr(info.value, "code", None))
    assert b.feeds(BOARD.board_id) == expected_feeds([w])
    assert b.held_count(BOARD.board_id) == 0


def test_validly_signed_fork_is_not_the_relaying_peers_fault() -> None:
    """Two validly signed envelopes at one seq are the *author's* fault: the peer that
    relays the second is not dropped. B holds the author's feed 1..3 (as does A); C
    holds another version of seq 2 and 3 (the author's key on a second device). When C
    syncs with B, B refuses C's version, ends the author's feed before seq 2, and passes
    the proof to both C and A: all three end with the same feed (seq 1), and every
    connection stays up."""
    w = FeedWriter(BOARD)
    w.many(3)
    fork = FeedWriter(BOARD, w.author_key)
    fork.envelopes = w.envelopes[:1]
    fork.many(2, b"another history")
    a, b, c = replica_with([w]), replica_with([w]), replica_with([fork])
    mesh = Mesh([a, b, c], batch_bytes=900 * 1024, window=4)
    mesh.connect((0, 1))
    mesh.drain()
    mesh.connect((1, 2))
    mesh.drain()
    assert b.forked_authors == {(BOARD.board_id, w.author)}
    for replica in (a, b, c):
        assert replica.forked(BOARD.board_id) == {w.author: 2}, replica
        assert replica.feeds(BOARD.board_id) == {w.author: (w.envelopes[0].raw,)}
    assert all(not conn.a.closed and not conn.b.closed for conn in mesh.up())


def test_duplicate_delivery_is_harmless() -> None:
    """Envelopes the receiver already holds are counted as duplicates, not refused."""
    w = FeedWriter(BOARD)
    w.many(3)
    a, b = replica_with([w]), replica_with([w])
    conn = Connection(a, b)
    conn.run()
    conn.inject(conn.a, Envelopes(0, 0, tuple(e.raw for e in w.envelopes)))
    conn.deliver(0)
    assert kinds(conn.b.sent)[-1] == "Ack"
    events = conn.b.events
    assert events[-1].kind == "received" and events[-1].count == 0
    assert b.rejections == []


def _half_linked() -> tuple[SyncSession, Vector]:
    """A session that got the peer's Hello (digests differ) but not yet its Vector."""
    a, b = replica_with([]), replica_with([])
    a.write(BOARD.board_id, FeedWriter(BOARD).many(1))
    h = bytes(range(32))
    sa = SyncSession(a, initiator=True, handshake_hash=h)
    sb = SyncSession(b, initiator=False, handshake_hash=h)
    (hello_a,) = sa.start()
    (hello_b,) = sb.start()
    (vector_b,) = sb.handle(hello_a)
    assert kinds(sa.handle(hello_b)) == ["Vector"]
    assert isinstance(vector_b, Vector)
    return sa, vector_b


@pytest.mark.parametrize(
    "message",
    [
        Envelopes(0, 0, ()),  # before the peer's Vector
        Ack(0, 0),  # a batch never sent
        Vector(5, ()),  # a board index the peer never offered
        Envelopes(5, 0, ()),
        Ack(5, 0),
    ],
    ids=["envelopes-before-vector", "ack-never-sent", "vector-unshared", "envelopes-unshared",
         "ack-unshared"],
)
def test_protocol_violations_raise_remote_errors(message: Message) -> None:
    """Messages out of order, or naming boards never linked, are the peer's fault."""
    session, _ = _half_linked()
    with pytest.raises(RemoteProtocolError):
        if isinstance(message, Envelopes):
            session.begin_batch(message)
        else:
            session.handle(message)


def test_refused_is_a_notice_not_a_failure() -> None:
    """A Refused notice (about a board, or the whole connection) is recorded as an event;
    the session carries on, even before the Hello."""
    session, vector = _half_linked()
    assert session.handle(Refused(BOARD.board_id, "limit", "too many envelopes")) == []
    assert session.handle(Refused(b"", "busy", "")) == []
    assert [e.kind for e in session.events][-2:] == ["refused", "refused"]
    session.handle(vector)  # still works
    fresh = SyncSession(replica_with([]), initiator=True, handshake_hash=bytes(32))
    assert fresh.handle(Refused(b"", "busy", "")) == []


def test_second_vector_is_refused() -> None:
    """A board's vector comes once per session."""
    session, vector = _half_linked()
    session.handle(vector)
    with pytest.raises(RemoteProtocolError):
        session.handle(vector)


def test_message_before_hello_and_second_hello_are_refused() -> None:
    """The Hello comes first and only once."""
    session = SyncSession(replica_with([]), initiator=True, handshake_hash=bytes(32))
    with pytest.raises(RemoteProtocolError):
        session.handle(Vector(0, ()))
    session.start()
    session.handle(Hello(1, "node", False, ()))
    with pytest.raises(RemoteProtocolError):
        session.handle(Hello(1, "node", False, ()))


def test_forged_gap_envelope_does_not_get_an_honest_peer_dropped(tmp_path: Path) -> None:
    """With the real store: a forged envelope that arrives beyond a gap (from peer M) is held
    unverified; when honest peer H later fills the gap, the forgery's SignatureError must not
    be blamed on H. (Board.receive reports held envelopes' refusals to the current caller.)"""
    from p2paid import open_store
    from p2paid.node.replica import StoreReplica

    origin = open_store(tmp_path / "origin")
    board = origin.create_board("test")
    board.post_need("water")
    board.post_need("van")
    genuine = list(board.envelopes())
    assert len(genuine) == 2
    victim_store = open_store(tmp_path / "victim")
    victim_board = victim_store.join(board.invite())
    victim = StoreReplica(victim_store)
    # M offers a forged seq 2 (victim holds nothing of that author: a gap) ...
    first = victim.receive(victim_board.id, [_flip(genuine[1], HEADER_BYTES + 1)])
    assert first.rejected == []  # held unverified
    # ... then honest H offers the genuine seq 1 and 2.
    second = victim.receive(victim_board.id, genuine)
    assert second.stored == 2
    assert second.rejected == [], "a forgery M sent is reported as H's fault"
    for store in (origin, victim_store):
        store.close()


def test_largest_vector_the_decoder_accepts_fits_in_a_message() -> None:
    """Vector.MAX_ENTRIES entries with the widest seqs still fit in MAX_MESSAGE_BYTES, so a
    decodable vector is always sendable."""
    entries = tuple((i.to_bytes(32, "big"), 2**64 - 1, b"\xff" * Vector.TAG_BYTES)
                    for i in range(Vector.MAX_ENTRIES))
    assert len(encode_message(Vector(0, entries))) <= MAX_MESSAGE_BYTES


class _HugeBoardReplica(MemoryReplica):
    """A replica that claims more authors than one Vector message can name."""

    AUTHORS = Vector.MAX_ENTRIES + 5_000

    def vector(self, board_id: bytes) -> dict[bytes, int]:
        return {i.to_bytes(32, "big"): 1 + i % 7 for i in range(self.AUTHORS)}

    def heads(self, board_id: bytes) -> dict[bytes, FeedHead]:
        return {a: FeedHead(s, bytes(32)) for a, s in self.vector(board_id).items()}


def test_session_sends_a_sendable_vector_for_a_board_with_too_many_authors() -> None:
    """With more authors than Vector.MAX_ENTRIES, the session still sends a Vector that fits
    one message (omitting some authors only costs resends), instead of one the channel
    refuses with LocalProtocolError."""
    huge = _HugeBoardReplica()
    huge.add_board(BOARD)
    h = bytes(range(32))
    sa = SyncSession(huge, initiator=True, handshake_hash=h)
    sb = SyncSession(replica_with([]), initiator=False, handshake_hash=h)
    (hello_a,) = sa.start()
    (hello_b,) = sb.start()
    sb.handle(hello_a)
    (vector,) = sa.handle(hello_b)
    assert isinstance(vector, Vector)
    assert len(vector.entries) <= Vector.MAX_ENTRIES
    assert len(encode_message(vector)) <= MAX_MESSAGE_BYTES
    claimed = huge.vector(BOARD.board_id)
    assert all(claimed[a] == s for a, s, _ in vector.entries)  # never overstates


# --------------------------------------------------------------------- state machine


class SyncMachine(RuleBasedStateMachine):
    """Replicas write, bytes move in arbitrary slices, connections drop and come back.

    Board 0 is held by every replica; board 1 by a subset only (never leaks elsewhere).
    """

    N: ClassVar[int] = 2
    RELAY: ClassVar[int | None] = None  #: index of a relay replica (hub-and-spoke)
    BATCH_BYTES: ClassVar[int] = 2048
    WINDOW: ClassVar[int] = 2
    HELD_CAP: ClassVar[int] = 8

    def __init__(self) -> None:
        super().__init__()
        self.keys = [board_keys(0), board_keys(1)]
        self.members = [set(range(self.N)), {0, self.N - 1} if self.N > 2 else {0}]
        if self.RELAY is not None:
            self.members[1] = set(range(self.N))
        replicas = []
        for i in range(self.N):
            role = "relay" if i == self.RELAY else "node"
            replica = MemoryReplica(role, held_cap=self.HELD_CAP, name=f"r{i}")
            for b, keys in enumerate(self.keys):
                if i in self.members[b]:
                    replica.add_board(keys)
            replicas.append(replica)
        self.writers = {
            (i, b): FeedWriter(keys)
            for b, keys in enumerate(self.keys) for i in self.members[b] if i != self.RELAY
        }
        self.mesh = Mesh(replicas, batch_bytes=self.BATCH_BYTES, window=self.WINDOW)
        if self.RELAY is not None:  # spokes only: every node dials the relay
            self.mesh.pairs = [(i, self.RELAY) for i in range(self.N) if i != self.RELAY]
            self.mesh.links = dict.fromkeys(self.mesh.pairs)
        self.max_envelope = 0
        self.reconnects = 0
        self.steps_since_settle = 0
        for pair in self.mesh.pairs:
            self._connect(pair, True)

    # ---------------------------------------------------------------- helpers

    def _connect(self, pair: tuple[int, int], dialler_first: bool) -> None:
        if self.RELAY is not None:  # nodes dial relays, with to_relay
            self.mesh.connect(pair, True, a_to_relay=True)
        else:
            self.mesh.connect(pair, dialler_first)

    def _pair(self, index: int) -> tuple[int, int]:
        return self.mesh.pairs[index % len(self.mesh.pairs)]

    def settle(self) -> None:
        """Reconnect everything, deliver until quiet, and check full convergence."""
        self.steps_since_settle = 0
        for pair, conn in self.mesh.links.items():
            if conn is None:
                self._connect(pair, True)
        self.mesh.drain()
        for b, keys in enumerate(self.keys):
            want = {
                w.author: tuple(e.raw for e in w.envelopes)
                for (i, bb), w in self.writers.items() if bb == b and w.envelopes
            }
            for i in self.members[b]:
                replica = self.mesh.replicas[i]
                assert replica.feeds(keys.board_id) == want, f"{replica} board {b} differs"
                assert replica.held_count(keys.board_id) == 0
        for conn in self.mesh.up():
            for end in conn.ends:
                assert end.session is not None
                for board_id in end.session.shared_boards:
                    assert end.session.is_in_sync(board_id)
                assert all(end.in_flight(b) == 0 for b in end.batches_sent)
        # Coverage notes for --hypothesis-show-statistics.
        total = sum(len(w.envelopes) for w in self.writers.values())
        event(f"settled with {min(total // 10 * 10, 30)}+ envelopes")
        if any(e.max_in_flight >= self.WINDOW for c in self.mesh.up() for e in c.ends):
            event("a window filled up")
        if self.reconnects:
            event("reconnected after a drop")

    # ---------------------------------------------------------------- rules

    @rule(
        who=st.integers(0, 5),
        board=st.integers(0, 1),
        count=st.integers(1, 4),
        size=st.one_of(st.integers(0, 300), st.integers(300, 2500), st.just(40_000)),
    )
    def write(self, who: int, board: int, count: int, size: int) -> None:
        """A member posts ``count`` times: the next envelopes of its own feed, each pushed
        to all of its sessions at once (live sync)."""
        self.steps_since_settle += 1
        writers = [(i, b) for (i, b) in self.writers if b == board] or list(self.writers)
        i, b = writers[who % len(writers)]
        replica = self.mesh.replicas[i]
        for _ in range(count):
            env = self.writers[(i, b)].next(bytes(size))
            self.max_envelope = max(self.max_envelope, len(env.raw))
            assert replica.write(self.keys[b].board_id, [env]) == 1
            self.mesh.changed(replica)

    @rule(
        pair=st.integers(0, 2),
        direction=st.integers(0, 1),
        amount=st.one_of(st.none(), st.integers(1, 80), st.integers(1, 50_000)),
    )
    def deliver(self, pair: int, direction: int, amount: int | None) -> None:
        """A slice of the bytes in flight one way on one connection arrives."""
        self.steps_since_settle += 1
        conn = self.mesh.links[self._pair(pair)]
        if conn is not None:
            conn.deliver(direction, amount)

    @rule(pair=st.integers(0, 2), redial=st.booleans(), dialler_first=st.booleans())
    def drop(self, pair: int, redial: bool, dialler_first: bool) -> None:
        """A connection dies: everything in flight on it is lost (maybe redialled at once)."""
        self.steps_since_settle += 1
        key = self._pair(pair)
        self.mesh.drop(key)
        if redial:
            self.reconnects += 1
            self._connect(key, dialler_first)

    @rule(pair=st.integers(0, 2), dialler_first=st.booleans())
    def reconnect(self, pair: int, dialler_first: bool) -> None:
        """A dropped connection comes back: new handshake, new sessions, fresh Hellos."""
        key = self._pair(pair)
        if self.mesh.links[key] is None:
            self.reconnects += 1
            self._connect(key, dialler_first)

    @rule()
    def drain(self) -> None:
        """Everything in flight arrives, with every connection up: all replicas agree.
        (Not too often: interleavings need a backlog to be interesting.)"""
        if self.steps_since_settle >= 8:
            self.settle()

    def teardown(self) -> None:
        self.settle()

    # ---------------------------------------------------------------- invariants

    @invariant()
    def flow_control_bounds_what_is_in_flight(self) -> None:
        """Per link: at most ``window`` unacked batches (also checked at every send), so the
        bytes queued one way stay under window x (batch + one envelope) per shared board."""
        per_batch = self.BATCH_BYTES + self.max_envelope + 256  # msgpack, length, frame tags
        bound = len(self.keys) * self.WINDOW * per_batch + 2048  # + handshake, Hello, Vector, Acks
        for conn in self.mesh.up():
            for end in conn.ends:
                assert all(end.in_flight(b) <= self.WINDOW for b in end.batches_sent)
                assert len(end.outbox) <= bound, f"{len(end.outbox)} bytes queued > {bound}"

    @invariant()
    def buffers_are_bounded_and_nothing_honest_is_refused(self) -> None:
        for replica in self.mesh.replicas:
            assert replica.rejections == [], replica.rejections[:3]
            for keys in self.keys:
                if replica.holds(keys.board_id):
                    assert replica.held_count(keys.board_id) <= self.HELD_CAP

    @invariant()
    def feeds_are_prefixes_of_what_authors_wrote(self) -> None:
        """Every replica holds, per author, exactly a prefix of that author's feed."""
        writers = {(w.keys.board_id, w.author): w for w in self.writers.values()}
        for i, replica in enumerate(self.mesh.replicas):
            for b, keys in enumerate(self.keys):
                assert replica.holds(keys.board_id) == (i in self.members[b])
                if not replica.holds(keys.board_id):
                    continue
                for author, feed in replica.feeds(keys.board_id).items():
                    envs = writers[(keys.board_id, author)].envelopes
                    assert feed == tuple(e.raw for e in envs[: len(feed)])

    @invariant()
    def only_common_boards_are_linked(self) -> None:
        for (i, j), conn in self.mesh.links.items():
            if conn is None:
                continue
            common = {k.board_id for b, k in enumerate(self.keys)
                      if {i, j} <= self.members[b]}
            for end in conn.ends:
                if end.session is not None:
                    assert set(end.session.shared_boards) <= common


MACHINE_SETTINGS = settings(
    max_examples=50,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class TwoReplicas(SyncMachine):
    N = 2


class ThreeReplicasMesh(SyncMachine):
    N = 3


class TwoNodesViaRelay(SyncMachine):
    N = 3
    RELAY = 2


TestTwoReplicas = TwoReplicas.TestCase
TestTwoReplicas.settings = MACHINE_SETTINGS
TestThreeReplicasMesh = ThreeReplicasMesh.TestCase
TestThreeReplicasMesh.settings = MACHINE_SETTINGS
TestTwoNodesViaRelay = TwoNodesViaRelay.TestCase
TestTwoNodesViaRelay.settings = settings(MACHINE_SETTINGS, max_examples=30)


# --------------------------------------------------------------------- helpers' own checks


def test_memory_replica_refuses_forgeries_and_holds_gaps_like_the_store() -> None:
    """The test double is strict: a forged envelope is refused, a gap is held (bounded) and
    released when the gap fills, and a batch can never leave a hole in a feed."""
    w = FeedWriter(BOARD)
    envs = w.many(5)
    replica = MemoryReplica(held_cap=2)
    replica.add_board(BOARD)
    bad = replica.receive(BOARD.board_id, [_flip(envs[0].raw, HEADER_BYTES + 1)])
    assert bad.stored == 0 and isinstance(bad.rejected[0], SignatureError)
    held = replica.receive(BOARD.board_id, [e.raw for e in envs[2:]])
    assert held.stored == 0 and replica.held_count(BOARD.board_id) == 2  # cap: seq 5 dropped
    filled = replica.receive(BOARD.board_id, [e.raw for e in envs[:2]])
    assert filled.stored == 4 and replica.vector(BOARD.board_id) == {w.author: 4}
    assert replica.read(BOARD.board_id, w.author, 1, 1) == [envs[1].raw]  # at least one
    assert replica.read(BOARD.board_id, w.author, 0, 10**6) == [e.raw for e in envs[:4]]

