"""Relay addresses: ``p2paid-relay://HOST:PORT/KEY[?token=TOKEN]``.

``KEY`` is the relay's X25519 node key (its Noise static key) followed by a 3-byte
checksum, in lowercase unpadded base32 (56 characters), so that a mistyped key is
refused when the address is read, not found out later as a relay that never
answers. Addresses written before the checksum (52 characters, the key alone) are
still read, as :attr:`RelayAddress.checked` False. A node that dials a relay
checks during the handshake that the relay presents exactly this key and refuses
it otherwise, so a relay cannot be impersonated by whoever controls the network or
the name.

``TOKEN`` (optional) is an access token the relay's operator handed out, in
lowercase unpadded base32 (1 to 64 bytes). A node sends it to that relay, and
only to it, inside the encrypted connection (the Hello's ``token`` field).
``HOST`` is checked by :func:`p2paid.core.hosts.normalize_host`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Final, final

from p2paid.core import base32
from p2paid.core.base32 import Base32Error
from p2paid.core.hosts import HostError, normalize_host
from p2paid.errors import InviteError

__all__ = [
    "MAX_TOKEN_BYTES", "RELAY_SCHEME", "RelayAddress", "decode_token", "encode_token",
    "key_checksum",
]

RELAY_SCHEME: Final = "p2paid-relay://"
_KEY_BYTES: Final = 32
_CHECK_BYTES: Final = 3
_CHECK_LABEL: Final = b"p2paid/1 relay key\x00"
#: Longest access token (the Hello's ``token`` field is at most this many bytes).
MAX_TOKEN_BYTES: Final = 64
_TOKEN_PARAM: Final = "token="


def encode_token(token: bytes) -> str:
    """A token as it is written in addresses and printed: lowercase unpadded base32."""
    return base32.encode(token)


def decode_token(text: str) -> bytes:
    """Parse a token written by :func:`encode_token` (any case).

    Raises:
        InviteError: not base32, or not 1 to 64 bytes.
    """
    try:
        token = base32.decode(text.strip())
    except Base32Error as exc:
        raise InviteError(f"a relay token is base32 text (letters a-z and digits 2-7); this "
                          f"one has {exc}") from None
    if not 0 < len(token) <= MAX_TOKEN_BYTES:
        raise InviteError(f"a relay token is 1 to {MAX_TOKEN_BYTES} bytes")
    return token


@final
@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where a relay listens, the key it must present, and an optional access token.

    ``host`` is normalised on construction (see :func:`p2paid.core.hosts.normalize_host`).
    """

    host: str
    port: int
    key: bytes
    token: bytes | None = field(default=None, repr=False)
    #: False for an address read in the old form, without a checksum (its key may
    #: hold a typo that nothing caught); written addresses always carry one
    checked: bool = field(default=True, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes) or len(self.key) != _KEY_BYTES:
            raise InviteError("a relay key is 32 bytes")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                0 < self.port < 65536):
            raise InviteError("a relay port is between 1 and 65535")
        if self.token is not None and (not isinstance(self.token, bytes)
                                       or not 0 < len(self.token) <= MAX_TOKEN_BYTES):
            raise InviteError(f"a relay token is 1 to {MAX_TOKEN_BYTES} bytes")
        try:
            host = normalize_host(self.host)
        except HostError as exc:
            raise InviteError(f"relay address: {exc}") from exc
        object.__setattr__(self, "host", host)

    def __str__(self) -> str:
        text = self.without_token_text()
        return text if self.token is None else f"{text}?{_TOKEN_PARAM}{encode_token(self.token)}"

    def without_token_text(self) -> str:
        """The address without its token: safe to log or show."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        key = base32.encode(self.key + key_checksum(self.key))
        return f"{RELAY_SCHEME}{host}:{self.port}/{key}"

    def with_token(self, token: bytes | None) -> RelayAddress:
        """The same relay with another token (None: without one)."""
        return replace(self, token=token)

    @classmethod
    def parse(cls, text: str) -> RelayAddress:
        """Parse ``p2paid-relay://HOST:PORT/KEY[?token=TOKEN]``.

        Raises:
            InviteError: with a message saying what is wrong.
        """
        if not isinstance(text, str):
            raise InviteError("a relay address is text")
        text = text.strip()
        if not text.lower().startswith(RELAY_SCHEME):
            raise InviteError(f"not a relay address: it must start with {RELAY_SCHEME!r}")
        rest = text[len(RELAY_SCHEME):]
        authority, slash, path = rest.partition("/")
        key_text, question, query = path.partition("?")
        if not slash or not key_text:
            raise InviteError("the relay address lacks its key (…/KEY at the end)")
        token = None
        if question:
            if not query.lower().startswith(_TOKEN_PARAM) or "&" in query or "#" in query:
                raise InviteError("a relay address takes only '?token=TOKEN' after its key")
            token = decode_token(query[len(_TOKEN_PARAM):])
        if authority.startswith("["):
            inner, bracket, port_text = authority[1:].partition("]")
            if not bracket or not port_text.startswith(":"):
                raise InviteError("the relay address needs [IPV6]:PORT")
            host, port_text = f"[{inner}]", port_text[1:]
        else:
            host, _, port_text = authority.rpartition(":")
            if ":" in host:
                raise InviteError("an IPv6 relay host is written in brackets: [IPV6]:PORT")
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            raise InviteError("the relay address needs HOST:PORT")
        key, checked = _decode_key(key_text)
        return cls(host, int(port_text), key, token, checked)


def key_checksum(key: bytes) -> bytes:
    """The 3 bytes written after a relay key: ``SHA-256(label || key)[:3]``."""
    return hashlib.sha256(_CHECK_LABEL + key).digest()[:_CHECK_BYTES]


def _decode_key(text: str) -> tuple[bytes, bool]:
    """``(key, checked)`` from the key part of an address."""
    try:
        raw = base32.decode(text)
    except Base32Error as exc:
        raise InviteError(f"the relay key has {exc}") from None
    if len(raw) == _KEY_BYTES:
        return raw, False  # written before the checksum
    if len(raw) != _KEY_BYTES + _CHECK_BYTES:
        raise InviteError("the relay key has the wrong length (56 characters); was it cut "
                          "off or copied with extra characters?")
    key, check = raw[:_KEY_BYTES], raw[_KEY_BYTES:]
    if key_checksum(key) != check:
        raise InviteError("the relay key's checksum does not match: it was mistyped or "
                          "damaged; copy the address again from the relay's operator")
    return key, True
