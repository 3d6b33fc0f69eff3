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

from .envelope import MAX_ENVELOPE_BYTES
from .errors import (
    DecodeError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)
from .noise import MAX_MESSAGE_LEN, TAGLEN, HandshakeState, NoiseTransport
from .relayaddr import MAX_TOKEN_BYTES
from .strictpack import MAX_SKIPPED_VALUES, CutShort, StrictReader

__all__ = [
    "MAX_HELLO_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_QUEUED_EVENTS",
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
    "check_head",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION: Final = 1
#: Noise prologue: protocol name and major version.
PROLOGUE: Final = b"p2paid/1"
#: Hard cap on one message (a batch of envelopes is kept well below it).
MAX_MESSAGE_BYTES: Final = 1024 * 1024
_MAX_PLAINTEXT: Final = MAX_MESSAGE_LEN - TAGLEN
#: Messages decoded ahead of the caller taking them (the rest waits as bytes).
MAX_QUEUED_EVENTS: Final = 64
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


# ---------------------------------------------------------------------- messages
#
# Each message class knows its fields: ``fields()`` for the encoder (msgpack), and
# ``read(r, count)`` for the strict decoder, which reads the fields it knows of the
# ``count`` present (at least the required ones) through a StrictReader and never
# builds a value the schema does not have. It returns the message and how many
# fields it read; the rest are skipped.

#: Largest Hello (1,024 boards of 53 bytes, a token, and room for later fields).
MAX_HELLO_BYTES: Final = 64 * 1024
#: Largest message of the small kinds (Ack, Ping, Pong, Refused, Close).
MAX_SMALL_BYTES: Final = 16 * 1024
#: Largest Evidence message (two envelopes and room for later fields).
MAX_EVIDENCE_BYTES: Final = 256 * 1024


@final
@dataclass(frozen=True, slots=True)
class HelloBoard:
    """One board offered in a Hello: a tag (peers) or board id (relays), and a digest."""

    key: bytes  #: 32 bytes
    digest: bytes  #: 16 bytes


@final
@dataclass(frozen=True, slots=True)
class Hello:
    """First message each way: role, and the boards offered.

    ``token`` (optional 5th field) is a relay access token; a node sends it only to
    the relay it belongs to. A Hello without it is a Hello without a token.
    """

    TYPE: ClassVar[int] = 1
    REQUIRED: ClassVar[int] = 4
    MAX_BYTES: ClassVar[int] = MAX_HELLO_BYTES
    MAX_BOARDS: ClassVar[int] = 1024
    version: int
    role: str  #: "node" or "relay"
    by_id: bool  #: True when ``boards`` carry board ids (to or from a relay), False for tags
    boards: tuple[HelloBoard, ...]
    token: bytes | None = field(default=None, repr=False)

    def fields(self) -> list[Any]:
        out: list[Any] = [self.version, self.role, self.by_id,
                          [[b.key, b.digest] for b in self.boards]]
        if self.token is not None:
            out.append(self.token)
        return out

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Hello, int]:
        version = r.uint("hello version")
        role = r.text(16, "hello role")
        by_id = r.boolean("hello by_id")
        boards = []
        for _ in range(r.array(cls.MAX_BOARDS, "hello boards")):
            r.pair("hello board entry")
            key = r.binary(32, "hello board key", sizes=(32,))
            boards.append(HelloBoard(key, r.binary(16, "hello digest", sizes=(16,))))
        if count == cls.REQUIRED:
            return cls(version, role, by_id, tuple(boards)), count
        token = r.binary(MAX_TOKEN_BYTES, "hello token")
        return cls(version, role, by_id, tuple(boards), token), cls.REQUIRED + 1


@final
@dataclass(frozen=True, slots=True)
class Vector:
    """The sender's version vector for one board (``board`` = index in the sender's Hello)."""

    TYPE: ClassVar[int] = 2
    REQUIRED: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    #: 20,000 entries of 32 + 9 bytes fit in one message (MAX_MESSAGE_BYTES).
    MAX_ENTRIES: ClassVar[int] = 20_000
    board: int
    entries: tuple[tuple[bytes, int], ...]

    def fields(self) -> list[Any]:
        return [self.board, [[a, s] for a, s in self.entries]]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Vector, int]:
        board = r.uint("vector board")
        entries = []
        for _ in range(r.array(cls.MAX_ENTRIES, "vector entries")):
            r.pair("vector entry")
            author = r.binary(32, "vector author", sizes=(32,))
            entries.append((author, r.uint("vector seq")))
        return cls(board, tuple(entries)), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Envelopes:
    """A batch of envelopes of one board; the receiver acknowledges ``batch``."""

    TYPE: ClassVar[int] = 3
    REQUIRED: ClassVar[int] = 3
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    MAX_ENVELOPES: ClassVar[int] = 10_000
    board: int
    batch: int
    envelopes: tuple[bytes, ...] = field(repr=False)

    def fields(self) -> list[Any]:
        return [self.board, self.batch, list(self.envelopes)]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Envelopes, int]:
        board, batch = r.uint("envelopes board"), r.uint("envelopes batch")
        envs = tuple(r.binary(MAX_ENVELOPE_BYTES, "envelope", too_large=FrameTooLargeError)
                     for _ in range(r.array(cls.MAX_ENVELOPES, "envelopes")))
        return cls(board, batch, envs), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver processed batch ``batch`` of ``board`` (flow control)."""

    TYPE: ClassVar[int] = 4
    REQUIRED: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES
    board: int
    batch: int

    def fields(self) -> list[Any]:
        return [self.board, self.batch]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Ack, int]:
        return cls(r.uint("ack board"), r.uint("ack batch")), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Ping:
    TYPE: ClassVar[int] = 5
    REQUIRED: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES
    nonce: int

    def fields(self) -> list[Any]:
        return [self.nonce]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Ping, int]:
        return cls(r.uint("ping nonce")), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Pong:
    TYPE: ClassVar[int] = 6
    REQUIRED: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES
    nonce: int

    def fields(self) -> list[Any]:
        return [self.nonce]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Pong, int]:
        return cls(r.uint("pong nonce")), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Refused:
    """The sender refused something (a relay limit, say) and stays connected.

    ``board`` is the board's Hello key (its id, between a node and a relay), or
    empty when the notice is about the whole connection.
    """

    TYPE: ClassVar[int] = 7
    REQUIRED: ClassVar[int] = 3
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES
    board: bytes
    code: str
    text: str

    def fields(self) -> list[Any]:
        return [self.board, self.code, self.text]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Refused, int]:
        board = r.binary(32, "refused board key", sizes=(0, 32))
        code, text = r.text(64, "refused code"), r.text(1000, "refused text")
        return cls(board, code, text), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Close:
    """The sender is closing the connection, and why."""

    TYPE: ClassVar[int] = 8
    REQUIRED: ClassVar[int] = 1
    MAX_BYTES: ClassVar[int] = MAX_SMALL_BYTES
    reason: str

    def fields(self) -> list[Any]:
        return [self.reason]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Close, int]:
        return cls(r.text(200, "close reason")), cls.REQUIRED


@final
@dataclass(frozen=True, slots=True)
class Evidence:
    """Proof that an author forked: two validly signed envelopes at one ``(author, seq)``
    of ``board`` (an index in the sender's Hello)."""

    TYPE: ClassVar[int] = 9
    REQUIRED: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = MAX_EVIDENCE_BYTES
    board: int
    envelopes: tuple[bytes, bytes] = field(repr=False)

    def fields(self) -> list[Any]:
        return [self.board, list(self.envelopes)]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Evidence, int]:
        board = r.uint("evidence board")
        if r.array(2, "evidence envelopes") != 2:
            raise DecodeError("evidence carries exactly two envelopes")
        first, second = (
            r.binary(MAX_ENVELOPE_BYTES, "evidence envelope", too_large=FrameTooLargeError)
            for _ in range(2))
        return cls(board, (first, second)), cls.REQUIRED


Message = Union[Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close, Evidence]  # noqa: UP007
_TYPES: Final[dict[int, Any]] = {
    cls.TYPE: cls
    for cls in (Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close, Evidence)
}


def encode_message(message: Message) -> bytes:
    """msgpack body of one message (without the length prefix)."""
    return msgpack.packb([message.TYPE, *message.fields()], use_bin_type=True)  # type: ignore[no-any-return]


#: How much of a message's start :func:`check_head` reads.
HEAD_BYTES: Final = 96


def check_head(head: bytes | bytearray | memoryview, length: int) -> None:
    """Check the first bytes of a message body whose length prefix says ``length``,
    before the rest arrives (SPEC 11.2): it must be a typed array of a known type,
    ``length`` within that type's limit, and its first fields (up to the header of
    its first container: the envelopes, the entries, the boards) well-formed.

    Raises:
        DecodeError: what is there already breaks the schema (a map, say).
        FrameTooLargeError: ``length`` is over the type's limit.
    """
    r = StrictReader(head)
    try:
        count = r.array(MAX_SKIPPED_VALUES, "message")
        if not count:
            raise DecodeError("message is not a typed array")
        type_code = r.fixint("message type")
        kind = _TYPES.get(type_code)
        if kind is None:
            raise DecodeError(f"unknown message type {type_code}")
        if length > kind.MAX_BYTES:
            raise FrameTooLargeError(f"message of type {type_code} and {length} bytes, "
                                     f"over its limit of {kind.MAX_BYTES}")
        if count - 1 < kind.REQUIRED:
            raise DecodeError(f"message type {type_code} is missing fields")
        kind.read(r, count - 1)
    except CutShort:
        return  # valid as far as it goes


def decode_message(body: bytes | bytearray | memoryview) -> Message:
    """Decode one message body with the strict reader (SPEC 11.2).

    Raises:
        DecodeError: not a typed array, unknown type, missing or ill-typed fields,
            a container or string over its limit, or bytes after the message.
        FrameTooLargeError: an envelope over MAX_ENVELOPE_BYTES.
    """
    r = StrictReader(body)
    count = r.array(MAX_SKIPPED_VALUES, "message")
    if not count:
        raise DecodeError("message is not a typed array")
    type_code = r.fixint("message type")
    kind = _TYPES.get(type_code)
    if kind is None:
        raise DecodeError(f"unknown message type {type_code}")
    fields = count - 1
    if fields < kind.REQUIRED:
        raise DecodeError(f"message type {type_code} is missing fields")
    message, read = kind.read(r, fields)
    r.skip(fields - read)
    if not r.at_end:
        raise DecodeError("bytes after the end of the message")
    parsed: Message = message
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
        hello_first: apply SPEC 11.2's rule that messages before the peer's Hello are
            at most MAX_HELLO_BYTES (off only for tests of the framing alone).

    What one connection can make its process hold: a partial frame (< 64 KiB), one
    read's worth of plaintext, one partial message (at most its type's limit, and at
    most MAX_HELLO_BYTES before the peer's Hello) and MAX_QUEUED_EVENTS decoded
    messages.
    """

    def __init__(
        self,
        initiator: bool,
        node_key: X25519PrivateKey,
        *,
        expected_remote: bytes | None = None,
        prologue: bytes = PROLOGUE,
        hello_first: bool = True,
    ) -> None:
        self.initiator = initiator
        self._hello_first = hello_first
        self._peer_hello = False
        self._closed = False
        #: the start of the message being received was checked (check_head)
        self._head_checked = False
        self._hs: HandshakeState | None = HandshakeState(initiator, node_key, prologue)
        self._expected = expected_remote
        self._transport: NoiseTransport | None = None
        self._inbuf = bytearray()
        self._plain = bytearray()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._eof = False
        #: why the channel died: (error class, message, close reason)
        self._failed: tuple[type[RemoteProtocolError], str, str] | None = None
        self._raise_later: RemoteProtocolError | None = None
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
            kind, text, reason = self._failed
            raise kind(text, close_reason=reason)
        if self._eof:
            raise LocalProtocolError("receive_data after the end of the stream")
        if not data:
            self._eof = True
        self.bytes_in += len(data)
        self._inbuf += data
        try:
            self._process()
            self._decode_some()
        except RemoteProtocolError as exc:
            self._fail(exc)
            raise

    def next_event(self) -> Event | _NeedData:
        """The next event, or :data:`NEED_DATA`.

        At most :data:`MAX_QUEUED_EVENTS` messages are decoded ahead; the rest of what
        arrived stays as bytes until they are taken, so one read of many tiny
        messages never turns into a heap of objects.

        Raises:
            RemoteProtocolError: a message decoded late breaks the protocol (the
                channel is then dead; later calls return :data:`NEED_DATA`).
        """
        if not self._events and self._failed is None:
            try:
                self._decode_some()
            except RemoteProtocolError as exc:
                # Messages before the bad one are delivered first.
                self._fail(exc)
                self._raise_later = exc
        if self._events:
            return self._events.popleft()
        if self._raise_later is not None:
            error, self._raise_later = self._raise_later, None
            raise error
        return NEED_DATA

    def _fail(self, exc: RemoteProtocolError) -> None:
        """The channel is dead: remember why, and free the buffers at once.

        Only a description of the error is kept, never the exception: its traceback
        refers to the frames that hold this channel and the bytes just read, and such
        a cycle lives until the cyclic collector runs (a flood of failing connections
        then holds a megabyte each).
        """
        self._failed = (type(exc), str(exc), exc.close_reason)
        self._inbuf.clear()
        self._plain.clear()

    @property
    def buffered_bytes(self) -> int:
        """Bytes received and held until they form a whole frame or message."""
        return len(self._inbuf) + len(self._plain)

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
        if self._eof and (self._inbuf or self._transport is None):
            raise DecodeError("connection closed in the middle of a frame or handshake")

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

    def _decode_some(self) -> None:
        """Decode whole messages from the plaintext until the queue holds
        MAX_QUEUED_EVENTS; refuse a message by its length and first bytes as soon as
        they arrive (SPEC 11.2), before the rest of it is buffered."""
        if self._transport is None or self._closed:
            return
        plain = self._plain
        pos = 0
        try:
            while len(self._events) < MAX_QUEUED_EVENTS and len(plain) - pos >= 4:
                (length,) = _U32.unpack_from(plain, pos)
                self._check_start(length, plain, pos + 4)
                if len(plain) - pos - 4 < length:
                    break
                self._head_checked = False
                with memoryview(plain) as view, view[pos + 4 : pos + 4 + length] as body:
                    message = decode_message(body)
                pos += 4 + length
                if isinstance(message, Hello):
                    self._peer_hello = True
                self._events.append(MessageReceived(message))
        finally:
            del plain[:pos]
        if self._eof and len(self._events) < MAX_QUEUED_EVENTS:
            if plain:
                raise DecodeError("connection closed in the middle of a message")
            self._closed = True
            self._events.append(ConnectionClosed())

    def _check_start(self, length: int, plain: bytearray, at: int) -> None:
        """Refuse a message by its length and first bytes as soon as they are here."""
        if self._head_checked:
            return
        if length == 0:
            raise DecodeError("empty message")
        cap = MAX_MESSAGE_BYTES if self._peer_hello or not self._hello_first else (
            MAX_HELLO_BYTES)
        if length > cap:
            raise FrameTooLargeError(f"message length {length} over {cap}"
                                     + ("" if cap == MAX_MESSAGE_BYTES else " before a hello"))
        wanted = min(length, HEAD_BYTES)
        head = plain[at : at + wanted]
        check_head(head, length)
        self._head_checked = len(head) == wanted
