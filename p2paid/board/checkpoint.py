"""A member's side of checkpoints: sealing one of its own feed, and checking one it receives.

:mod:`p2paid.core.checkpoint` holds the format and the checks anyone can make. Here
are the two that need the board's secret and Automerge (``protocol/SPEC.md`` 8a):

* :func:`seal_feed_checkpoint`: the author saves its changes ``1..N-1`` (a fork of
  its own document at change ``N-1``: with the own-feed rule it holds nothing else)
  and seals them with its envelope ``N``.
* :func:`check_checkpoint`: a member decrypts the content and accepts it only if it
  is exactly the history the head's change depends on, and if every change in it
  passes the same rules as a change arriving in an envelope
  (:mod:`p2paid.automerge.rules`), so a feed arriving either way is accepted or
  refused alike. The checks that cost nothing come first (the actor table and the
  heads, read from the chunk's header by :mod:`p2paid.automerge.docchunk`), then the
  columns, read once as whole lists (:mod:`p2paid.automerge.feedproof`): for an honest
  feed they prove the rules hold for every change, without Automerge handing each one
  back. Automerge loads the content only after them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final, final

from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader, parse_change
from p2paid.automerge.docchunk import inspect_document
from p2paid.automerge.feedproof import FeedProof, prove_feed
from p2paid.automerge.rules import AuthorState, FeedRules, check_change
from p2paid.core.checkpoint import (
    MAX_CHECKPOINT_OPS,
    Checkpoint,
    open_checkpoint,
    seal_checkpoint,
)
from p2paid.core.envelope import Envelope, open_envelope
from p2paid.core.identity import AuthorKey
from p2paid.errors import (
    ChangeMismatchError,
    CheckpointMismatchError,
    DependencyError,
    LocalProtocolError,
    OwnershipError,
)

__all__ = [
    "CheckedCheckpoint",
    "adoptable_document",
    "check_checkpoint",
    "check_continuation",
    "feed_content",
    "seal_feed_checkpoint",
]

#: The most a checkpoint's content may take once Automerge's columns are inflated
#: (a 10,000-need feed takes about 1.8 MB).
MAX_INFLATED_BYTES: Final = 64 * 1024 * 1024


@final
class CheckedCheckpoint:
    """A checkpoint that passed every member check.

    Attributes:
        checkpoint: the checkpoint.
        content: its content, decrypted (Automerge's saved document).
        document: Automerge's document of the author's changes ``1..seq-1`` (the
            head's not applied).
        head: the head's change, parsed, and its bytes.
    """

    __slots__ = ("_changes", "_document", "_state", "_state_of", "checkpoint", "content",
                 "head")

    def __init__(self, checkpoint: Checkpoint, content: bytes, document: Document,
                 head: tuple[ChangeHeader, bytes], state_of: Callable[[], AuthorState],
                 changes: list[tuple[ChangeHeader, bytes]] | None = None) -> None:
        self.checkpoint = checkpoint
        self.content = content
        self._document: Document | None = document
        self.head = head
        self._state_of = state_of
        self._state: AuthorState | None = None
        self._changes = changes

    @property
    def document(self) -> Document:
        """Automerge's document of the content (loaded again if :meth:`release` let it go)."""
        if self._document is None:
            self._document = _load(self.content)
        return self._document

    def release(self) -> None:
        """Let the loaded document go (a checkpoint waiting to be loaded with others
        needs only its bytes; a document takes several times as much memory)."""
        self._document = None

    @property
    def max_op(self) -> int:
        """The last op counter of change ``seq - 1`` (the head's start less one)."""
        return self.head[0].start_op - 1

    def state(self) -> AuthorState:
        """What the rules know of the author after change ``seq`` (built when first
        asked: a member needs it only when the author's next change arrives)."""
        if self._state is None:
            self._state = self._state_of()
        return self._state

    def changes(self) -> list[tuple[ChangeHeader, bytes]]:
        """Every change, ``1..seq`` in order, the head's last, as received envelopes'
        would be (read back from the document when first asked: a board that takes
        the document as its own needs none of them)."""
        if self._changes is None:
            changes = []
            for change in self.document.get_changes([]):
                data = bytes(change.bytes)
                changes.append((parse_change(data), data))
            changes.append(self.head)
            self._changes = changes
        return self._changes


def feed_content(own: Document, parent: bytes) -> bytes:
    """Automerge's saved form of an author's changes up to the one whose hash is ``parent``.

    Args:
        own: a document that holds the author's changes (and, by the own-feed rule,
            nothing they depend on but the author's own).
    """
    fork: Any = own.fork_at([parent])  # type: ignore[attr-defined]  # (not in the stubs)
    return bytes(fork.save())


def seal_feed_checkpoint(*, cipher: ChaCha20Poly1305, author_key: AuthorKey, head: Envelope,
                         own: Document) -> Checkpoint:
    """A checkpoint of the author's feed up to its envelope ``head`` (its newest, say).

    Raises:
        LocalProtocolError: ``head`` is not the author's, does not decrypt to a change
            ``own`` can place, or the checkpoint would be too large.
    """
    try:
        change = parse_change(open_envelope(head, cipher))
    except Exception as exc:  # (a local bug or a wrong key; nothing remote)
        raise LocalProtocolError(f"cannot checkpoint up to seq {head.seq}: {exc}") from exc
    if len(change.deps) != 1:
        raise LocalProtocolError("a checkpoint's head must depend on exactly one change")
    if change.start_op - 1 > MAX_CHECKPOINT_OPS:
        raise LocalProtocolError(f"a checkpoint up to seq {head.seq} would hold "
                                 f"{change.start_op - 1:,} ops, more than {MAX_CHECKPOINT_OPS:,}")
    try:
        content = feed_content(own, change.deps[0])
    except Exception as exc:
        raise LocalProtocolError(f"cannot save the feed up to seq {head.seq - 1}: {exc}") from exc
    return seal_checkpoint(cipher=cipher, author_key=author_key, head=head, content=content)


def _load(content: bytes) -> Document:
    """Automerge's load of checked bytes; any refusal or panic is the author's fault."""
    try:
        return Document.load(content)
    except Exception as exc:
        raise ChangeMismatchError(f"Automerge cannot load the checkpoint: {exc}") from exc
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        raise ChangeMismatchError(f"Automerge panicked loading the checkpoint: {exc}") from exc


def check_checkpoint(checkpoint: Checkpoint, cipher: ChaCha20Poly1305) -> CheckedCheckpoint:
    """Every member check of a checkpoint whose signatures were verified
    (:func:`p2paid.core.checkpoint.verify_checkpoint`), for an author with nothing held.

    The content's columns are read first, bounded (:mod:`p2paid.automerge.feedproof`):
    for an honest feed they prove that every change passes the rules, and Automerge
    only loads the document; for anything else every change is read back from
    Automerge and checked as an envelope's change would be. Both reach one verdict.

    Raises:
        EnvelopeDecryptError: the content or the head does not decrypt.
        ChangeMismatchError, OwnershipError, DependencyError, ForbiddenOpError: the
            head's change or a change of the content breaks the rules of section 5.
        CheckpointMismatchError: the content is not the history the head depends on,
            or holds more than :data:`~p2paid.core.checkpoint.MAX_CHECKPOINT_OPS` ops.
    """
    head_change = open_envelope(checkpoint.head, cipher)
    head = check_change(checkpoint.head, head_change)
    document, feed, content = _checked_content(checkpoint, cipher, head)
    if feed is not None:
        last_hash = head.deps[0]
        touched = {(op.obj[1], op.key) for op in head.ops if op.obj is not None}
        _after_head(feed.state(last_hash, touched), head)  # (the verdict on the head)
        return CheckedCheckpoint(checkpoint, content, document, (head, head_change),
                                 lambda: _after_head(feed.state(last_hash), head))
    return _check_each_change(checkpoint, content, document, head, head_change)


def _checked_content(checkpoint: Checkpoint, cipher: ChaCha20Poly1305, head: ChangeHeader
                     ) -> tuple[Document, FeedProof | None, bytes]:
    """SPEC 8a.3 steps 2-5: the content decrypted, bounded, read from its columns and
    loaded; with the proof of its feed (None: check it change by change) and its bytes."""
    author, seq = checkpoint.author, checkpoint.seq
    max_op = head.start_op - 1
    if max_op > MAX_CHECKPOINT_OPS:
        raise CheckpointMismatchError(
            f"the checkpoint's content holds {max_op:,} ops, more than {MAX_CHECKPOINT_OPS:,}")
    if max_op < seq - 1:
        raise DependencyError(f"change seq {seq} starts at op {head.start_op}, after "
                              f"{seq - 1} changes of at least one op each")
    content = open_checkpoint(checkpoint, cipher)
    chunk = inspect_document(content, MAX_INFLATED_BYTES)
    if chunk.actors != (author,):
        raise OwnershipError(f"the checkpoint's content names {len(chunk.actors)} actors, "
                             "not its author alone")
    if chunk.heads != head.deps:
        raise CheckpointMismatchError(
            f"the checkpoint's content does not end at the change its head (seq {seq}) "
            "depends on")
    # (bounds every column before Automerge loads any: see feedproof)
    proof = prove_feed(chunk.change_columns, chunk.op_columns, author=author,
                       changes=seq - 1, max_op=max_op)
    document = _load(content)
    if {bytes(h) for h in document.get_heads()} != set(head.deps):
        raise CheckpointMismatchError("the checkpoint's content loads with other heads")
    return document, proof, content


def check_continuation(checkpoint: Checkpoint, cipher: ChaCha20Poly1305, held: int,
                       held_hash: bytes) -> list[tuple[ChangeHeader, bytes]]:
    """The changes ``held+1 .. seq`` (the head's last) of a checkpoint whose signatures
    were verified, for a member holding the author's feed up to ``held``, whose change
    there has hash ``held_hash`` (SPEC 8a.4). The caller checks them against the rules,
    from the state it holds.

    Raises:
        EnvelopeDecryptError, ChangeMismatchError, OwnershipError, DependencyError: as
            :func:`check_checkpoint`.
        CheckpointMismatchError: the content is not the history the head depends on, or
            not the one held up to ``held``.
    """
    author, seq = checkpoint.author, checkpoint.seq
    head_change = open_envelope(checkpoint.head, cipher)
    head = check_change(checkpoint.head, head_change)
    document, _, _ = _checked_content(checkpoint, cipher, head)
    stored = document.get_changes([])
    if len(stored) != seq - 1:
        raise CheckpointMismatchError(
            f"the checkpoint's content holds {len(stored)} changes, not {seq - 1}")
    if bytes(stored[held - 1].hash) != held_hash:
        raise CheckpointMismatchError(
            f"the checkpoint's content is another history than the feed held up to seq {held}")
    changes: list[tuple[ChangeHeader, bytes]] = []
    for expected, change in enumerate(stored[held:], start=held + 1):
        data = bytes(change.bytes)
        header = parse_change(data)
        if header.actor != author or header.seq != expected:
            raise ChangeMismatchError(f"change {expected} of the checkpoint is out of place")
        if header.other_actors:
            raise OwnershipError(f"change seq {expected} references other members")
        changes.append((header, data))
    changes.append((head, head_change))
    return changes


def _after_head(state: AuthorState, head: ChangeHeader) -> AuthorState:
    """``state`` once the head's change is checked against it (and applied to it)."""
    rules = FeedRules(load=lambda _author: state, has_history=lambda _author: True)
    rules.check(head)
    return state


def _check_each_change(checkpoint: Checkpoint, content: bytes, document: Document,
                       head: ChangeHeader, head_change: bytes) -> CheckedCheckpoint:
    """Every change of the document read back from Automerge and checked as it would be
    in an envelope, then the head's."""
    author, seq = checkpoint.author, checkpoint.seq
    rules = FeedRules(load=lambda _author: _unreachable(), has_history=lambda _author: False)
    changes: list[tuple[ChangeHeader, bytes]] = []
    stored = document.get_changes([])
    if len(stored) != seq - 1:
        raise CheckpointMismatchError(
            f"the checkpoint's content holds {len(stored)} changes, not {seq - 1}")
    for expected, change in enumerate(stored, start=1):
        data = bytes(change.bytes)
        header = parse_change(data)
        if header.actor != author or header.seq != expected:
            raise ChangeMismatchError(f"change {expected} of the checkpoint is out of place")
        if header.other_actors:
            raise OwnershipError(f"change seq {expected} references other members")
        rules.check(header)
        changes.append((header, data))
    rules.check(head)
    changes.append((head, head_change))
    state = rules.state(author)
    return CheckedCheckpoint(checkpoint, content, document, (head, head_change),
                             lambda: state, changes)


def adoptable_document(checked: Sequence[CheckedCheckpoint]) -> Document | None:
    """One document of every checked checkpoint's feed (different authors), for an
    empty board to take as its own; None if Automerge does not load them as one with
    exactly their heads. Loading them together costs a third of applying their changes
    to one of them (10,000 changes of 1,000 authors: 0.23 s against 0.55 s)."""
    if len(checked) == 1:
        return checked[0].document
    try:
        document = Document.load(b"".join(c.content for c in checked))
    except BaseException as exc:  # pyo3's PanicException derives from BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        return None
    heads = {bytes(h) for h in document.get_heads()}
    return document if heads == {c.head[0].deps[0] for c in checked} else None


def _unreachable() -> Any:
    raise AssertionError("a checkpoint is checked from an empty feed")
