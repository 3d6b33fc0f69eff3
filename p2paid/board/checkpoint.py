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
  heads, read from the chunk's header by :mod:`p2paid.automerge.docchunk`); Automerge
  loads the content only after them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, final

from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader, parse_change
from p2paid.automerge.docchunk import inspect_document
from p2paid.automerge.rules import AuthorState, FeedRules, check_change
from p2paid.core.checkpoint import Checkpoint, open_checkpoint, seal_checkpoint
from p2paid.core.envelope import Envelope, open_envelope
from p2paid.core.identity import AuthorKey
from p2paid.errors import (
    ChangeMismatchError,
    CheckpointMismatchError,
    LocalProtocolError,
    OwnershipError,
)

__all__ = ["CheckedCheckpoint", "check_checkpoint", "feed_content", "seal_feed_checkpoint"]

#: The most a checkpoint's content may take once Automerge's columns are inflated
#: (a 10,000-need feed takes about 1.8 MB).
MAX_INFLATED_BYTES: Final = 64 * 1024 * 1024


@final
@dataclass(frozen=True, slots=True)
class CheckedCheckpoint:
    """A checkpoint that passed every member check."""

    checkpoint: Checkpoint
    #: Automerge's document of the author's changes ``1..seq-1`` (the head's not applied)
    document: Document = field(repr=False)
    #: every change, ``1..seq`` in order, the head's last, as a received envelope's would be
    changes: list[tuple[ChangeHeader, bytes]] = field(repr=False)
    #: what the rules know of the author after change ``seq``
    state: AuthorState = field(repr=False)


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

    Raises:
        EnvelopeDecryptError: the content or the head does not decrypt.
        ChangeMismatchError, OwnershipError, DependencyError, ForbiddenOpError: the
            head's change or a change of the content breaks the rules of section 5.
        CheckpointMismatchError: the content is not the history the head depends on.
    """
    author, seq = checkpoint.author, checkpoint.seq
    head_change = open_envelope(checkpoint.head, cipher)
    head = check_change(checkpoint.head, head_change)
    content = open_checkpoint(checkpoint, cipher)
    chunk = inspect_document(content, MAX_INFLATED_BYTES)
    if chunk.actors != (author,):
        raise OwnershipError(f"the checkpoint's content names {len(chunk.actors)} actors, "
                             "not its author alone")
    if chunk.heads != head.deps:
        raise CheckpointMismatchError(
            f"the checkpoint's content does not end at the change its head (seq {seq}) "
            "depends on")
    document = _load(content)
    if {bytes(h) for h in document.get_heads()} != set(head.deps):
        raise CheckpointMismatchError("the checkpoint's content loads with other heads")
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
    return CheckedCheckpoint(checkpoint, document, changes, rules.state(author))


def _unreachable() -> Any:
    raise AssertionError("a checkpoint is checked from an empty feed")
