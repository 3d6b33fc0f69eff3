"""A strict msgpack reader for fixed message schemas (``protocol/SPEC.md`` 11.2).

A general msgpack decoder builds whatever the bytes describe: a 1 MiB message can
hold a million empty maps, each a Python object, before any check runs. This
reader is driven by the schema instead. The caller asks for the value it expects
next (an array header, an unsigned integer, a ``bin`` of at most so many bytes, a
``str`` of at most so many characters) and gets exactly that or a
:class:`~p2paid.errors.DecodeError`; a container's declared length is checked
against its limit before a single element is read, and nothing is allocated but
the values returned. Values the schema does not have (trailing fields that later
versions may add) are skipped with :meth:`StrictReader.skip`, which allocates
nothing and visits a bounded number of values at a bounded depth.
"""

from __future__ import annotations

import struct
from typing import Final, final

from p2paid.errors import DecodeError, RemoteProtocolError

__all__ = ["MAX_SKIPPED_VALUES", "MAX_SKIP_DEPTH", "CutShort", "StrictReader"]

#: Most values (containers and scalars, at any depth) skipped in one message.
MAX_SKIPPED_VALUES: Final = 4096
#: Deepest nesting skipped.
MAX_SKIP_DEPTH: Final = 16

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_UINTS: Final = {0xCC: _U8, 0xCD: _U16, 0xCE: _U32, 0xCF: _U64}
_INTS: Final = {0xD0: _I8, 0xD1: _I16, 0xD2: _I32, 0xD3: _I64}
_BIN_LEN: Final = {0xC4: _U8, 0xC5: _U16, 0xC6: _U32}
_STR_LEN: Final = {0xD9: _U8, 0xDA: _U16, 0xDB: _U32}
#: Scalars of fixed size: nil, bools, floats, ints, fixext (bytes after the marker).
_FIXED: Final = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4,
                 0xCF: 8, 0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5,
                 0xD7: 9, 0xD8: 17}
#: Markers followed by a length, then that many bytes (bin, str, ext: +1 type byte).
_SIZED: Final = {0xC4: (_U8, 0), 0xC5: (_U16, 0), 0xC6: (_U32, 0), 0xD9: (_U8, 0),
                 0xDA: (_U16, 0), 0xDB: (_U32, 0), 0xC7: (_U8, 1), 0xC8: (_U16, 1),
                 0xC9: (_U32, 1)}


class CutShort(DecodeError):
    """The data ended inside a value (what came before it was valid)."""


@final
class StrictReader:
    """Reads msgpack values of an expected shape from ``data``, front to back.

    Every method raises :class:`DecodeError` (``what`` names the field in the
    message) if the next value is not of the asked type or breaks its limit, or if
    the data ends first.
    """

    __slots__ = ("_data", "_end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = data
        self._end = len(data)
        self.pos = 0

    @property
    def at_end(self) -> bool:
        return self.pos == self._end

    def _take(self, n: int, what: str) -> int:
        start = self.pos
        if n > self._end - start:
            raise CutShort(f"{what} is cut short")
        self.pos = start + n
        return start

    def _unpack(self, fmt: struct.Struct, what: str) -> int:
        start = self._take(fmt.size, what)
        value: int = fmt.unpack_from(self._data, start)[0]
        return value

    def _marker(self, what: str) -> int:
        return self._data[self._take(1, what)]

    # ------------------------------------------------------------------ values

    def array(self, limit: int, what: str) -> int:
        """An array header; returns its length (at most ``limit``)."""
        marker = self._marker(what)
        if 0x90 <= marker <= 0x9F:
            count = marker & 0x0F
        elif marker == 0xDC:
            count = self._unpack(_U16, what)
        elif marker == 0xDD:
            count = self._unpack(_U32, what)
        else:
            raise DecodeError(f"{what} is not an array")
        if count > limit:
            raise DecodeError(f"{what} has {count} entries, more than {limit}")
        return count

    def pair(self, what: str) -> None:
        """An array header of exactly two entries."""
        if self.array(2, what) != 2:
            raise DecodeError(f"{what} is not a pair")

    def fixint(self, what: str) -> int:
        """A positive fixint (0..127), the encoding of a message type."""
        marker = self._marker(what)
        if marker > 0x7F:
            raise DecodeError(f"{what} is not a small integer")
        return marker

    def uint(self, what: str) -> int:
        """A non-negative integer in any msgpack integer encoding (never a bool)."""
        marker = self._marker(what)
        if marker <= 0x7F:
            return marker
        fmt = _UINTS.get(marker)
        if fmt is not None:
            return self._unpack(fmt, what)
        fmt = _INTS.get(marker)
        if fmt is not None:
            value = self._unpack(fmt, what)
            if value >= 0:
                return value
        raise DecodeError(f"{what} is not an unsigned integer")

    def boolean(self, what: str) -> bool:
        marker = self._marker(what)
        if marker not in (0xC2, 0xC3):
            raise DecodeError(f"{what} is not a boolean")
        return marker == 0xC3

    def binary(self, limit: int, what: str, *, sizes: tuple[int, ...] | None = None,
               too_large: type[RemoteProtocolError] = DecodeError) -> bytes:
        """A ``bin`` of at most ``limit`` bytes (exactly one of ``sizes`` if given).

        Args:
            too_large: the error class for a value over ``limit``.
        """
        fmt = _BIN_LEN.get(self._marker(what))
        if fmt is None:
            raise DecodeError(f"{what} is not bytes")
        size = self._unpack(fmt, what)
        if size > limit:
            raise too_large(f"{what} is {size} bytes, more than {limit}")
        if sizes is not None and size not in sizes:
            raise DecodeError(f"{what} is {size} bytes, not {' or '.join(map(str, sizes))}")
        start = self._take(size, what)
        return bytes(self._data[start : start + size])

    def text(self, limit: int, what: str) -> str:
        """A UTF-8 ``str`` of at most ``limit`` characters (code points)."""
        marker = self._marker(what)
        if 0xA0 <= marker <= 0xBF:
            size = marker & 0x1F
        else:
            fmt = _STR_LEN.get(marker)
            if fmt is None:
                raise DecodeError(f"{what} is not text")
            size = self._unpack(fmt, what)
        if size > 4 * limit:  # UTF-8 needs at most 4 bytes per character
            raise DecodeError(f"{what} is longer than {limit} characters")
        start = self._take(size, what)
        try:
            value = bytes(self._data[start : start + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError(f"{what} is not valid UTF-8") from None
        if len(value) > limit:
            raise DecodeError(f"{what} is longer than {limit} characters")
        return value

    # ------------------------------------------------------------------ skipping

    def skip(self, count: int, what: str = "trailing fields") -> None:
        """Step over ``count`` values of any type without building them.

        Raises:
            DecodeError: more than :data:`MAX_SKIPPED_VALUES` values, nesting deeper
                than :data:`MAX_SKIP_DEPTH`, a reserved marker, or data cut short.
        """
        if count > MAX_SKIPPED_VALUES:
            raise DecodeError(f"{what}: more than {MAX_SKIPPED_VALUES} values")
        stack = [count]
        visited = 0
        while stack:
            if not stack[-1]:
                stack.pop()
                continue
            stack[-1] -= 1
            visited += 1
            children = self._skip_one(what)
            if children:
                if visited + children > MAX_SKIPPED_VALUES:
                    raise DecodeError(f"{what}: more than {MAX_SKIPPED_VALUES} values")
                if len(stack) >= MAX_SKIP_DEPTH:
                    raise DecodeError(f"{what}: nested deeper than {MAX_SKIP_DEPTH}")
                stack.append(children)

    def _skip_one(self, what: str) -> int:
        """Step over one value's own bytes; returns how many values it contains."""
        marker = self._marker(what)
        if marker <= 0x7F or marker >= 0xE0:  # fixints
            return 0
        if 0xA0 <= marker <= 0xBF:  # fixstr
            self._take(marker & 0x1F, what)
            return 0
        if 0x90 <= marker <= 0x9F:
            return marker & 0x0F
        if 0x80 <= marker <= 0x8F:
            return 2 * (marker & 0x0F)
        if marker in (0xDC, 0xDE):
            n = self._unpack(_U16, what)
            return n if marker == 0xDC else 2 * n
        if marker in (0xDD, 0xDF):
            n = self._unpack(_U32, what)
            return n if marker == 0xDD else 2 * n
        fixed = _FIXED.get(marker)
        if fixed is not None:
            self._take(fixed, what)
            return 0
        sized = _SIZED.get(marker)
        if sized is not None:
            fmt, extra = sized
            self._take(self._unpack(fmt, what) + extra, what)
            return 0
        raise DecodeError(f"{what} holds the reserved msgpack byte 0xc1")
