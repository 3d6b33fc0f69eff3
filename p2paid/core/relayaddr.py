"""Relay addresses: ``p2paid-relay://HOST:PORT/KEY[?token=TOKEN]``.

``KEY`` is the relay's X25519 node key (its Noise static key) in lowercase
unpadded base32 (52 characters). A node that dials a relay checks during the
handshake that the relay presents exactly this key and refuses it otherwise, so
a relay cannot be impersonated by whoever controls the network or the name.

``TOKEN`` (optional) is an access token the relay's operator handed out, in
lowercase unpadded base32 (1 to 64 bytes). A node sends it to that relay, and
only to it, inside the encrypted connection (the Hello's ``token`` field).
``HOST`` is checked by :func:`p2paid.core.hosts.normalize_host`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field, replace
from typing import Final, final

from p2paid.core.hosts import HostError, normalize_host
from p2paid.errors import InviteError

__all__ = ["MAX_TOKEN_BYTES", "RELAY_SCHEME", "RelayAddress", "decode_token", "encode_token"]

RELAY_SCHEME: Final = "p2paid-relay://"
_KEY_BYTES: Final = 32
#: Longest access token (the Hello's ``token`` field is at most this many bytes).
MAX_TOKEN_BYTES: Final = 64
_TOKEN_PARAM: Final = "token="
_BASE32: Final = re.compile("[a-z2-7]+")


def encode_token(token: bytes) -> str:
    """A token as it is written in addresses and printed: lowercase unpadded base32."""
    return base64.b32encode(token).decode("ascii").rstrip("=").lower()


def decode_token(text: str) -> bytes:
    """Parse a token written by :func:`encode_token` (any case).

    Raises:
        InviteError: not base32, or not 1 to 64 bytes.
    """
    text = text.strip().lower()
    if not _BASE32.fullmatch(text) or len(text) % 8 in (1, 3, 6):
        raise InviteError("a relay token is base32 text (letters a-z and digits 2-7)")
    token = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
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
        key = base64.b32encode(self.key).decode("ascii").rstrip("=").lower()
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
        if not _BASE32.fullmatch(key_text.lower()):
            raise InviteError("the relay key is not base32")
        try:
            key = base64.b32decode(key_text.upper() + "=" * (-len(key_text) % 8))
        except (binascii.Error, ValueError):
            raise InviteError("the relay key is not base32") from None
        return cls(host, int(port_text), key, token)
