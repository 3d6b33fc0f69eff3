"""Unpadded base32 (RFC 4648 alphabet) as p2paid writes it: lowercase, no ``=``.

Decoding is strict, so that each byte string has exactly one text: any case is
read, but a length no encoder produces, or set bits after the last whole byte
(the "unused bits" of the final character) are refused. Without that check, the
last character of an invite could be changed to any of several others and still
decode to the same bytes.
"""

from __future__ import annotations

import base64
import re
from typing import Final

__all__ = ["Base32Error", "decode", "encode"]

_ALPHABET: Final = re.compile("[A-Z2-7]*")
#: Unused low bits of the last character, by text length mod 8 (lengths 1, 3 and 6
#: mod 8 cannot be produced).
_UNUSED_BITS: Final = {0: 0, 2: 2, 4: 4, 5: 1, 7: 3}


class Base32Error(ValueError):
    """Not canonical unpadded base32; the message says why in a few words."""


def encode(data: bytes) -> str:
    """``data`` as lowercase unpadded base32."""
    return base64.b32encode(data).decode("ascii").rstrip("=").lower()


def decode(text: str) -> bytes:
    """The bytes of canonical unpadded base32 text (any case).

    Raises:
        Base32Error: a character outside a-z, 2-7; a length no encoder writes (cut
            off); or unused bits set in the last character (mistyped).
    """
    upper = text.upper()
    if not upper.isascii() or not _ALPHABET.fullmatch(upper):
        raise Base32Error("characters that are not base32 (a-z, 2-7)")
    unused = _UNUSED_BITS.get(len(upper) % 8)
    if unused is None:
        raise Base32Error("a length that base32 never has (cut off?)")
    if unused and _value(upper[-1]) & ((1 << unused) - 1):
        raise Base32Error("a last character that base32 never ends with (cut off or mistyped?)")
    return base64.b32decode(upper + "=" * (-len(upper) % 8))


def _value(char: str) -> int:
    return ord(char) - ord("A") if char.isalpha() else ord(char) - ord("2") + 26
