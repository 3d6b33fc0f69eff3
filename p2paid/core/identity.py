"""Keys: Ed25519 author keys (one per board), the X25519 node key, fingerprints.

An *author key* signs envelopes and is the Automerge actor id of everything its
holder writes on one board. A node has a separate author key per board so that a
person cannot be linked across boards by key. The *node key* is the node's Noise
static key (X25519): it authenticates transport connections and is what a relay
address pins. Keys are never copied between devices: two devices writing with one
author key would fork the feed.
"""

from __future__ import annotations

import base64
import hashlib
from typing import NewType, final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2paid.errors import SignatureError, ValidationError

__all__ = [
    "AuthorId",
    "AuthorKey",
    "NodeKey",
    "PublicKeyCache",
    "fingerprint",
    "short_fingerprint",
    "verify_signature",
]

#: A 32-byte Ed25519 public key: a member's identity on one board (and its Automerge actor id).
AuthorId = NewType("AuthorId", bytes)

KEY_BYTES = 32


@final
class AuthorKey:
    """An Ed25519 signing key whose public half is an :data:`AuthorId`."""

    __slots__ = ("_sk", "public")

    def __init__(self, private_bytes: bytes) -> None:
        if len(private_bytes) != KEY_BYTES:
            raise ValidationError("an author key is 32 bytes")
        self._sk = Ed25519PrivateKey.from_private_bytes(private_bytes)
        self.public = AuthorId(self._sk.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> AuthorKey:
        return cls(Ed25519PrivateKey.generate().private_bytes_raw())

    def private_bytes(self) -> bytes:
        return self._sk.private_bytes_raw()

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of ``data``."""
        return self._sk.sign(data)

    def __repr__(self) -> str:
        return f"AuthorKey({fingerprint(self.public)})"


@final
class NodeKey:
    """The node's X25519 static key for the Noise handshake; its public half is the node id."""

    __slots__ = ("private", "public")

    def __init__(self, private_bytes: bytes) -> None:
        if len(private_bytes) != KEY_BYTES:
            raise ValidationError("a node key is 32 bytes")
        self.private = X25519PrivateKey.from_private_bytes(private_bytes)
        self.public = self.private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(X25519PrivateKey.generate().private_bytes_raw())

    def private_bytes(self) -> bytes:
        return self.private.private_bytes_raw()

    def __repr__(self) -> str:
        return f"NodeKey({fingerprint(self.public)})"


class PublicKeyCache:
    """Parsed Ed25519 public keys by raw bytes; parsing costs as much as a hash."""

    def __init__(self, limit: int = 4096) -> None:
        self._keys: dict[bytes, Ed25519PublicKey] = {}
        self._limit = limit

    def get(self, raw: bytes) -> Ed25519PublicKey:
        key = self._keys.get(raw)
        if key is None:
            try:
                key = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError as exc:
                raise SignatureError("author key is not a valid Ed25519 public key") from exc
            if len(self._keys) >= self._limit:
                self._keys.clear()
            self._keys[raw] = key
        return key


_DEFAULT_CACHE = PublicKeyCache()


def verify_signature(author: bytes, signature: bytes, data: bytes) -> None:
    """Check an Ed25519 signature.

    Raises:
        SignatureError: the signature does not verify, or ``author`` is not a valid key.
    """
    try:
        _DEFAULT_CACHE.get(author).verify(signature, data)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc


def fingerprint(public_key: bytes) -> str:
    """A short human-comparable fingerprint: 16 base32 characters in groups of four.

    80 bits of SHA-256 over the key: enough that two people comparing it aloud
    will notice a substituted key.
    """
    digest = hashlib.sha256(b"p2paid fingerprint\x00" + public_key).digest()[:10]
    text = base64.b32encode(digest).decode("ascii").lower()
    return "-".join(text[i : i + 4] for i in range(0, 16, 4))


#: Groups of :func:`fingerprint` shown beside a display name in lists.
SHORT_FINGERPRINT_GROUPS = 2


def short_fingerprint(public_key: bytes) -> str:
    """The first groups of :func:`fingerprint` (40 bits, e.g. ``mngt-xv5d``): enough
    to tell the members of a board apart at a glance; compare the whole fingerprint
    to be sure of someone (finding a key with a chosen 40-bit prefix takes about
    2^40 key generations, which a determined attacker can afford)."""
    return "-".join(fingerprint(public_key).split("-")[:SHORT_FINGERPRINT_GROUPS])
