"""The messages of ``p2paid/1`` (``protocol/SPEC.md`` section 11.2) and their codec.

A message is a msgpack array ``[type, field, ...]``. Encoding is msgpack's; decoding
is strict (:mod:`p2paid.core.strictpack`): every container and string is checked against
its limit before it is read, nothing the schema lacks is built, and trailing fields
(room for later minor versions) are skipped within bounds. An unknown type, a
missing field or a field of the wrong type or size is a
:class:`~p2paid.errors.DecodeError`. :func:`check_head` checks the start of a message
as soon as it arrives, so that a body that cannot be valid is refused before the
rest of it is buffered.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, Union, final

import msgpack

from p2paid.core.checkpoint import MAX_CHECKPOINT_BYTES
from p2paid.core.envelope import MAX_ENVELOPE_BYTES
from p2paid.core.relayaddr import MAX_TOKEN_BYTES
from p2paid.core.strictpack import MAX_SKIPPED_VALUES, CutShort, StrictReader
from p2paid.errors import DecodeError, FrameTooLargeError

__all__ = [
    "CHECKPOINTS_VERSION",
    "HEAD_BYTES",
    "MAX_EVIDENCE_BYTES",
    "MAX_HELLO_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_SMALL_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Checkpoints",
    "Close",
    "Envelopes",
    "Evidence",
    "Hello",
    "HelloBoard",
    "Message",
    "Ping",
    "Pong",
    "Refused",
    "Vector",
    "check_head",
    "decode_message",
    "encode_message",
]

PROTOCOL_VERSION: Final = 1
#: The Hello version of a side that also takes Checkpoint messages (SPEC 8a, 12.3).
CHECKPOINTS_VERSION: Final = 2
#: Hard cap on one message (a batch of envelopes is kept well below it).
MAX_MESSAGE_BYTES: Final = 1024 * 1024


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
    """The sender's version vector for one board (``board`` = index in the sender's Hello).

    Each entry is ``(author, seq, tag)``: the highest contiguous seq held and the first
    :data:`TAG_BYTES` bytes of that envelope's hash (empty from a sender that sends
    none), so that two versions of one feed of equal length are told apart.
    """

    TYPE: ClassVar[int] = 2
    REQUIRED: ClassVar[int] = 2
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    #: 16,000 entries of 32 + 9 + 8 bytes (and msgpack framing) fit in one message.
    MAX_ENTRIES: ClassVar[int] = 16_000
    TAG_BYTES: ClassVar[int] = 8
    board: int
    entries: tuple[tuple[bytes, int, bytes], ...]

    def fields(self) -> list[Any]:
        return [self.board, [[a, s, t] if t else [a, s] for a, s, t in self.entries]]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Vector, int]:
        board = r.uint("vector board")
        entries = []
        for _ in range(r.array(cls.MAX_ENTRIES, "vector entries")):
            size = r.array(3, "vector entry")
            if size < 2:
                raise DecodeError("vector entry is not [author, seq, tag]")
            author = r.binary(32, "vector author", sizes=(32,))
            seq = r.uint("vector seq")
            tag = (r.binary(cls.TAG_BYTES, "vector tag", sizes=(cls.TAG_BYTES,))
                   if size == 3 else b"")
            entries.append((author, seq, tag))
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

    ``board`` is the board's id (also between nodes, whose Hellos list tags: both
    sides of a shared board know it), or empty when the notice is about the whole
    connection (``protocol/SPEC.md`` 11.2, 16.3).
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


@final
@dataclass(frozen=True, slots=True)
class Checkpoints:
    """Checkpoints of ``board`` (SPEC 8a), numbered and acknowledged as a batch."""

    TYPE: ClassVar[int] = 10
    REQUIRED: ClassVar[int] = 3
    MAX_BYTES: ClassVar[int] = MAX_MESSAGE_BYTES
    MAX_CHECKPOINTS: ClassVar[int] = 1024
    board: int
    batch: int
    checkpoints: tuple[bytes, ...] = field(repr=False)

    def fields(self) -> list[Any]:
        return [self.board, self.batch, list(self.checkpoints)]

    @classmethod
    def read(cls, r: StrictReader, count: int) -> tuple[Checkpoints, int]:
        board, batch = r.uint("checkpoints board"), r.uint("checkpoints batch")
        raws = tuple(r.binary(MAX_CHECKPOINT_BYTES, "checkpoint", too_large=FrameTooLargeError)
                     for _ in range(r.array(cls.MAX_CHECKPOINTS, "checkpoints")))
        return cls(board, batch, raws), cls.REQUIRED


Message = Union[Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close, Evidence,  # noqa: UP007
                Checkpoints]
_TYPES: Final[dict[int, Any]] = {
    cls.TYPE: cls
    for cls in (Hello, Vector, Envelopes, Ack, Ping, Pong, Refused, Close, Evidence,
                Checkpoints)
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
