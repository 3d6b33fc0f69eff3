"""Relay addresses: ``p2paid-relay://HOST:PORT/KEY``.

``KEY`` is the relay's X25519 node key (its Noise static key) in lowercase
unpadded base32 (52 characters). A node that dials a relay checks during the
handshake that the relay presents exactly this key and refuses it otherwise, so
a relay cannot be impersonated by whoever controls the network or the name.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Final, final

from .errors import InviteError

__all__ = ["RELAY_SCHEME", "RelayAddress"]

RELAY_SCHEME: Final = "p2paid-relay://"
_KEY_BYTES: Final = 32


@final
@dataclass(frozen=True, slots=True)
class RelayAddress:
    """Where a relay listens, and the key it must present."""

    host: str
    port: int
    key: bytes

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_BYTES:
            raise InviteError("a relay key is 32 bytes")
        if not 0 < self.port < 65536:
            raise InviteError("a relay port is between 1 and 65535")
        if not self.host or any(c in self.host for c in "/ @#?"):
            raise InviteError("a relay address needs a host name or IP address")

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        key = base64.b32encode(self.key).decode("ascii").rstrip("=").lower()
        return f"{RELAY_SCHEME}{host}:{self.port}/{key}"

    @classmethod
    def parse(cls, text: str) -> RelayAddress:
        """Parse ``p2paid-relay://HOST:PORT/KEY``.

        Raises:
            InviteError: with a message saying what is wrong.
        """
        text = text.strip()
        if not text.lower().startswith(RELAY_SCHEME):
            raise InviteError(f"not a relay address: it must start with {RELAY_SCHEME!r}")
        rest = text[len(RELAY_SCHEME):]
        authority, slash, key_text = rest.partition("/")
        if not slash or not key_text:
            raise InviteError("the relay address lacks its key (…/KEY at the end)")
        if authority.startswith("["):
            host, bracket, port_text = authority[1:].partition("]")
            port_text = port_text.removeprefix(":") if bracket else ""
        else:
            host, _, port_text = authority.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise InviteError("the relay address needs HOST:PORT") from None
        try:
            key = base64.b32decode(key_text.upper() + "=" * (-len(key_text) % 8))
        except (binascii.Error, ValueError):
            raise InviteError("the relay key is not base32") from None
        return cls(host, port, key)
