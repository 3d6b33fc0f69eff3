"""Checkpoints: an author's feed ``1..N`` in one signed, encrypted record (``protocol/SPEC.md`` 8a).

An initial sync or a bundle that carries a feed as envelopes spends about 270 bytes
per change on framing (board id, author, seq, prev, nonce, tag, signature) around a
change that Automerge's columnar document format stores in about 28. A checkpoint
carries the author's changes ``1..N-1`` as one Automerge saved document, encrypted
once, next to the author's envelope ``N`` itself (the **head**), and signed once.

Wire layout (all integers big-endian)::

    magic(4)="P2CK" version(1)=0x01 board_id(32) author(32) seq(8)
    head_len(4) head nonce(12) ciphertext_len(4) ciphertext sig(64)

* ``head`` is the author's envelope at ``seq`` (section 4), byte for byte;
* ``ciphertext = ChaCha20-Poly1305(content_key, nonce, content, ad)`` with
  ``ad = b"p2paid/1 checkpoint\\x00" || board_id || author || seq(8) || SHA-256(head)``;
* ``sig = Ed25519(author, b"p2paid/1 checkpoint\\x00" || SHA-256(every byte before sig))``;
* ``hash = SHA-256(the whole checkpoint)``.

What each party can check:

* **Anyone** (a relay, a carrier: no secret): the layout, that the head is a valid
  envelope of this board, author and seq, and both signatures (:func:`verify_checkpoint`).
  The feed position the checkpoint vouches for is the head's: ``(author, N, hash(head))``.
* **Members** decrypt the content and check it is exactly the history the head's
  change depends on (:mod:`p2paid.board.checkpoint`): the head's change names its
  parent's Automerge hash, which commits to every earlier change, so a checkpoint
  cannot carry one history under another history's head.

Nothing here imports Automerge: relays use this module too.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.core.envelope import HEADER_BYTES, MAX_ENVELOPE_BYTES, SIG_BYTES, Envelope
from p2paid.core.identity import AuthorKey, verify_signature
from p2paid.errors import (
    EnvelopeDecryptError,
    LocalProtocolError,
    MalformedEnvelopeError,
    OversizedEnvelopeError,
    WrongBoardError,
)

__all__ = [
    "CHECKPOINT_MAGIC",
    "CHECKPOINT_VERSION",
    "MAX_CHECKPOINT_BYTES",
    "MAX_CHECKPOINT_OPS",
    "Checkpoint",
    "decode_record",
    "is_checkpoint",
    "open_checkpoint",
    "seal_checkpoint",
    "verify_checkpoint",
]

CHECKPOINT_MAGIC: Final = b"P2CK"
CHECKPOINT_VERSION: Final = 1
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
#: A checkpoint fits one message of the sync protocol (1 MiB) with room for its framing.
MAX_CHECKPOINT_BYTES: Final = 1024 * 1024 - 4096
#: Most ops a checkpoint's content may hold (its head's change starts at op
#: ``MAX_CHECKPOINT_OPS + 1`` at most). Automerge's columns can describe any number of
#: ops in a few bytes; a reader refuses more before it builds them. An honest feed of
#: needs takes about 4 bytes an op, so 1 MiB holds about 260,000.
MAX_CHECKPOINT_OPS: Final = 1 << 19
_FIXED = struct.Struct(">4sB32s32sQI")
_CT_LEN = struct.Struct(">12sI")
_MIN_BYTES: Final = _FIXED.size + HEADER_BYTES + SIG_BYTES + _CT_LEN.size + TAG_BYTES + SIG_BYTES
_DOMAIN: Final = b"p2paid/1 checkpoint\x00"
_MAX_SEQ: Final = 2**63 - 1


@final
@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A decoded checkpoint. ``raw`` is its exact bytes; ``hash`` is SHA-256 of ``raw``."""

    board_id: bytes
    author: bytes
    seq: int
    head: Envelope = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    sig: bytes = field(repr=False)
    raw: bytes = field(repr=False, compare=False)
    hash: bytes = field(repr=False, compare=False)

    @classmethod
    def decode(cls, raw: bytes) -> Checkpoint:
        """Decode and check the layout (not the signatures: see :func:`verify_checkpoint`).

        Raises:
            OversizedEnvelopeError: longer than :data:`MAX_CHECKPOINT_BYTES`.
            MalformedEnvelopeError: truncated, wrong magic or version, inconsistent
                lengths, a seq below 2, or a head that is not the author's envelope at
                ``seq`` (a head of another board is :class:`WrongBoardError`).
        """
        if len(raw) > MAX_CHECKPOINT_BYTES:
            raise OversizedEnvelopeError(f"checkpoint of {len(raw)} bytes exceeds the cap")
        if len(raw) < _MIN_BYTES:
            raise MalformedEnvelopeError("checkpoint is truncated")
        raw = bytes(raw)
        magic, version, board_id, author, seq, head_len = _FIXED.unpack_from(raw)
        if magic != CHECKPOINT_MAGIC:
            raise MalformedEnvelopeError("not a checkpoint (bad magic)")
        if version != CHECKPOINT_VERSION:
            raise MalformedEnvelopeError(
                f"checkpoint version {version} is not supported (this reader knows "
                f"version {CHECKPOINT_VERSION}; a newer p2paid made it)")
        if not 2 <= seq <= _MAX_SEQ:
            raise MalformedEnvelopeError("checkpoint seq out of range (a checkpoint covers "
                                         "at least one change before its head)")
        if not HEADER_BYTES + SIG_BYTES <= head_len <= MAX_ENVELOPE_BYTES:
            raise MalformedEnvelopeError("checkpoint head length out of range")
        pos = _FIXED.size + head_len
        if pos + _CT_LEN.size > len(raw):
            raise MalformedEnvelopeError("checkpoint is truncated")
        head = Envelope.decode(raw[_FIXED.size:pos])
        nonce, ct_len = _CT_LEN.unpack_from(raw, pos)
        pos += _CT_LEN.size
        if ct_len < TAG_BYTES or pos + ct_len + SIG_BYTES != len(raw):
            raise MalformedEnvelopeError("checkpoint length does not match its ciphertext length")
        if head.board_id != board_id:
            raise WrongBoardError("the checkpoint's head envelope is of another board")
        if head.author != author or head.seq != seq:
            raise MalformedEnvelopeError(
                "the checkpoint's head is not the author's envelope at the checkpoint's seq")
        return cls(board_id, author, seq, head, nonce, raw[pos:pos + ct_len],
                   raw[-SIG_BYTES:], raw, hashlib.sha256(raw).digest())

    def signing_input(self) -> bytes:
        return _DOMAIN + hashlib.sha256(self.raw[:-SIG_BYTES]).digest()

    @property
    def content_bytes(self) -> int:
        """Length of the (plaintext) content."""
        return len(self.ciphertext) - TAG_BYTES


def is_checkpoint(raw: bytes) -> bool:
    """Whether a record (of a batch, a bundle) is a checkpoint rather than an envelope."""
    return raw[:4] == CHECKPOINT_MAGIC


def decode_record(raw: bytes) -> Envelope | Checkpoint:
    """A batch's or a bundle's record, decoded: a checkpoint or an envelope.

    Raises:
        EnvelopeError: it decodes as neither (see :meth:`Checkpoint.decode` and
            :meth:`Envelope.decode`).
    """
    return Checkpoint.decode(raw) if is_checkpoint(raw) else Envelope.decode(raw)


def associated_data(board_id: bytes, author: bytes, seq: int, head: bytes) -> bytes:
    return _DOMAIN + board_id + author + seq.to_bytes(8, "big") + hashlib.sha256(head).digest()


def verify_checkpoint(checkpoint: Checkpoint) -> None:
    """Check both signatures: the checkpoint's and its head envelope's. No secret needed.

    Raises:
        SignatureError: either does not verify.
    """
    verify_signature(checkpoint.author, checkpoint.sig, checkpoint.signing_input())
    checkpoint.head.verify_signature()


def seal_checkpoint(
    *,
    cipher: ChaCha20Poly1305,
    author_key: AuthorKey,
    head: Envelope,
    content: bytes,
    nonce: bytes | None = None,
) -> Checkpoint:
    """Encrypt and sign ``content`` (the author's changes before ``head``) with ``head``.

    Args:
        cipher: ``ChaCha20Poly1305(content_key)`` of the board.
        head: the author's own envelope at the seq the checkpoint reaches (at least 2).
        content: Automerge's saved document of exactly the author's changes ``1..seq-1``.
        nonce: 12 bytes; random when omitted (fixed only for test vectors).

    Raises:
        LocalProtocolError: ``head`` is not this author's, is at seq 1, or the
            checkpoint would exceed :data:`MAX_CHECKPOINT_BYTES`.
    """
    if head.author != author_key.public:
        raise LocalProtocolError("a checkpoint is sealed by the author of its head")
    if head.seq < 2:
        raise LocalProtocolError("a checkpoint covers at least one change before its head")
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise LocalProtocolError("nonce is 12 bytes")
    ad = associated_data(head.board_id, head.author, head.seq, head.raw)
    ciphertext = cipher.encrypt(nonce, content, ad)
    body = (_FIXED.pack(CHECKPOINT_MAGIC, CHECKPOINT_VERSION, head.board_id, head.author,
                        head.seq, len(head.raw))
            + head.raw + _CT_LEN.pack(nonce, len(ciphertext)) + ciphertext)
    if len(body) + SIG_BYTES > MAX_CHECKPOINT_BYTES:
        raise LocalProtocolError(
            f"a checkpoint of {len(body) + SIG_BYTES} bytes exceeds {MAX_CHECKPOINT_BYTES}: "
            "checkpoint a shorter run of the feed")
    sig = author_key.sign(_DOMAIN + hashlib.sha256(body).digest())
    return Checkpoint.decode(body + sig)


def open_checkpoint(checkpoint: Checkpoint, cipher: ChaCha20Poly1305) -> bytes:
    """Decrypt a checkpoint's content (Automerge's saved document of changes ``1..seq-1``).

    Raises:
        EnvelopeDecryptError: wrong key, or content or header altered.
    """
    ad = associated_data(checkpoint.board_id, checkpoint.author, checkpoint.seq,
                         checkpoint.head.raw)
    try:
        return cipher.decrypt(checkpoint.nonce, checkpoint.ciphertext, ad)
    except InvalidTag as exc:
        raise EnvelopeDecryptError(
            f"checkpoint to seq {checkpoint.seq} does not decrypt with this board's key") from exc
