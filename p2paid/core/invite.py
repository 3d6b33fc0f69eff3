"""Board secrets, the keys derived from them, and ``p2paid:`` invite URIs.

Knowing a board's 32-byte secret is membership. HKDF-SHA256 derives three
independent values from it (``protocol/SPEC.md`` section "Key derivation"):

* ``board_id``   - public routing tag; relays and carriers see it.
* ``content_key`` - ChaCha20-Poly1305 key for every envelope's ciphertext.
* ``tag_key``    - HMAC key for recognising shared boards during a handshake.

An invite is ``p2paid:`` followed by lowercase unpadded base32 of
``version || msgpack([secret, name, relays]) || checksum``; the checksum catches
an invite truncated by copy and paste before anyone sees a confusing error.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass, field
from typing import NewType, final

import msgpack
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2paid.core import base32
from p2paid.core.base32 import Base32Error
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.text import text_problem
from p2paid.errors import InviteError, ValidationError

__all__ = [
    "MAX_BOARD_NAME",
    "BoardId",
    "BoardKeys",
    "Invite",
    "derive_board_keys",
    "new_board_secret",
    "validate_board_name",
]

#: 32-byte public routing tag of a board.
BoardId = NewType("BoardId", bytes)

SECRET_BYTES = 32
MAX_BOARD_NAME = 100
MAX_RELAY_HINTS = 8
MAX_RELAY_ADDRESS = 300
#: Longest invite accepted, in characters (the largest valid one is about 4,800).
MAX_INVITE_CHARS = 8192
#: msgpack limits for an invite body: nothing in a valid invite comes near them.
_UNPACK_LIMITS = {"max_str_len": 1024, "max_bin_len": 1024, "max_array_len": 64,
                  "max_map_len": 64, "max_ext_len": 64}
INVITE_SCHEME = "p2paid:"
INVITE_VERSION = 1
_HKDF_SALT = b"p2paid/1"
_CHECKSUM_BYTES = 4


def new_board_secret() -> bytes:
    """32 bytes from the OS CSPRNG."""
    return os.urandom(SECRET_BYTES)


def _hkdf(secret: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_HKDF_SALT, info=info).derive(secret)


@final
@dataclass(frozen=True, slots=True)
class BoardKeys:
    """Everything derived from one board secret."""

    secret: bytes = field(repr=False)
    board_id: BoardId
    content_key: bytes = field(repr=False)
    tag_key: bytes = field(repr=False)


def derive_board_keys(secret: bytes) -> BoardKeys:
    """Derive ``board_id``, ``content_key`` and ``tag_key`` from a board secret.

    Raises:
        ValidationError: the secret is not 32 bytes.
    """
    if len(secret) != SECRET_BYTES:
        raise ValidationError("a board secret is 32 bytes")
    return BoardKeys(
        secret=secret,
        board_id=BoardId(_hkdf(secret, b"p2paid board-id")),
        content_key=_hkdf(secret, b"p2paid content-key"),
        tag_key=_hkdf(secret, b"p2paid tag-key"),
    )


def validate_board_name(name: str) -> str:
    """Return the NFC-normalised, stripped name, or raise :class:`ValidationError`."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise ValidationError("a board name cannot be empty")
    if len(name) > MAX_BOARD_NAME:
        raise ValidationError(f"a board name is at most {MAX_BOARD_NAME} characters")
    problem = text_problem(name)
    if problem is not None:
        raise ValidationError(f"a board name {problem}")
    return name


def _checksum(body: bytes) -> bytes:
    return hashlib.sha256(b"p2paid invite\x00" + body).digest()[:_CHECKSUM_BYTES]


@final
@dataclass(frozen=True, slots=True)
class Invite:
    """A board invitation: the secret (membership), a display name and relay hints."""

    secret: bytes = field(repr=False)
    name: str
    relays: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_BYTES:
            raise InviteError("an invite's secret is 32 bytes")
        if len(self.relays) > MAX_RELAY_HINTS:
            raise InviteError(f"an invite carries at most {MAX_RELAY_HINTS} relay hints")
        hints = []
        for number, relay in enumerate(self.relays, 1):
            if not isinstance(relay, str) or not 0 < len(relay) <= MAX_RELAY_ADDRESS:
                raise InviteError(f"the invite's relay hint {number} is not a short string")
            try:
                hints.append(str(RelayAddress.parse(relay)))
            except InviteError as exc:
                raise InviteError(f"the invite's relay hint {number} is not valid: {exc}"
                                  ) from exc
        object.__setattr__(self, "relays", tuple(hints))
        try:
            object.__setattr__(self, "name", validate_board_name(self.name))
        except ValidationError as exc:
            raise InviteError(f"invite board name: {exc}") from exc

    @property
    def keys(self) -> BoardKeys:
        return derive_board_keys(self.secret)

    def to_uri(self) -> str:
        """Encode as ``p2paid:<base32>``."""
        payload = msgpack.packb([self.secret, self.name, list(self.relays)], use_bin_type=True)
        body = bytes([INVITE_VERSION]) + payload
        return INVITE_SCHEME + base32.encode(body + _checksum(body))

    @classmethod
    def from_uri(cls, uri: str) -> Invite:
        """Parse an invite URI.

        Raises:
            InviteError: with a message that says what is wrong with it.
        """
        if not isinstance(uri, str):
            raise InviteError("an invite is text")
        # Mail and chat wrap long lines: whitespace anywhere is not part of an invite.
        text = "".join(uri.split())
        if len(text) > MAX_INVITE_CHARS:
            raise InviteError(f"the invite is longer than {MAX_INVITE_CHARS} characters")
        if not text.lower().startswith(INVITE_SCHEME):
            raise InviteError("not a p2paid invite: it must start with 'p2paid:'")
        encoded = text[len(INVITE_SCHEME) :]
        if not encoded:
            raise InviteError("the invite is empty after 'p2paid:'")
        try:
            raw = base32.decode(encoded)
        except Base32Error as exc:
            raise InviteError(f"the invite has {exc}") from None
        if len(raw) < 1 + _CHECKSUM_BYTES + 1:
            raise InviteError("the invite is too short; was it cut off?")
        body, check = raw[:-_CHECKSUM_BYTES], raw[-_CHECKSUM_BYTES:]
        if _checksum(body) != check:
            raise InviteError("the invite's checksum does not match; was it cut off or mistyped?")
        if body[0] != INVITE_VERSION:
            raise InviteError(
                f"invite version {body[0]} is not supported (this p2paid reads version "
                f"{INVITE_VERSION}); upgrade p2paid"
            )
        try:
            fields = msgpack.unpackb(body[1:], raw=False, strict_map_key=True, **_UNPACK_LIMITS)
        except (ValueError, RecursionError, msgpack.UnpackException) as exc:
            raise InviteError("the invite's contents are malformed") from exc
        if (
            not isinstance(fields, list)
            or len(fields) < 3
            or not isinstance(fields[0], bytes)
            or not isinstance(fields[1], str)
            or not isinstance(fields[2], list)
        ):
            raise InviteError("the invite's contents are malformed")
        return cls(secret=fields[0], name=fields[1], relays=tuple(fields[2]))
