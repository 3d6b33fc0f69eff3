"""Framing and messages over a Noise channel, sans-I/O (``protocol/SPEC.md`` section 11).

Byte layout on the TCP stream::

    frame    = length(2, big-endian, 1..65535) || Noise message
    (the first three frames are the XX handshake; every later frame is a
     Noise transport message whose plaintext is a slice of the message stream)
    stream   = message*
    message  = length(4, big-endian, 1..MAX_MESSAGE_BYTES) || msgpack array

A message is a msgpack array ``[type, field, ...]``; receivers ignore extra
trailing fields (room for later minor versions) and treat an unknown type, a
missing field or a field of the wrong type as a :class:`RemoteProtocolError`.

:class:`SecureChannel` follows h11's shape: feed it bytes with
:meth:`~SecureChannel.receive_data` (``b""`` = EOF), pull events with
:meth:`~SecureChannel.next_event`, and write out whatever
:meth:`~SecureChannel.data_to_send` returns.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Union, final

import msgpack
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .errors import (
    DecodeError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from .noise import MAX_MESSAGE_LEN, TAGLEN, HandshakeState, NoiseTransport

__all__ = [
    "MAX_MESSAGE_BYTES",
    "NEED_DATA",
    "PROLOGUE",
    "Ack",
    "Close",
    "ConnectionClosed",
    "Envelopes",
    "Evidence",
    "HandshakeComplete",
    "Hello",
    "HelloBoard",
    "Message",
    "MessageReceived",
    "Ping",
    "Pong",
    "Refused",
    "SecureChannel",
    "Vector",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION: Final = 1
#: Noise prologue: protocol name and major version.
PROLOGUE: Final = b"p2paid/1"
#: Hard cap on one message (a batch of envelopes is kept well below it).
MAX_MESSAGE_BYTES: Final = 1024 * 1024
_MAX_PLAINTEXT: Final = MAX_MESSAGE_LEN - TAGLEN
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# ---------------------------------------------------------------------- messages


def _bytes(value: Any, size: int | None = None) -> bytes:
    if not isinstance(value, bytes) or (size is not None and len(value) != size):
        raise DecodeError("message field is not the right bytes")
    return value


def _uint(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DecodeError("message field is not an unsigned integer")
    return value


def _str(value: Any, limit: int = 1000) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise DecodeError("message field is not a short string")
    return value


def _list(value: Any, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise DecodeError("message field is not a list within its limit")
    return value


@final
@dataclass(frozen=True, slots=True)
class HelloBoard:
    """One board offered in a Hello: a tag (peers) or board id (relays), and a digest."""

    key: bytes  #: 32 bytes
    digest: bytes  #: 16 bytes


@final
@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: role, and the boards offered."""

    TYPE: ClassVar[int] = 1
    version: int
    role: str  #: "node" or "relay"
    by_id: bool  #: True when ``boards`` carry board ids (to or from a relay), False for tags
    boards: tuple[HelloBoard, ...]
    MAX_BOARDS: ClassVar[int] = 1024

    def fields(self) -> list[Any]:
        return [self.version, self.role, self.by_id, [[b.key, b.digest] for b in self.boards]]

    @classmethod
    def parse(cls, f: list[Any]) -> Hello:
        boards = []
        for entry in _list(f[3], cls.MAX_BOARDS):
            pair = _list(entry, 2)
            if len(pair) != 2:
                raise DecodeError("hello board entry is not a pair")
            boards.append(HelloBoard(_bytes(pair[0], 32), _bytes(pair[1], 16)))
        if not isinstance(f[2], bool):
            raise DecodeError("hello by_id is not a boolean")
        return cls(_uint(f[0]), _str(f[1], 16), f[2], tuple(boards))


@final
@dataclass(frozen=True, slots=True)
class Vector:
    """The sender's version vector for one board (``board`` = index in the sender's Hello).

    Each entry is ``(author, seq, tag)``: the highest contiguous seq held and the first
    :data:`TAG_BYTES` bytes of that envelope's hash (empty from a sender that sends
    none), so that two versions of one feed of equal length are told apart.
    """

    TYPE: ClassVar[int] = 2
    board: int
    entries: tuple[tuple[bytes, int, bytes], ...]
    #: 16,000 entries of 32 + 9 + 8 bytes (and msgpack framing) fit in one message.
    MAX_ENTRIES: ClassVar[int] = 16_000
    TAG_BYTES: ClassVar[int] = 8

    def fields(self) -> list[Any]:
        return [self.board, [[a, s, t] if t else [a, s] for a, s, t in self.entries]]

    @classmethod
    def parse(cls, f: list[Any]) -> Vector:
        entries = []
        for entry in _list(f[1], cls.MAX_ENTRIES):
            triple = _list(entry, 3)
            if len(triple) < 2:
                raise DecodeError("vector entry is not [author, seq, tag]")
            tag = _bytes(triple[2], cls.TAG_BYTES) if len(triple) == 3 else b""
            entries.append((_bytes(triple[0], 32), _uint(triple[1]), tag))
        return cls(_uint(f[0]), tuple(entries))


@final
@dataclass(frozen=True, slots=True)
class Envelopes:
    """A batch of envelopes of one board; the receiver acknowledges ``batch``."""

    TYPE: ClassVar[int] = 3
    board: int
    batch: int
    envelopes: tuple[bytes, ...] = field(repr=False)
    MAX_ENVELOPES: ClassVar[int] = 10_000

    def fields(self) -> list[Any]:
        return [self.board, self.batch, list(self.envelopes)]

    @classmethod
    def parse(cls, f: list[Any]) -> Envelopes:
        envs = tuple(_bytes(e) for e in _list(f[2], cls.MAX_ENVELOPES))
        return cls(_uint(f[0]), _uint(f[1]), envs)


@final
@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver processed batch ``batch`` of ``board`` (flow control)."""

    TYPE: ClassVar[int] = 4
    board: int
    batch: int

    def fields(self) -> list[Any]:
        return [self.board, self.batch]

    @classmethod
    def parse(cls, f: list[Any]) -> Ack:
        return cls(_uint(f[0]), _uint(f[1]))


@final
@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 5
    nonce: int

    def fields(self) -> list[Any]:
        return [self.nonce]

    @classmethod
    def parse(cls, f: list[Any]) -> Ping:
        return cls(_uint(f[0]))


@final
@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[int] = 6
    nonce: int

    def fields(self) -> list[Any]:
        return [self.nonce]

    @classmethod
    def parse(cls, f: list[Any]) -> Pong:
        return cls(_uint(f[0]))


@final
@dataclass(frozen=True, slots=True)
class Refused:
    """The sender refused something (a relay limit, say) and stays connected.

    ``board`` is the board's Hello key (its id, between a node and a relay), or
    empty when the notice is about the whole connection.
    """

    TYPE: ClassVar[int] = 7
    board: bytes
    code: str
    text: str

    def fields(self) -> list[Any]:
        return [self.board, self.code, self.text]

    @classmethod
    def parse(cls, f: list[Any]) -> Refused:
        board = _bytes(f[0])
        if len(board) not in (0, 32):
            raise DecodeError("refused board key is not 32 bytes")
        return cls(board, _str(f[1], 64), _str(f[2]))


@final
@dataclass(frozen=True, slots=True)
class Close:
    """The sender is closing the connection, and why."""

    TYPE: ClassVar[int] = 8
    reason: str

    def fields(self) -> list[Any]:
        return [self.reason]

    @classmethod
    def parse(cls, f: list[Any]) -> Close:
        return cls(_str(f[0], 200))


@final
@dataclass(frozen=True, slots=True)
class Evidence:
    """Proof that an author forked: two envelopes of one ``(author, seq)``, both validly
    signed (``board`` = index in the sender's Hello)."""

    TYPE: ClassVar[int] = 9
    board: int
    envelopes: tuple[bytes, bytes] = field(repr=False)

    def fields(self) -> list[Any]:
        return [self.board, list(self.envelopes)]

    @classmethod
    def parse(cls, f: list[Any]) -> Evidence:
        pair = _list(f[1], 2)
        if len(pair) != 2:
            raise DecodeError("evidence is not two envelopes")
        return cls(_uint(f[0]), (_bytes(pair[0]), _bytes(pair[1])))


Message = Union[Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close, Evidence]  # noqa: UP007
_TYPES: Final[dict[int, Any]] = {
    cls.TYPE: cls for cls in (Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close,
                              Evidence)
}
_ARITY: Final = {Hello.TYPE: 4, Vector.TYPE: 2, Envelopes.TYPE: 3, Ack.TYPE: 2, Ping.TYPE: 1,
                 Pong.TYPE: 1, Refused.TYPE: 3, Close.TYPE: 1, Evidence.TYPE: 2}


def encode_message(message: Message) -> bytes:
    """msgpack body of one message (without the length prefix)."""
    return msgpack.packb([message.TYPE, *message.fields()], use_bin_type=True)  # type: ignore[no-any-return]


def decode_message(body: bytes) -> Message:
    """Decode one message body.

    Raises:
        DecodeError: malformed msgpack, unknown type, missing or ill-typed fields.
    """
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException) as exc:
        raise DecodeError("message is not valid msgpack") from exc
    if not isinstance(value, list) or not value or type(value[0]) is not int:
        raise DecodeError("message is not a typed array")
    kind = _TYPES.get(value[0])
    if kind is None:
        raise DecodeError(f"unknown message type {value[0]}")
    if len(value) - 1 < _ARITY[value[0]]:
        raise DecodeError(f"message type {value[0]} is missing fields")
    parsed: Message = kind.parse(value[1:])
    return parsed


# ---------------------------------------------------------------------- events


@final
@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    remote_static: bytes  #: the peer's node id
    handshake_hash: bytes  #: channel binding


@final
@dataclass(frozen=True, slots=True)
class MessageReceived:
    message: Message


@final
@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF) at a clean message boundary."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`SecureChannel.next_event` when more bytes are needed.
NEED_DATA: Final = _NeedData()
Event = HandshakeComplete | MessageReceived | ConnectionClosed


# ---------------------------------------------------------------------- channel


@final
class SecureChannel:
    """Noise XX handshake, then framed, encrypted messages. Sans-I/O.

    Args:
        initiator: True on the side that dialled.
        node_key: our static X25519 key.
        expected_remote: for a dialler that knows whom it calls (a pinned relay, a
            known peer): abort before revealing our identity if the responder's
            node id differs.
    """

    def __init__(
        self,
        initiator: bool,
        node_key: X25519PrivateKey,
        *,
        expected_remote: bytes | None = None,
        prologue: bytes = PROLOGUE,
    ) -> None:
        self.initiator = initiator
        self._hs: HandshakeState | None = HandshakeState(initiator, node_key, prologue)
        self._expected = expected_remote
        self._transport: NoiseTransport | None = None
        self._inbuf = bytearray()
        self._plain = bytearray()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._eof = False
        self._failed: RemoteProtocolError | None = None
        self.remote_static: bytes | None = None
        self.handshake_hash: bytes | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        if initiator:
            self._send_frame(self._hs.write_message(b""))

    @property
    def is_open(self) -> bool:
        """True once the handshake completed (messages can be sent)."""
        return self._transport is not None

    # -------------------------------------------------------------- output

    def _send_frame(self, noise_message: bytes) -> None:
        frame = _U16.pack(len(noise_message)) + noise_message
        self.bytes_out += len(frame)
        self._out.append(frame)

    def data_to_send(self) -> bytes:
        """Bytes to write to the socket now (possibly empty)."""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def send(self, message: Message) -> None:
        """Queue one message; fetch the bytes with :meth:`data_to_send`.

        Raises:
            LocalProtocolError: before the handshake completed, or message too large.
        """
        if self._transport is None:
            raise LocalProtocolError("cannot send messages before the handshake completed")
        body = encode_message(message)
        if len(body) > MAX_MESSAGE_BYTES:
            raise LocalProtocolError(f"message of {len(body)} bytes exceeds the cap")
        stream = _U32.pack(len(body)) + body
        for start in range(0, len(stream), _MAX_PLAINTEXT):
            self._send_frame(self._transport.encrypt(stream[start : start + _MAX_PLAINTEXT]))

    # -------------------------------------------------------------- input

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes read from the socket; ``b""`` means the peer closed.

        Raises:
            RemoteProtocolError: the bytes break the protocol (the channel is then dead).
        """
        if self._failed is not None:
            raise self._failed
        if self._eof:
            raise LocalProtocolError("receive_data after the end of the stream")
        if not data:
            self._eof = True
        self.bytes_in += len(data)
        self._inbuf += data
        try:
            self._process()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`."""
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def _frames(self) -> list[bytes]:
        frames = []
        buf = self._inbuf
        pos = 0
        while len(buf) - pos >= 2:
            (length,) = _U16.unpack_from(buf, pos)
            if length == 0:
                raise DecodeError("empty frame")
            if len(buf) - pos - 2 < length:
                break
            frames.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        del buf[:pos]
        return frames

    def _process(self) -> None:
        for frame in self._frames():
            if self._transport is None:
                self._handshake(frame)
            else:
                self._plain += self._transport.decrypt(frame)
                self._messages()
        if self._eof:
            if self._inbuf or self._plain or self._transport is None:
                raise DecodeError("connection closed in the middle of a frame or handshake")
            self._events.append(ConnectionClosed())

    def _handshake(self, frame: bytes) -> None:
        hs = self._hs
        assert hs is not None
        try:
            hs.read_message(frame)
            if self.initiator and self._expected is not None and hs.rs != self._expected:
                raise HandshakeError("the peer's node key is not the one expected",
                                     close_reason="wrong-key")
            if not hs.complete:
                self._send_frame(hs.write_message(b""))
        except HandshakeError:
            raise
        except RemoteProtocolError as exc:
            raise HandshakeError(f"handshake failed: {exc}") from exc
        if hs.complete:
            self._transport = hs.to_transport()
            self.remote_static = self._transport.remote_static
            self.handshake_hash = self._transport.handshake_hash
            self._hs = None
            self._events.append(HandshakeComplete(self.remote_static, self.handshake_hash))

    def _messages(self) -> None:
        plain = self._plain
        pos = 0
        while len(plain) - pos >= 4:
            (length,) = _U32.unpack_from(plain, pos)
            if length == 0:
                raise DecodeError("empty message")
            if length > MAX_MESSAGE_BYTES:
                raise FrameTooLargeError(f"message length {length} over {MAX_MESSAGE_BYTES}")
            if len(plain) - pos - 4 < length:
                break
            body = bytes(plain[pos + 4 : pos + 4 + length])
            pos += 4 + length
            self._events.append(MessageReceived(decode_message(body)))
        del plain[:pos]
