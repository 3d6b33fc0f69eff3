"""Checkpoints in sync (SPEC 8a.4, 12.3): stores, sessions, relays, restarts.

What must hold: a peer that holds nothing of an author gets the author's checkpoint in
place of its envelopes, stores it and reads exactly the feed the envelopes give; the
feed then grows by envelopes as usual; a peer that holds part of the feed, or a side
that does not take checkpoints, gets envelopes; a relay stores a checkpoint blind and
serves it; a restart without a snapshot rebuilds from the checkpoint; a forged
checkpoint drops the peer that sent it, a checkpoint of another history is refused
without dropping anyone, and a fork at the head is proven with two envelopes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.bench.main import make_feed_and_document
from p2paid.board.checkpoint import (
    CheckedCheckpoint,
    adoptable_document,
    check_checkpoint,
    seal_feed_checkpoint,
)
from p2paid.board.store import Store, open_store
from p2paid.core.checkpoint import Checkpoint, open_checkpoint, seal_checkpoint
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret
from p2paid.core.pair import ConnectionPair
from p2paid.core.replication import PEER_FAULTS
from p2paid.core.wire import Checkpoints
from p2paid.errors import CheckpointMismatchError, RemoteProtocolError, SignatureError
from p2paid.node.replica import StoreReplica
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.storage.sqlite import Database

N = 300


class Feed:
    """An author's feed of ``N`` needs and its checkpoint, made as its node makes them."""

    def __init__(self, invite: Invite, n: int = N) -> None:
        self.keys = derive_board_keys(invite.secret)
        self.key = AuthorKey.generate()
        self.cipher = ChaCha20Poly1305(self.keys.content_key)
        self.envelopes, self.doc = make_feed_and_document(self.keys, self.key, n)
        self.checkpoint = self.seal(n)

    def seal(self, upto: int) -> Checkpoint:
        return seal_feed_checkpoint(cipher=self.cipher, author_key=self.key,
                                    head=self.envelopes[upto - 1], own=self.doc.automerge)

    @property
    def raw(self) -> list[bytes]:
        return [e.raw for e in self.envelopes]


@pytest.fixture
def invite() -> Invite:
    return Invite(new_board_secret(), "Aid")


@pytest.fixture
def feed(invite: Invite) -> Feed:
    return Feed(invite)


@pytest.fixture
def stores(tmp_path: Path, invite: Invite) -> Iterator[tuple[Store, Store]]:
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        a.join(invite)
        b.join(invite)
        yield a, b


def titles(store: Store) -> list[str]:
    return sorted(i.title for i in store.board().items())


def rows(store: Store) -> int:
    return sum(1 for _ in store.board().log.envelopes())


class Plain:
    """A replica without ``checkpoint_for``: its Hello says version 1 (it takes no
    checkpoints)."""

    def __init__(self, inner: StoreReplica) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> object:
        if name == "checkpoint_for":
            raise AttributeError(name)
        return getattr(self._inner, name)


def sync(a: Store | RelayReplica, b: Store | RelayReplica) -> ConnectionPair:
    pair = ConnectionPair(a if isinstance(a, RelayReplica) else StoreReplica(a),
                          b if isinstance(b, RelayReplica) else StoreReplica(b),
                          a_options={"to_relay": isinstance(b, RelayReplica)})
    pair.flights()
    for store in (a, b):
        if isinstance(store, Store):
            store.board().flush()
    return pair


def test_an_empty_peer_gets_the_checkpoint_in_place_of_the_envelopes(
        stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])
    pair = sync(a, b)
    assert titles(b) == titles(a) and len(titles(b)) == N
    assert rows(b) == 1  # the head; the rest lives in the checkpoint
    assert b.board().log.checkpoint(feed.key.public) == feed.checkpoint.raw
    assert pair.bytes_delivered < sum(len(r) for r in feed.raw) / 4
    head = b.board().log.heads()[feed.key.public]
    assert (head.seq, head.hash) == (N, feed.envelopes[-1].hash)


def test_the_feed_grows_by_envelopes_after_the_checkpoint(
        stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw[:200], feed.seal(200).raw])
    sync(a, b)
    a.board().receive(feed.raw[200:])
    sync(a, b)
    assert titles(b) == titles(a) and len(titles(b)) == N
    assert rows(b) == N - 199


def test_a_peer_holding_part_of_the_feed_gets_envelopes(
        stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])
    b.board().receive(feed.raw[:100])
    sync(a, b)
    assert titles(b) == titles(a)
    assert rows(b) == N and b.board().log.checkpoint(feed.key.public) is None


def test_a_checkpoint_based_peer_serves_what_it_can(tmp_path: Path, invite: Invite,
                                                    stores: tuple[Store, Store],
                                                    feed: Feed) -> None:
    """B holds the feed from a checkpoint: a third, empty peer gets the checkpoint from B;
    one holding part of the feed gets it too (B stores nothing before the head to send
    as envelopes), and takes it as the continuation of what it holds: the excess on
    the wire is the part it had, measured here below the checkpoint's size."""
    a, b = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])
    sync(a, b)
    with open_store(tmp_path / "c") as c, open_store(tmp_path / "d") as d:
        c.join(invite)
        d.join(invite).receive(feed.raw[:10])
        sync(b, c)
        assert titles(c) == titles(a)
        pair = sync(b, d)
        assert titles(d) == titles(a)
        assert rows(d) == 11  # (its ten envelopes, then the head; 11..N-1 in the checkpoint)
        assert pair.bytes_delivered < len(feed.checkpoint.raw) + 2048
        d.board().post_need("after the continuation", category="water")
        later = Feed(invite, 3)
        d.board().receive(later.raw)
        d.board().flush()
        assert len(titles(d)) == N + 4


def test_a_checkpoint_of_another_history_does_not_continue_a_feed(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    """A member holding part of one history of an author is offered a checkpoint of
    another history signed by the same author (a fork the checkpoint hides): it refuses
    it and keeps what it held; a blind relay holding part of a feed is not sent one."""
    a, b = stores
    twin = Feed(invite)  # (another history, made with the same author key)
    twin.key = feed.key
    twin.envelopes, twin.doc = make_feed_and_document(feed.keys, feed.key, N, 7 * N)
    twin.checkpoint = twin.seal(N)
    a.board().receive([twin.checkpoint.raw])
    b.board().receive(feed.raw[:10])
    sync(a, b)
    assert rows(b) == 10 and len(titles(b)) == 10
    assert b.board().log.checkpoint(feed.key.public) is None
    db = Database(tmp_path / "relay")
    try:
        relay = RelayReplica.open(db, RelayLimits())
        sync(b, relay)
        assert sum(1 for _ in db.envelopes(feed.keys.board_id)) == 10
        pair = sync(a, relay)
        assert pair.bytes_delivered < len(twin.checkpoint.raw)
        assert db.checkpoint(feed.keys.board_id, feed.key.public) is None
    finally:
        db.close()


def test_a_restart_without_snapshot_rebuilds_from_the_checkpoint(
        tmp_path: Path, invite: Invite, feed: Feed) -> None:
    with open_store(tmp_path / "a") as a, open_store(tmp_path / "b") as b:
        a.join(invite).receive([*feed.raw, feed.checkpoint.raw])
        b.join(invite)
        sync(a, b)
        expected = titles(b)
        b.board().save_snapshot()
    db = Database(tmp_path / "b")
    try:
        with db.write():
            db.delete_snapshot(feed.keys.board_id)
    finally:
        db.close()
    with open_store(tmp_path / "b") as again:
        assert titles(again) == expected and len(expected) == N


def test_a_relay_stores_a_checkpoint_blind_and_serves_it(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])
    db = Database(tmp_path / "relay")
    try:
        relay = RelayReplica.open(db, RelayLimits())
        sync(a, relay)
        assert db.checkpoint(feed.keys.board_id, feed.key.public) is not None
        assert sum(1 for _ in db.envelopes(feed.keys.board_id)) == 1
        sync(b, relay)
        assert titles(b) == titles(a)
        assert rows(b) == 1
    finally:
        db.close()


def test_a_side_that_does_not_take_checkpoints_gets_envelopes(
        stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])

    pair = ConnectionPair(StoreReplica(a), Plain(StoreReplica(b)))  # type: ignore[arg-type]
    pair.flights()
    b.board().flush()
    assert titles(b) == titles(a) and rows(b) == N


def test_a_forged_checkpoint_is_the_senders_fault_and_stores_nothing(
        stores: tuple[Store, Store], feed: Feed) -> None:
    _, b = stores
    raw = feed.checkpoint.raw
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    report = b.board().receive([forged])
    assert [type(r.error) for r in report.rejected] == [SignatureError]
    assert isinstance(report.rejected[0].error, PEER_FAULTS)  # a session drops its sender
    assert rows(b) == 0 and b.board().log.checkpoint(feed.key.public) is None


def test_another_history_under_a_valid_head_is_refused_and_the_envelopes_still_come(
        stores: tuple[Store, Store], feed: Feed) -> None:
    _, b = stores
    twin_envelopes, twin_doc = make_feed_and_document(feed.keys, feed.key, N)  # same key
    twin = seal_feed_checkpoint(cipher=feed.cipher, author_key=feed.key,
                                head=twin_envelopes[-1], own=twin_doc.automerge)
    bad = seal_checkpoint(cipher=feed.cipher, author_key=feed.key, head=feed.envelopes[-1],
                          content=open_checkpoint(twin, feed.cipher))
    report = b.board().receive([bad.raw])
    assert [type(r.error) for r in report.rejected] == [CheckpointMismatchError]
    assert rows(b) == 0
    b.board().receive(feed.raw)  # the head was not branded: the envelopes are taken
    assert rows(b) == N


def test_a_checkpoint_whose_head_differs_from_the_held_one_proves_a_fork(
        stores: tuple[Store, Store], feed: Feed) -> None:
    _, b = stores
    b.board().receive(feed.raw)
    other_envelopes, other_doc = make_feed_and_document(feed.keys, feed.key, N)
    other = seal_feed_checkpoint(cipher=feed.cipher, author_key=feed.key,
                                 head=other_envelopes[-1], own=other_doc.automerge)
    report = b.board().receive([other.raw])
    assert report.forks and report.forks[0].seq == N
    assert b.board().log.forked == {feed.key.public: N}


def test_the_node_checkpoints_its_own_feed(stores: tuple[Store, Store]) -> None:
    a, b = stores
    board = a.board()
    for i in range(70):
        board.post_need(f"need {i}", category="water")
    assert board.log.maybe_checkpoint()
    assert not board.log.maybe_checkpoint()  # nothing new since
    sync(a, b)
    assert titles(b) == titles(a) and rows(b) == 1


def test_a_bundle_carries_the_checkpoint_and_a_fresh_store_reads_it(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive([*feed.raw[:250], feed.seal(250).raw])
    a.board().receive(feed.raw[250:])
    path = tmp_path / "feed.p2paid"
    count = a.export_bundle(path)
    data = path.read_bytes()
    assert data[8] == 2 and count == 1 + 50  # the checkpoint, then the envelopes after it
    assert len(data) < sum(len(r) for r in feed.raw) / 4
    b.import_bundle(path)
    assert titles(b) == titles(a) and rows(b) == 51
    assert b.import_bundle(path).boards[feed.keys.board_id].accepted == 0  # twice: nothing


def test_a_carrier_keeps_a_checkpoint_blind_and_reads_it_once_it_joins(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    a, _ = stores
    a.board().receive([*feed.raw, feed.checkpoint.raw])
    path = tmp_path / "feed.p2paid"
    a.export_bundle(path)
    with open_store(tmp_path / "carrier") as carrier:
        carrier.import_bundle(path)
        assert carrier.boards() == []
        carrier.join(invite)
        assert titles(carrier) == titles(a)


def test_a_bundle_without_checkpoints_stays_version_1(
        tmp_path: Path, stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    a.board().receive(feed.raw[:20])
    path = tmp_path / "feed.p2paid"
    assert a.export_bundle(path) == 20 and path.read_bytes()[8] == 1
    b.import_bundle(path)
    assert titles(b) == titles(a)


def test_a_board_with_other_feeds_applies_a_checkpoint_and_one_without_adopts_it(
        invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    """An empty board takes a checkpoint's document as its own; a board holding another
    author's feed applies the checkpoint's changes: both read the same, and both go on
    taking envelopes and local posts."""
    a, b = stores
    other = Feed(invite, 20)
    b.board().receive(other.raw)
    a.board().receive([feed.checkpoint.raw])  # adopted: a held nothing
    b.board().receive([feed.checkpoint.raw])  # applied
    for store in (a, b):
        store.board().flush()
        store.board().post_need("after the checkpoint", category="water")
    assert len(titles(a)) == N + 1 and len(titles(b)) == N + 21
    assert set(titles(a)) <= set(titles(b))


def test_an_empty_board_takes_many_authors_checkpoints_as_one_document(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints of several authors arriving together on an empty board are loaded as
    one document (not applied change by change); the board reads as the envelopes' would,
    survives a restart, and goes on taking envelopes and posts."""
    import p2paid.board.log as log

    loaded: list[int] = []

    def spy(checked: list[CheckedCheckpoint]) -> Document | None:
        document = adoptable_document(checked)
        loaded.append(len(checked) if document is not None else 0)
        return document

    monkeypatch.setattr(log, "adoptable_document", spy)
    a, b = stores
    feeds = [Feed(invite, 12 + i) for i in range(4)]
    a.board().receive([f.checkpoint.raw for f in feeds])
    assert loaded == [4]
    a.board().flush()
    b.board().receive([e for f in feeds for e in f.raw])
    b.board().flush()
    assert titles(a) == titles(b) and len(titles(a)) == sum(12 + i for i in range(4))
    a.board().post_need("after the checkpoints", category="water")
    a.close()
    with open_store(tmp_path / "a") as again:
        assert len(titles(again)) == len(titles(b)) + 1
        later = Feed(invite, 3)
        again.board().receive(later.raw)
        again.board().flush()
        assert len(titles(again)) == len(titles(b)) + 4


def test_past_the_stash_cap_checkpoints_load_at_once_and_later_ones_apply(
        invite: Invite, stores: tuple[Store, Store], monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the bytes an empty board keeps to load as one, checkpoints load at once (so a
    long sync does not hold them all); later ones then apply their changes. The board
    reads as the envelopes' would either way."""
    monkeypatch.setattr("p2paid.board.log.MAX_STASHED_BYTES", 1)
    a, b = stores
    feeds = [Feed(invite, 12 + i) for i in range(4)]
    a.board().receive([f.checkpoint.raw for f in feeds[:2]], defer_apply=True)
    assert a.board().log.applied_count > 0  # (loaded at once, past the cap)
    a.board().receive([f.checkpoint.raw for f in feeds[2:]], defer_apply=True)
    a.board().flush()
    b.board().receive([e for f in feeds for e in f.raw])
    b.board().flush()
    assert titles(a) == titles(b) and len(titles(a)) == sum(12 + i for i in range(4))


def test_checkpoints_checked_ahead_are_not_checked_again(
        stores: tuple[Store, Store], feed: Feed, invite: Invite,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A node checks a batch's checkpoints in a worker thread before receiving it
    (precheck); the receive then uses those verdicts, refusals included, and stores
    exactly what it would have without them."""
    calls: list[bytes] = []

    def counted(cp: Checkpoint, cipher: ChaCha20Poly1305) -> CheckedCheckpoint:
        calls.append(cp.author)
        return check_checkpoint(cp, cipher)

    monkeypatch.setattr("p2paid.board.log.check_checkpoint", counted)
    a, _ = stores
    other = Feed(invite, 5)
    content = open_checkpoint(other.checkpoint, other.cipher)
    forged = seal_checkpoint(cipher=other.cipher, author_key=other.key,
                             head=other.envelopes[2], content=content)  # (another seq)
    replica = StoreReplica(a)
    batch = [feed.checkpoint.raw, forged.raw]
    replica.precheck(a.board().id, batch)
    assert not calls, "a board not open yet is not read from a worker thread"
    replica.vector(a.board().id)  # (a session opens it first, in its own thread)
    replica.precheck(a.board().id, batch)
    assert len(calls) == 2
    replica.receive(a.board().id, batch)
    assert len(calls) == 2, "the receive checked a checkpoint again"
    assert len(titles(a)) == N and rows(a) == 1


# ---------------------------------------------------------------- hostile peers


def test_a_peer_sending_a_forged_checkpoint_is_dropped_and_nothing_is_stored(
        stores: tuple[Store, Store], feed: Feed) -> None:
    """A peer (not the author) alters a valid checkpoint and sends it as a Checkpoints
    batch: the receiver closes the connection with the refusal code and stores nothing."""
    a, b = stores
    pair = ConnectionPair(StoreReplica(a), StoreReplica(b))
    pair.flights()
    raw = feed.checkpoint.raw
    forged = raw[:-1] + bytes([raw[-1] ^ 1])
    pair.inject(pair.a, Checkpoints(0, 1_000_000, (forged,)))
    with pytest.raises(RemoteProtocolError) as dropped:
        pair.flights()
    assert dropped.value.close_reason == "bad-signature"
    assert pair.b.conn.close_reason == "bad-signature"
    assert rows(b) == 0 and b.board().log.checkpoint(feed.key.public) is None


def test_checkpoints_of_another_board_or_to_a_side_that_asked_none_are_refused(
        tmp_path: Path, invite: Invite, stores: tuple[Store, Store], feed: Feed) -> None:
    a, b = stores
    other = Feed(Invite(new_board_secret(), "other"), 5)
    pair = ConnectionPair(StoreReplica(a), StoreReplica(b))
    pair.flights()
    pair.inject(pair.a, Checkpoints(0, 1_000_000, (other.checkpoint.raw,)))
    with pytest.raises(RemoteProtocolError):
        pair.flights()
    assert pair.b.conn.close_reason == "wrong-board"

    plain = ConnectionPair(StoreReplica(a), Plain(StoreReplica(b)))  # type: ignore[arg-type]
    plain.flights()
    plain.inject(plain.a, Checkpoints(0, 1_000_000, (feed.checkpoint.raw,)))
    with pytest.raises(RemoteProtocolError):
        plain.flights()
    assert plain.b.conn.close_reason == "protocol-error"
    assert rows(b) == 0
