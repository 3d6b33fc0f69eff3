"""Envelopes: one signed, encrypted Automerge change in an author's hash-chained feed.

Wire layout (version 1, all integers big-endian; ``protocol/SPEC.md`` "Envelopes")::

    version(1)=0x01 board_id(32) author(32) seq(8) prev(32) nonce(12)
    ciphertext_len(4) ciphertext sig(64)

* ``body_hash = SHA-256(every byte before sig)``
* ``sig = Ed25519(author, b"p2paid/1 envelope\\x00" || body_hash)``
* ``hash = SHA-256(the whole envelope, sig included)``; the next envelope's ``prev``.
* ``ciphertext = ChaCha20-Poly1305(content_key, nonce, change, ad)`` with
  ``ad = b"p2paid/1 content\\x00" || board_id || author || seq(8)``.

Because ``prev`` commits to the previous envelope's hash (its signature
included), verifying the newest signature of a contiguous run authenticates the
whole run: one Ed25519 check per author per batch.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from typing import final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.core.identity import AuthorKey, verify_signature
from p2paid.errors import (
    EnvelopeDecryptError,
    FrameTooLargeError,
    LocalProtocolError,
    MalformedEnvelopeError,
    OversizedEnvelopeError,
)

__all__ = [
    "ENVELOPE_VERSION",
    "MAX_CIPHERTEXT",
    "MAX_ENVELOPE_BYTES",
    "ZERO_HASH",
    "Envelope",
    "open_envelope",
    "seal_envelope",
]

ENVELOPE_VERSION = 1
ZERO_HASH = bytes(32)
NONCE_BYTES = 12
SIG_BYTES = 64
#: Largest ciphertext accepted: 64 KiB (a change is compressed by Automerge when large).
MAX_CIPHERTEXT = 64 * 1024
_HEAD = struct.Struct(">B32s32sQ32s12sI")
HEADER_BYTES = _HEAD.size
MAX_ENVELOPE_BYTES = HEADER_BYTES + MAX_CIPHERTEXT + SIG_BYTES
_SIG_DOMAIN = b"p2paid/1 envelope\x00"
_AD_DOMAIN = b"p2paid/1 content\x00"
_MAX_SEQ = 2**63 - 1


@final
@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded envelope. ``raw`` is its exact wire bytes; ``hash`` is SHA-256 of ``raw``."""

    board_id: bytes
    author: bytes
    seq: int
    prev: bytes
    nonce: bytes
    ciphertext: bytes = field(repr=False)
    sig: bytes = field(repr=False)
    raw: bytes = field(repr=False, compare=False)
    hash: bytes = field(repr=False, compare=False)

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Decode wire bytes.

        Raises:
            OversizedEnvelopeError: longer than :data:`MAX_ENVELOPE_BYTES`.
            MalformedEnvelopeError: truncated, wrong version, or inconsistent length.
        """
        if len(raw) > MAX_ENVELOPE_BYTES:
            raise OversizedEnvelopeError(f"envelope of {len(raw)} bytes exceeds the cap")
        if len(raw) < HEADER_BYTES + SIG_BYTES:
            raise MalformedEnvelopeError("envelope is truncated")
        version, board_id, author, seq, prev, nonce, ct_len = _HEAD.unpack_from(raw)
        if version != ENVELOPE_VERSION:
            raise MalformedEnvelopeError(f"envelope version {version} is not supported")
        if HEADER_BYTES + ct_len + SIG_BYTES != len(raw):
            raise MalformedEnvelopeError("envelope length does not match its ciphertext length")
        if not 1 <= seq <= _MAX_SEQ:
            raise MalformedEnvelopeError("envelope seq out of range")
        raw = bytes(raw)
        return cls(
            board_id,
            author,
            seq,
            prev,
            nonce,
            raw[HEADER_BYTES:-SIG_BYTES],
            raw[-SIG_BYTES:],
            raw,
            hashlib.sha256(raw).digest(),
        )

    def signing_input(self) -> bytes:
        return _SIG_DOMAIN + hashlib.sha256(self.raw[:-SIG_BYTES]).digest()

    def verify_signature(self) -> None:
        """Raises :class:`~p2paid.errors.SignatureError` unless ``sig`` is the author's."""
        verify_signature(self.author, self.sig, self.signing_input())


def associated_data(board_id: bytes, author: bytes, seq: int) -> bytes:
    return _AD_DOMAIN + board_id + author + seq.to_bytes(8, "big")


def seal_envelope(
    *,
    board_id: bytes,
    cipher: ChaCha20Poly1305,
    author_key: AuthorKey,
    seq: int,
    prev: bytes,
    change: bytes,
    nonce: bytes | None = None,
) -> Envelope:
    """Encrypt and sign one change as the next envelope of ``author_key``'s feed.

    Args:
        cipher: ``ChaCha20Poly1305(content_key)`` of the board.
        nonce: 12 bytes; random when omitted (fixed only for test vectors).

    Raises:
        FrameTooLargeError: the change is too large for one envelope.
        LocalProtocolError: an argument is out of range.
    """
    nonce = os.urandom(NONCE_BYTES) if nonce is None else nonce
    if not 1 <= seq <= _MAX_SEQ:
        raise LocalProtocolError(f"seq {seq} out of range")
    if len(board_id) != 32 or len(prev) != 32 or len(nonce) != NONCE_BYTES:
        raise LocalProtocolError("board_id and prev are 32 bytes, nonce 12")
    author = author_key.public
    ciphertext = cipher.encrypt(nonce, change, associated_data(board_id, author, seq))
    if len(ciphertext) > MAX_CIPHERTEXT:
        raise FrameTooLargeError("change too large for one envelope")
    head = _HEAD.pack(ENVELOPE_VERSION, board_id, author, seq, prev, nonce, len(ciphertext))
    body = head + ciphertext
    sig = author_key.sign(_SIG_DOMAIN + hashlib.sha256(body).digest())
    raw = body + sig
    return Envelope(
        board_id, author, seq, prev, nonce, ciphertext, sig, raw, hashlib.sha256(raw).digest()
    )


def open_envelope(envelope: Envelope, cipher: ChaCha20Poly1305) -> bytes:
    """Decrypt an envelope's change.

    Raises:
        EnvelopeDecryptError: wrong key, or ciphertext or header altered.
    """
    ad = associated_data(envelope.board_id, envelope.author, envelope.seq)
    try:
        return cipher.decrypt(envelope.nonce, envelope.ciphertext, ad)
    except InvalidTag as exc:
        raise EnvelopeDecryptError(
            f"envelope seq {envelope.seq} does not decrypt with this board's key"
        ) from exc
