"""Checkpoints (SPEC 8a): an author's feed in one record, checked by relays and members.

What must hold: a checkpoint made by an author passes every check and gives a member
exactly the changes the envelopes would have; anything forged, altered, replayed
under another head, of another board, or carrying changes the rules refuse is refused
with a stable code, by relays where no secret is needed and by members otherwise, and
never crashes the checker; the vectors in ``checkpoints.json`` decode as written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from amcraft import COUNTER, SET, CraftedFeed, CraftedOp, int_value
from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2paid.automerge.chunk import parse_change
from p2paid.automerge.docchunk import inspect_document
from p2paid.board.checkpoint import check_checkpoint, seal_feed_checkpoint
from p2paid.board.document import BoardDocument, SectionWriter, new_item_id
from p2paid.board.model import ItemKind, item_fields, now_ms
from p2paid.core.checkpoint import (
    MAX_CHECKPOINT_BYTES,
    Checkpoint,
    open_checkpoint,
    seal_checkpoint,
    verify_checkpoint,
)
from p2paid.core.envelope import ZERO_HASH, Envelope, open_envelope, seal_envelope
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import BoardKeys, derive_board_keys, new_board_secret
from p2paid.errors import (
    ChangeMismatchError,
    CheckpointMismatchError,
    EnvelopeDecryptError,
    EnvelopeError,
    ForbiddenOpError,
    LocalProtocolError,
    MalformedEnvelopeError,
    OversizedEnvelopeError,
    OwnershipError,
    P2paidError,
    SignatureError,
    WrongBoardError,
)

VECTORS = json.loads((Path(__file__).parent.parent / "protocol" / "vectors"
                      / "checkpoints.json").read_text())

Edit = Callable[[SectionWriter], None]


class Author:
    """An honest member writing its own feed, as a node does (one document of its own)."""

    def __init__(self, keys: BoardKeys, key: AuthorKey | None = None) -> None:
        self.keys = keys
        self.key = key or AuthorKey.generate()
        self.cipher = ChaCha20Poly1305(keys.content_key)
        self.doc = BoardDocument(self.key.public)
        self.envelopes: list[Envelope] = []
        self.items: list[str] = []

    def write(self, edit: Edit) -> Envelope:
        written = self.doc.write(edit)
        assert written is not None
        prev = self.envelopes[-1].hash if self.envelopes else ZERO_HASH
        env = seal_envelope(board_id=self.keys.board_id, cipher=self.cipher,
                            author_key=self.key, seq=len(self.envelopes) + 1, prev=prev,
                            change=written[1])
        self.envelopes.append(env)
        return env

    def post(self, title: str) -> Envelope:
        item = new_item_id()
        self.items.append(item)
        fields = item_fields(ItemKind.NEED, title, now=now_ms(), category="water",
                             quantity=3, unit="litres")
        return self.write(lambda w: w.put_item(ItemKind.NEED, item, fields))

    def edit(self, index: int, title: str) -> Envelope:
        item = self.items[index % len(self.items)]
        return self.write(lambda w: w.update_item(ItemKind.NEED, item, {"title": title}))

    def checkpoint(self, upto: int | None = None) -> Checkpoint:
        head = self.envelopes[(upto or len(self.envelopes)) - 1]
        return seal_feed_checkpoint(cipher=self.cipher, author_key=self.key, head=head,
                                    own=self.doc.automerge)


@pytest.fixture
def keys() -> BoardKeys:
    return derive_board_keys(new_board_secret())


@pytest.fixture
def author(keys: BoardKeys) -> Author:
    a = Author(keys)
    for i in range(12):
        a.post(f"need {i}")
    a.edit(3, "need 3, now 5 litres")
    return a


def titles(doc: BoardDocument) -> list[str]:
    return sorted(item.title for item in doc.items())


def receive(changes: list[bytes]) -> BoardDocument:
    """A fresh member's document after applying ``changes`` in order."""
    doc = BoardDocument(AuthorKey.generate().public)
    applied = doc.add_changes([(parse_change(data), data) for data in changes])
    assert len(applied) == len(changes) and not doc.take_refused()
    return doc


def from_envelopes(author: Author, upto: int | None = None) -> BoardDocument:
    envs = author.envelopes[:upto]
    return receive([open_envelope(e, author.cipher) for e in envs])


# ---------------------------------------------------------------- honest checkpoints


def test_a_checkpoint_gives_a_member_exactly_the_feed(author: Author) -> None:
    cp = author.checkpoint()
    again = Checkpoint.decode(cp.raw)
    verify_checkpoint(again)
    checked = check_checkpoint(again, author.cipher)
    assert [h.seq for h, _ in checked.changes()] == list(range(1, 14))
    expected = [open_envelope(e, author.cipher) for e in author.envelopes]
    assert [data for _, data in checked.changes()] == expected
    assert titles(receive(expected)) == titles(from_envelopes(author))
    assert (cp.author, cp.seq, cp.head.hash) == (author.key.public, 13,
                                                 author.envelopes[-1].hash)


def test_a_checkpoint_is_a_fraction_of_the_envelopes(keys: BoardKeys) -> None:
    a = Author(keys)
    for i in range(500):
        a.post(f"Need #{i}: warm winter coats for a family of four")
    cp = a.checkpoint()
    as_envelopes = sum(len(e.raw) for e in a.envelopes)
    assert len(cp.raw) * 8 < as_envelopes, (len(cp.raw), as_envelopes)


def test_a_checkpoint_at_any_point_then_envelopes_converges(author: Author) -> None:
    whole = titles(from_envelopes(author))
    for upto in range(2, len(author.envelopes) + 1):
        checked = check_checkpoint(author.checkpoint(upto), author.cipher)
        rest = [open_envelope(e, author.cipher) for e in author.envelopes[upto:]]
        assert titles(receive([d for _, d in checked.changes()] + rest)) == whole, upto


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 50)), min_size=2, max_size=25),
       st.data())
def test_checkpoints_at_random_points_converge(steps: list[tuple[bool, int]],
                                               data: st.DataObject) -> None:
    """Whatever the feed and wherever it was checkpointed, a member who got the
    checkpoint and the envelopes after it reads what one who got every envelope reads."""
    a = Author(derive_board_keys(new_board_secret()))
    a.post("first")
    for post, n in steps:
        if post:
            a.post(f"need {n}")
        else:
            a.edit(n, f"edited {n} at {len(a.envelopes)}")
    upto = data.draw(st.integers(2, len(a.envelopes)))
    checked = check_checkpoint(Checkpoint.decode(a.checkpoint(upto).raw), a.cipher)
    rest = [open_envelope(e, a.cipher) for e in a.envelopes[upto:]]
    assert titles(receive([d for _, d in checked.changes()] + rest)) == titles(from_envelopes(a))


def test_the_content_is_a_document_of_the_author_alone(author: Author) -> None:
    content = open_checkpoint(author.checkpoint(), author.cipher)
    chunk = inspect_document(content, 1 << 24)
    assert chunk.actors == (author.key.public,)
    head_change = parse_change(open_envelope(author.envelopes[-1], author.cipher))
    assert chunk.heads == head_change.deps


# ---------------------------------------------------------------- what relays refuse


def _flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0x01]) + raw[at + 1:]


def test_any_altered_byte_is_refused_without_the_secret(author: Author) -> None:
    raw = author.checkpoint().raw
    for at in list(range(0, 200, 7)) + list(range(len(raw) - 200, len(raw), 5)):
        with pytest.raises(EnvelopeError):
            verify_checkpoint(Checkpoint.decode(_flip(raw, at)))


def test_a_checkpoint_signed_by_anyone_else_is_a_forgery(author: Author) -> None:
    content = open_checkpoint(author.checkpoint(), author.cipher)
    mallory = AuthorKey.generate()
    forged = Checkpoint.decode(
        _resign(seal_checkpoint(cipher=author.cipher, author_key=author.key,
                                head=author.envelopes[-1], content=content).raw, mallory))
    with pytest.raises(SignatureError):
        verify_checkpoint(forged)
    with pytest.raises(LocalProtocolError):  # nobody seals another author's checkpoint
        seal_checkpoint(cipher=author.cipher, author_key=mallory, head=author.envelopes[-1],
                        content=content)


def _resign(raw: bytes, key: AuthorKey) -> bytes:
    import hashlib
    body = raw[:-64]
    return body + key.sign(b"p2paid/1 checkpoint\x00" + hashlib.sha256(body).digest())


def test_a_head_with_a_forged_signature_is_refused(author: Author) -> None:
    head = author.envelopes[-1]
    bad_head = Envelope.decode(head.raw[:-1] + bytes([head.raw[-1] ^ 1]))
    content = open_checkpoint(author.checkpoint(), author.cipher)
    cp = seal_checkpoint(cipher=author.cipher, author_key=author.key, head=bad_head,
                         content=content)
    with pytest.raises(SignatureError):
        verify_checkpoint(cp)


def test_a_head_of_another_board_or_place_is_refused(author: Author, keys: BoardKeys) -> None:
    raw = author.checkpoint().raw
    other_board = raw[:5] + bytes(32) + raw[37:]
    with pytest.raises(WrongBoardError):
        Checkpoint.decode(_resign(other_board[:-64] + bytes(64), author.key))
    for seq in (12, 14):  # the envelope at 13 named as another seq's head
        moved = raw[:69] + seq.to_bytes(8, "big") + raw[77:]
        with pytest.raises(MalformedEnvelopeError, match="head"):
            Checkpoint.decode(_resign(moved, author.key))


@pytest.mark.parametrize("cut", [0, 1, 50, 200, -65, -1])
def test_truncated_checkpoints_are_malformed(author: Author, cut: int) -> None:
    raw = author.checkpoint().raw
    with pytest.raises(MalformedEnvelopeError):
        Checkpoint.decode(raw[:cut])
    with pytest.raises(MalformedEnvelopeError):
        Checkpoint.decode(raw + b"\x00")


def test_a_newer_version_names_itself_and_oversize_is_too_large(author: Author) -> None:
    raw = author.checkpoint().raw
    with pytest.raises(MalformedEnvelopeError, match=r"version 2 is not supported.*newer"):
        Checkpoint.decode(raw[:4] + b"\x02" + raw[5:])
    with pytest.raises(MalformedEnvelopeError, match="bad magic"):
        Checkpoint.decode(b"P2CX" + raw[4:])
    with pytest.raises(OversizedEnvelopeError):
        Checkpoint.decode(raw + bytes(MAX_CHECKPOINT_BYTES))


def test_a_seq_1_checkpoint_cannot_be_made_or_read(author: Author) -> None:
    with pytest.raises(LocalProtocolError):
        seal_checkpoint(cipher=author.cipher, author_key=author.key,
                        head=author.envelopes[0], content=b"")
    raw = author.checkpoint().raw
    at_one = _resign(raw[:69] + (1).to_bytes(8, "big") + raw[77:-64], author.key)
    with pytest.raises(MalformedEnvelopeError, match="seq out of range"):
        Checkpoint.decode(at_one)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_raises_only_envelope_errors(raw: bytes) -> None:
    for data in (raw, b"P2CK\x01" + raw):
        try:
            verify_checkpoint(Checkpoint.decode(data))
        except EnvelopeError:
            continue
        raise AssertionError("garbage decoded and verified")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.data())
def test_resigned_byte_flips_never_pass_a_member(author: Author, data: st.DataObject) -> None:
    """The author itself altering any byte (and signing again) never gets past a member
    unless the result decodes to the very same feed."""
    raw = author.checkpoint().raw
    at = data.draw(st.integers(0, len(raw) - 65))
    flipped = _resign(_flip(raw, at)[:-64] + bytes(64), author.key)
    try:
        cp = Checkpoint.decode(flipped)
        verify_checkpoint(cp)
        checked = check_checkpoint(cp, author.cipher)
    except P2paidError:
        return
    assert [d for _, d in checked.changes()] == [open_envelope(e, author.cipher)
                                                for e in author.envelopes]


# ---------------------------------------------------------------- what members refuse


def test_a_member_without_the_key_cannot_open_it(author: Author) -> None:
    stranger = ChaCha20Poly1305(derive_board_keys(new_board_secret()).content_key)
    with pytest.raises(EnvelopeDecryptError):
        check_checkpoint(author.checkpoint(), stranger)


def test_another_history_under_the_head_is_refused(author: Author, keys: BoardKeys) -> None:
    """The author signs a checkpoint whose content is not what its head depends on (so
    members holding it and members holding the envelopes would read different feeds)."""
    twin = Author(keys, author.key)  # the same key, another history
    for i in range(12):
        twin.post(f"other {i}")
    content = open_checkpoint(twin.checkpoint(12), twin.cipher)
    cp = seal_checkpoint(cipher=author.cipher, author_key=author.key,
                         head=author.envelopes[12], content=content)
    verify_checkpoint(cp)  # relays cannot tell
    with pytest.raises(CheckpointMismatchError):
        check_checkpoint(cp, author.cipher)


def test_a_shorter_history_under_the_head_is_refused(author: Author) -> None:
    content = open_checkpoint(author.checkpoint(12), author.cipher)
    cp = seal_checkpoint(cipher=author.cipher, author_key=author.key,
                         head=author.envelopes[12], content=content)
    with pytest.raises(CheckpointMismatchError):
        check_checkpoint(cp, author.cipher)


def test_content_that_is_not_a_document_is_refused(author: Author) -> None:
    for content in (b"", b"\x85\x6f\x4a\x83" + bytes(20), open_envelope(author.envelopes[0],
                                                                        author.cipher)):
        cp = seal_checkpoint(cipher=author.cipher, author_key=author.key,
                             head=author.envelopes[-1], content=content)
        with pytest.raises(ChangeMismatchError):
            check_checkpoint(cp, author.cipher)


def _hostile(keys: BoardKeys, bad_ops: Callable[[CraftedFeed], list[CraftedOp]]
             ) -> tuple[Checkpoint, ChaCha20Poly1305, list[bytes]]:
    """A hostile member's feed: an honest first change, one its ops make bad, and an
    honest head; returned as a checkpoint of all three and as envelopes."""
    feed = CraftedFeed(keys.board_id, keys.content_key, AuthorKey.generate())
    chunks, envelopes = [], []
    for ops in (feed.first(), bad_ops(feed)):
        chunks.append(feed.chunk(ops))
        envelopes.append(feed.seal(chunks[-1]))
    head = feed.seal(feed.chunk(feed.need_ops("ab" * 16, "honest", now=1)))
    content = bytes(Document.load(b"".join(chunks)).save())
    cp = seal_checkpoint(cipher=feed.cipher, author_key=feed.key,
                         head=Envelope.decode(head), content=content)
    return cp, feed.cipher, [*envelopes, head]


def test_changes_the_rules_refuse_are_refused_inside_a_checkpoint(keys: BoardKeys) -> None:
    """A change refused in an envelope is refused in a checkpoint: members who got the
    feed either way then hold the same (the part before the bad change)."""
    def counter(feed: CraftedFeed) -> list[CraftedOp]:
        return [CraftedOp(SET, (0, feed.SECTION), "n", (COUNTER, int_value(1)[1]))]

    def root(feed: CraftedFeed) -> list[CraftedOp]:
        return [CraftedOp(SET, None, "someone-else", int_value(1))]

    for bad in (counter, root):
        cp, cipher, _ = _hostile(keys, bad)
        verify_checkpoint(cp)
        with pytest.raises(ForbiddenOpError):
            check_checkpoint(cp, cipher)


def test_content_naming_another_member_is_refused(author: Author, keys: BoardKeys) -> None:
    other = Author(keys)
    other.post("someone else's need")
    doc = Document.load(b"".join(open_envelope(e, c.cipher) for c in (author, other)
                                 for e in c.envelopes[:12 if c is author else 1]))
    cp = seal_checkpoint(cipher=author.cipher, author_key=author.key,
                         head=author.envelopes[12], content=bytes(doc.save()))
    with pytest.raises(OwnershipError):
        check_checkpoint(cp, author.cipher)


# ---------------------------------------------------------------- the vectors


def test_vector_checkpoint_decodes_verifies_and_opens() -> None:
    keys = derive_board_keys(bytes.fromhex(VECTORS["board_secret"]))
    cipher = ChaCha20Poly1305(keys.content_key)
    cp = Checkpoint.decode(bytes.fromhex(VECTORS["checkpoint"]))
    verify_checkpoint(cp)
    assert cp.hash.hex() == VECTORS["checkpoint_hash"]
    assert cp.signing_input().hex() == VECTORS["signing_input"]
    assert open_checkpoint(cp, cipher).hex() == VECTORS["content"]
    checked = check_checkpoint(cp, cipher)
    assert [h.seq for h, _ in checked.changes()] == [1, 2]


@pytest.mark.parametrize("case", VECTORS["refuse"], ids=lambda c: c["code"])
def test_vector_refusals(case: dict[str, str]) -> None:
    cipher = ChaCha20Poly1305(derive_board_keys(bytes.fromhex(VECTORS["board_secret"]))
                              .content_key)
    with pytest.raises(EnvelopeError) as info:
        cp = Checkpoint.decode(bytes.fromhex(case["checkpoint"]))
        verify_checkpoint(cp)
        assert case["by"] == "members", "every replica refuses it without the secret"
        check_checkpoint(cp, cipher)
    assert info.value.code == case["code"]
