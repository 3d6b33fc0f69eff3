"""Framing and messages over a Noise channel, sans-I/O (``protocol/SPEC.md`` section 11).

Byte layout on the TCP stream::

    frame    = length(2, big-endian, 1..65535) || Noise message
    (the first three frames are the XX handshake; every later frame is a
     Noise transport message whose plaintext is a slice of the message stream)
    stream   = message*
    message  = length(4, big-endian, 1..MAX_MESSAGE_BYTES) || msgpack array

The messages themselves and their strict codec are in :mod:`p2paid.core.messages`
(re-exported here). The channel checks each message's length and first bytes as
they arrive, allows at most MAX_HELLO_BYTES before the peer's Hello, and decodes at
most MAX_QUEUED_EVENTS messages ahead of its caller.

:class:`SecureChannel` follows h11's shape: feed it bytes with
:meth:`~SecureChannel.receive_data` (``b""`` = EOF), pull events with
:meth:`~SecureChannel.next_event`, and write out whatever
:meth:`~SecureChannel.data_to_send` returns.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import Final, final

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2paid.core.codes import CloseReason
from p2paid.core.messages import (
    CHECKPOINTS_VERSION,
    HEAD_BYTES,
    MAX_HELLO_BYTES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Checkpoints,
    Close,
    Envelopes,
    Evidence,
    Hello,
    HelloBoard,
    Message,
    Ping,
    Pong,
    Refused,
    Vector,
    check_head,
    decode_message,
    encode_message,
)
from p2paid.core.noise import MAX_MESSAGE_LEN, TAGLEN, HandshakeState, NoiseTransport
from p2paid.errors import (
    DecodeError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = [  # the messages are re-exported: most callers need both
    "CHECKPOINTS_VERSION",
    "MAX_HELLO_BYTES",
    "MAX_MESSAGE_BYTES",
    "MAX_QUEUED_EVENTS",
    "NEED_DATA",
    "PROLOGUE",
    "PROTOCOL_VERSION",
    "Ack",
    "Checkpoints",
    "Close",
    "ConnectionClosed",
    "Envelopes",
    "Evidence",
    "HandshakeComplete",
    "Hello",
    "HelloBoard",
    "Message",
    "MessageReceived",
    "NeedData",
    "Ping",
    "Pong",
    "Refused",
    "SecureChannel",
    "Vector",
    "check_head",
    "decode_message",
    "encode_message",
]

#: Noise prologue: protocol name and major version.
PROLOGUE: Final = b"p2paid/1"
_MAX_PLAINTEXT: Final = MAX_MESSAGE_LEN - TAGLEN
#: Messages decoded ahead of the caller taking them (the rest waits as bytes).
MAX_QUEUED_EVENTS: Final = 64
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


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


class NeedData:
    """The type of :data:`NEED_DATA` (there is one instance)."""

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by :meth:`SecureChannel.next_event` when more bytes are needed.
NEED_DATA: Final = NeedData()
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

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

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

    def next_event(self) -> Event | NeedData:
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
                                     close_reason=CloseReason.WRONG_KEY)
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
