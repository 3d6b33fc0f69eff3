"""p2paid.core.wire: message codecs, the Noise-framed :class:`SecureChannel`, and its failures.

What this file proves:

* every message type survives ``encode_message``/``decode_message`` and a real
  initiator/responder channel pair in both directions, whatever the chunking of the
  byte stream (one byte at a time, random splits, all at once), including messages
  that span many Noise frames up to exactly ``MAX_MESSAGE_BYTES``;
* garbage (random bytes, random msgpack values, mutated encodings, junk frames,
  truncated streams, flipped bytes) only ever raises :class:`RemoteProtocolError`
  subclasses, and a failed channel stays failed;
* API misuse raises :class:`LocalProtocolError`, and a dialler that pins the
  responder's key aborts before it reveals its own identity (no third frame).

A :class:`RawPeer` speaks the protocol by hand (``p2paid.core.noise.HandshakeState`` plus
framing written from the module docstring), so tests can put any plaintext into a
correctly encrypted frame and check the receiver's message-layer limits.
"""

from __future__ import annotations

import contextlib
import random
import struct
import tracemalloc
from collections.abc import Sequence
from typing import Any

import msgpack
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2paid.core.envelope import MAX_ENVELOPE_BYTES
from p2paid.core.noise import MAX_MESSAGE_LEN, TAGLEN, HandshakeState, NoiseTransport
from p2paid.core.wire import (
    MAX_HELLO_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_QUEUED_EVENTS,
    NEED_DATA,
    PROLOGUE,
    Ack,
    Close,
    ConnectionClosed,
    Envelopes,
    Evidence,
    HandshakeComplete,
    Hello,
    HelloBoard,
    Message,
    MessageReceived,
    Ping,
    Pong,
    Refused,
    SecureChannel,
    Vector,
    check_head,
    decode_message,
    encode_message,
)
from p2paid.errors import (
    DecodeError,
    DecryptError,
    FrameTooLargeError,
    HandshakeError,
    LocalProtocolError,
    RemoteProtocolError,
)

# Fixed static keys keep hypothesis examples cheap (ephemerals are fresh per handshake).
INIT_KEY = X25519PrivateKey.generate()
RESP_KEY = X25519PrivateKey.generate()
OTHER_KEY = X25519PrivateKey.generate()
MAX_PLAINTEXT = MAX_MESSAGE_LEN - TAGLEN
U16 = struct.Struct(">H")
U32 = struct.Struct(">I")
#: The frame sizes of the three XX handshake messages with empty payloads (section 10.4).
HANDSHAKE_FRAME_SIZES = (2 + 32, 2 + 32 + 48 + 16, 2 + 48 + 16)

Event = HandshakeComplete | MessageReceived | ConnectionClosed


def _pub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


# --------------------------------------------------------------------- strategies

UINT64 = st.integers(min_value=0, max_value=2**64 - 1)
SMALL_UINT = st.integers(min_value=0, max_value=2**32)


def _text(max_size: int) -> st.SearchStrategy[str]:
    # msgpack needs encodable str; the decoder's limits count code points.
    return st.text(st.characters(codec="utf-8"), max_size=max_size)


HELLO_BOARDS = st.builds(
    HelloBoard, st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16)
)
MESSAGES: st.SearchStrategy[Message] = st.one_of(
    st.builds(
        Hello,
        version=UINT64,
        role=_text(16),
        by_id=st.booleans(),
        boards=st.lists(HELLO_BOARDS, max_size=12).map(tuple),
        token=st.none() | st.binary(max_size=64),
    ),
    st.builds(
        Vector,
        board=UINT64,
        entries=st.lists(
            st.tuples(st.binary(min_size=32, max_size=32), UINT64,
                      st.just(b"") | st.binary(min_size=8, max_size=8)), max_size=40
        ).map(tuple),
    ),
    st.builds(
        Envelopes,
        board=UINT64,
        batch=UINT64,
        envelopes=st.lists(st.binary(max_size=400), max_size=20).map(tuple),
    ),
    st.builds(Ack, board=UINT64, batch=UINT64),
    st.builds(Ping, nonce=UINT64),
    st.builds(Pong, nonce=UINT64),
    st.builds(
        Refused,
        board=st.just(b"") | st.binary(min_size=32, max_size=32),
        code=_text(64),
        text=_text(1000),
    ),
    st.builds(Close, reason=_text(200)),
    st.builds(Evidence, board=UINT64,
              envelopes=st.tuples(st.binary(max_size=400), st.binary(max_size=400))),
)

#: A chunking of a byte stream: "all" at once, one byte at a time, or cycled split sizes.
CHUNKINGS: st.SearchStrategy[Any] = st.one_of(
    st.just("all"),
    st.just("bytes"),
    st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=8),
)

#: Any value msgpack can carry (str map keys only: the decoder uses strict_map_key).
MSGPACK_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | _text(40)
    | st.binary(max_size=40),
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(_text(8), children, max_size=4),
    max_leaves=30,
)


def chunks(data: bytes, chunking: Any) -> list[bytes]:
    """Split ``data`` per a :data:`CHUNKINGS` value (never yields an empty chunk)."""
    if not data:
        return []
    if chunking == "all":
        return [data]
    if chunking == "bytes":
        return [data[i : i + 1] for i in range(len(data))]
    out: list[bytes] = []
    pos = 0
    i = 0
    while pos < len(data):
        size = chunking[i % len(chunking)]
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


# --------------------------------------------------------------------- channel helpers


def drain_events(channel: SecureChannel) -> list[Event]:
    """Every event the channel has ready."""
    events: list[Event] = []
    while True:
        event = channel.next_event()
        if event is NEED_DATA:
            return events
        assert isinstance(event, HandshakeComplete | MessageReceived | ConnectionClosed)
        events.append(event)


def transfer(src: SecureChannel, dst: SecureChannel, chunking: Any = "all") -> list[Event]:
    """Move everything ``src`` has to send into ``dst``; return ``dst``'s new events."""
    events: list[Event] = []
    for chunk in chunks(src.data_to_send(), chunking):
        dst.receive_data(chunk)
        events.extend(drain_events(dst))
    return events


HELLO = Hello(1, "node", False, ())


def open_pair(
    chunking: Any = "all", *, expected_remote: bytes | None = None
) -> tuple[SecureChannel, SecureChannel]:
    """An initiator and a responder channel that completed the handshake."""
    init = SecureChannel(True, INIT_KEY, expected_remote=expected_remote)
    resp = SecureChannel(False, RESP_KEY)
    assert transfer(init, resp, chunking) == []
    init_events = transfer(resp, init, chunking)
    resp_events = transfer(init, resp, chunking)
    assert init.is_open and resp.is_open
    h = init.handshake_hash
    assert h is not None and len(h) == 32 and h == resp.handshake_hash
    assert init_events == [HandshakeComplete(_pub(RESP_KEY), h)]
    assert resp_events == [HandshakeComplete(_pub(INIT_KEY), h)]
    return init, resp


def greeted_pair(chunking: Any = "all") -> tuple[SecureChannel, SecureChannel]:
    """:func:`open_pair`, then a Hello each way (big messages are allowed only after
    the peer's Hello, SPEC 11.2)."""
    init, resp = open_pair(chunking)
    for src, dst in ((init, resp), (resp, init)):
        src.send(HELLO)
        assert transfer(src, dst) == [MessageReceived(HELLO)]
    return init, resp


class RawPeer:
    """The protocol written out by hand from ``p2paid/wire.py``'s docstring.

    Noise comes from :class:`p2paid.core.noise.HandshakeState` (itself checked against
    independent implementations in ``test_noise.py``); the framing is rebuilt here, so
    a test can encrypt any plaintext, including a broken message stream.
    """

    def __init__(self, initiator: bool, key: X25519PrivateKey = OTHER_KEY) -> None:
        self.hs = HandshakeState(initiator, key, PROLOGUE)
        self.transport: NoiseTransport | None = None

    @staticmethod
    def frame(noise_message: bytes) -> bytes:
        return U16.pack(len(noise_message)) + noise_message

    @staticmethod
    def unframe(data: bytes) -> list[bytes]:
        frames = []
        while data:
            (length,) = U16.unpack_from(data)
            frames.append(data[2 : 2 + length])
            data = data[2 + length :]
        return frames

    def handshake_with(self, channel: SecureChannel) -> None:
        """Complete the XX handshake against ``channel`` (either role)."""
        if self.hs.initiator:
            channel.receive_data(self.frame(self.hs.write_message()))
            (msg2,) = self.unframe(channel.data_to_send())
            self.hs.read_message(msg2)
            channel.receive_data(self.frame(self.hs.write_message()))
        else:
            (msg1,) = self.unframe(channel.data_to_send())
            self.hs.read_message(msg1)
            channel.receive_data(self.frame(self.hs.write_message()))
            (msg3,) = self.unframe(channel.data_to_send())
            self.hs.read_message(msg3)
        self.transport = self.hs.to_transport()
        events = drain_events(channel)
        assert [type(e) for e in events] == [HandshakeComplete]
        assert channel.handshake_hash == self.transport.handshake_hash

    def encrypted_frame(self, plaintext: bytes) -> bytes:
        assert self.transport is not None
        return self.frame(self.transport.encrypt(plaintext))

    def stream(self, body: bytes, *, length: int | None = None) -> bytes:
        """Encrypted frames carrying one message: ``length(4) || body``."""
        data = U32.pack(len(body) if length is None else length) + body
        return b"".join(
            self.encrypted_frame(data[i : i + MAX_PLAINTEXT])
            for i in range(0, len(data), MAX_PLAINTEXT)
        )

    def read(self, data: bytes) -> list[Message]:
        """Decrypt frames the channel sent and decode the messages in them."""
        assert self.transport is not None
        plain = b"".join(self.transport.decrypt(f) for f in self.unframe(data))
        out = []
        while plain:
            (length,) = U32.unpack_from(plain)
            out.append(decode_message(plain[4 : 4 + length]))
            plain = plain[4 + length :]
        return out


def raw_pair(channel_is_initiator: bool) -> tuple[SecureChannel, RawPeer]:
    """A channel that completed its handshake with a :class:`RawPeer`."""
    channel = SecureChannel(channel_is_initiator, INIT_KEY if channel_is_initiator else RESP_KEY)
    peer = RawPeer(not channel_is_initiator)
    peer.handshake_with(channel)
    return channel, peer


def feed_expecting_failure(channel: SecureChannel, data: bytes, chunking: Any = "all") -> None:
    """Feed ``data`` then EOF; the channel must raise a RemoteProtocolError and no message."""
    with pytest.raises(RemoteProtocolError) as info:
        for chunk in chunks(data, chunking):
            channel.receive_data(chunk)
            for event in drain_events(channel):
                assert not isinstance(event, MessageReceived | ConnectionClosed), event
        channel.receive_data(b"")
    assert_stays_failed(channel, info.value)


def assert_stays_failed(channel: SecureChannel, error: RemoteProtocolError) -> None:
    """A channel that raised keeps raising the same error (a fresh exception of the
    same class, message and close reason), whatever it is fed."""
    for data in (b"", b"\x00\x10", bytes(100)):
        with pytest.raises(RemoteProtocolError) as again:
            channel.receive_data(data)
        assert type(again.value) is type(error) and str(again.value) == str(error)
        assert again.value.close_reason == error.close_reason


# --------------------------------------------------------------------- codec round trips


@given(MESSAGES)
def test_every_message_type_round_trips_through_the_codec(message: Message) -> None:
    """decode(encode(m)) == m for every message type and field range the decoder accepts."""
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "message",
    [
        Hello(1, "n" * 16, True, tuple(HelloBoard(bytes([i]) * 32, bytes(16)) for i in range(3))),
        Vector(2**64 - 1, ((bytes(32), 2**64 - 1, b"\xff" * 8),)),
        Envelopes(0, 0, ()),
        Envelopes(1, 2, (b"",)),
        Ack(2**64 - 1, 0),
        Ping(0),
        Pong(2**64 - 1),
        Refused(b"\x03" * 32, "c" * 64, "t" * 1000),
        Refused(b"", "", ""),
        Close("r" * 200),
        Close(""),
    ],
    ids=lambda m: type(m).__name__,
)
def test_boundary_values_round_trip(message: Message) -> None:
    """Each decoder limit is inclusive: values exactly at the limit come back intact."""
    assert decode_message(encode_message(message)) == message


@pytest.mark.parametrize(
    "body",
    [
        [1, 1, "n" * 17, False, []],  # role over 16 characters
        [7, b"", "c" * 65, ""],  # refusal code over 64
        [7, b"", "c", "t" * 1001],  # refusal text over 1000
        [7, b"k" * 31, "c", "t"],  # refusal board key neither empty nor 32 bytes
        [7, 0, "c", "t"],  # refusal board given as an index
        [8, "r" * 201],  # close reason over 200
        [1, 1, "node", 1, []],  # by_id not a bool
        [1, 1, "node", False, [[b"k" * 31, b"d" * 16]]],  # short board key
        [1, 1, "node", False, [[b"k" * 32, b"d" * 16, b"x"]]],  # board entry not a pair
        [2, 0, [[b"a" * 32, -1]]],  # negative seq
        [2, 0, [[b"a" * 32, True]]],  # bool is not an integer here
        [3, 0, 0, ["not bytes"]],
        [4, 0],  # Ack missing its batch
        [9, 0],  # unknown type
        [0],
        [-1, 0],
        [],
        {"type": 1},
        [1.0, 0],
    ],
)
def test_ill_typed_messages_raise_decode_error(body: Any) -> None:
    """Out-of-limit, ill-typed, missing and unknown fields are DecodeError (remote fault)."""
    with pytest.raises(DecodeError):
        decode_message(msgpack.packb(body, use_bin_type=True))


def test_a_boolean_is_not_a_message_type() -> None:
    """msgpack ``true`` is not the integer 1 (the fields' own checks refuse bools too)."""
    with pytest.raises(DecodeError):
        decode_message(msgpack.packb([True, 1, "node", False, []]))


def test_trailing_fields_are_ignored() -> None:
    """Extra trailing fields (room for later minor versions) do not break decoding."""
    assert decode_message(msgpack.packb([5, 7, "later", [1, 2]])) == Ping(7)


# --------------------------------------------------------------------- garbage in


@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    """decode_message(random bytes) returns a message or raises DecodeError, nothing else."""
    with contextlib.suppress(DecodeError):
        decode_message(data)


@given(MSGPACK_VALUES)
def test_random_msgpack_values_only_raise_decode_error(value: Any) -> None:
    """Any well-formed msgpack value that is not a valid message is a DecodeError."""
    with contextlib.suppress(DecodeError):
        decode_message(msgpack.packb(value, use_bin_type=True))


@given(st.integers(min_value=0, max_value=10), st.lists(MSGPACK_VALUES, max_size=5))
def test_known_types_with_random_fields_only_raise_decode_error(
    kind: int, fields: list[Any]
) -> None:
    """A plausible type number with arbitrary fields reaches each parser: DecodeError only."""
    try:
        message = decode_message(msgpack.packb([kind, *fields], use_bin_type=True))
    except DecodeError:
        return
    assert decode_message(encode_message(message)) == message


@given(MESSAGES, st.data())
def test_mutated_encodings_only_raise_decode_error(message: Message, data: st.DataObject) -> None:
    """Flipping, cutting or inserting bytes in a valid encoding never escapes DecodeError."""
    body = bytearray(encode_message(message))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(body) - 1, 0)))
        if op == "flip" and body:
            body[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del body[pos:]
        else:
            body[pos:pos] = data.draw(st.binary(min_size=1, max_size=8))
    with contextlib.suppress(DecodeError):
        decode_message(bytes(body))


def test_deeply_nested_msgpack_is_a_decode_error() -> None:
    """Nesting deep enough to hit msgpack's recursion limit is refused, not a crash."""
    with pytest.raises(DecodeError):
        decode_message(b"\x91" * 100_000 + b"\x01")


# --------------------------------------------------------------------- channel round trips


@settings(max_examples=40, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(MESSAGES, min_size=1, max_size=6),
    st.lists(MESSAGES, min_size=1, max_size=6),
    CHUNKINGS,
)
def test_messages_cross_a_channel_pair_both_ways(
    from_initiator: list[Message], from_responder: list[Message], chunking: Any
) -> None:
    """Handshake then messages each way arrive intact, in order, whatever the chunking."""
    init, resp = open_pair(chunking)
    for message in from_initiator:
        init.send(message)
    for message in from_responder:
        resp.send(message)
    assert transfer(init, resp, chunking) == [MessageReceived(m) for m in from_initiator]
    assert transfer(resp, init, chunking) == [MessageReceived(m) for m in from_responder]


def _big_envelopes(count: int, rng: random.Random, size: int = 40_000) -> Envelopes:
    return Envelopes(rng.randrange(2**32), rng.randrange(2**32),
                     tuple(rng.randbytes(size) for _ in range(count)))


@settings(max_examples=12, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=1, max_value=26),
    st.integers(min_value=0, max_value=2**32),
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=200_000), min_size=1, max_size=6),
)
def test_multi_frame_messages_cross_a_channel(
    count: int, seed: int, initiator_sends: bool, splits: list[int]
) -> None:
    """Envelopes of many 40 KB envelopes (up to ~1 MB, ~16 Noise frames) survive any split."""
    message = _big_envelopes(count, random.Random(seed))
    assert len(encode_message(message)) <= MAX_MESSAGE_BYTES
    init, resp = greeted_pair()
    sender, receiver = (init, resp) if initiator_sends else (resp, init)
    sender.send(message)
    sender.send(Ping(count))  # the next message must start right after the big one
    assert transfer(sender, receiver, splits) == [MessageReceived(message),
                                                  MessageReceived(Ping(count))]


def _envelopes_of_exactly(size: int) -> Envelopes:
    """An Envelopes message of exactly ``size`` encoded bytes, of envelopes no larger
    than MAX_ENVELOPE_BYTES (15 of that size and one to fill up)."""
    full = (b"\xab" * MAX_ENVELOPE_BYTES,) * 15
    n = size - len(encode_message(Envelopes(0, 0, (*full, b""))))
    while len(encode_message(Envelopes(0, 0, (*full, b"\xab" * n)))) > size:
        n -= 1
    message = Envelopes(0, 0, (*full, b"\xab" * n))
    assert len(encode_message(message)) == size
    return message


def test_message_of_exactly_max_bytes_crosses_and_one_more_is_refused() -> None:
    """MAX_MESSAGE_BYTES is inclusive on both ends; one byte more is a LocalProtocolError."""
    exact = _envelopes_of_exactly(MAX_MESSAGE_BYTES)
    init, resp = greeted_pair()
    init.send(exact)
    frames = RawPeer.unframe(init.data_to_send())
    assert len(frames) == -(-(MAX_MESSAGE_BYTES + 4) // MAX_PLAINTEXT)
    assert all(len(f) <= MAX_MESSAGE_LEN for f in frames)
    for frame in frames:
        resp.receive_data(RawPeer.frame(frame))
    assert drain_events(resp) == [MessageReceived(exact)]
    too_big = Envelopes(0, 0, (*exact.envelopes[:-1], exact.envelopes[-1] + b"\xab"))
    assert len(encode_message(too_big)) == MAX_MESSAGE_BYTES + 1
    with pytest.raises(LocalProtocolError):
        init.send(too_big)
    assert init.data_to_send() == b""  # nothing half-sent


def test_one_byte_at_a_time_across_frames() -> None:
    """A 3-frame message fed one byte at a time decodes exactly once, at its last byte."""
    init, resp = greeted_pair("bytes")
    message = _big_envelopes(4, random.Random(1), size=45_000)
    resp.send(message)
    data = resp.data_to_send()
    assert len(RawPeer.unframe(data)) == 3
    for i in range(len(data) - 1):
        init.receive_data(data[i : i + 1])
        assert init.next_event() is NEED_DATA
    init.receive_data(data[-1:])
    assert drain_events(init) == [MessageReceived(message)]


@pytest.mark.parametrize("channel_is_initiator", [True, False], ids=["initiator", "responder"])
def test_channel_interoperates_with_hand_written_framing(channel_is_initiator: bool) -> None:
    """The byte layout matches the module docstring: u16 frames, u32-prefixed msgpack."""
    channel, peer = raw_pair(channel_is_initiator)
    channel.send(Ping(5))
    channel.send(Close("bye"))
    assert peer.read(channel.data_to_send()) == [Ping(5), Close("bye")]
    channel.receive_data(peer.stream(encode_message(Pong(5))))
    assert drain_events(channel) == [MessageReceived(Pong(5))]


def test_handshake_frames_have_their_specified_sizes() -> None:
    """The XX messages carry empty payloads: 32, 96 and 64 bytes plus the length prefix."""
    init = SecureChannel(True, INIT_KEY)
    resp = SecureChannel(False, RESP_KEY)
    first = init.data_to_send()
    resp.receive_data(first)
    second = resp.data_to_send()
    init.receive_data(second)
    third = init.data_to_send()
    assert (len(first), len(second), len(third)) == HANDSHAKE_FRAME_SIZES
    assert init.bytes_out == len(first) + len(third)
    assert resp.bytes_in == len(first)


def test_initiator_can_send_in_the_same_flight_as_its_last_handshake_message() -> None:
    """The initiator is open right after writing message 3; its first message may follow it
    in one write, and the responder reports HandshakeComplete before that message."""
    init = SecureChannel(True, INIT_KEY)
    resp = SecureChannel(False, RESP_KEY)
    transfer(init, resp)
    transfer(resp, init)
    init.send(Ping(1))
    events = transfer(init, resp)
    assert [type(e) for e in events] == [HandshakeComplete, MessageReceived]


# --------------------------------------------------------------------- EOF


@pytest.mark.parametrize("chunking", ["all", "bytes"])
def test_eof_at_a_message_boundary_is_connection_closed(chunking: str) -> None:
    """EOF right after a whole message yields ConnectionClosed after that message."""
    init, resp = open_pair()
    init.send(Ping(1))
    events = transfer(init, resp, chunking)
    resp.receive_data(b"")
    assert events + drain_events(resp) == [MessageReceived(Ping(1)), ConnectionClosed()]


def test_eof_right_after_the_handshake_is_connection_closed() -> None:
    """A peer may hang up cleanly with no message sent at all."""
    _init, resp = open_pair()
    resp.receive_data(b"")
    assert drain_events(resp) == [ConnectionClosed()]


@pytest.mark.parametrize("cut", [1, 2, 3, 20, -1], ids=lambda c: f"cut{c}")
def test_eof_mid_frame_is_a_decode_error(cut: int) -> None:
    """EOF inside a length prefix or a frame body raises DecodeError, never ConnectionClosed."""
    init, resp = open_pair()
    init.send(Ping(1))
    data = init.data_to_send()
    resp.receive_data(data[:cut])
    assert resp.next_event() is NEED_DATA
    with pytest.raises(DecodeError) as info:
        resp.receive_data(b"")
    assert_stays_failed(resp, info.value)


def test_eof_between_the_frames_of_one_message_is_a_decode_error() -> None:
    """Whole frames that hold only part of a message, then EOF: DecodeError."""
    init, resp = greeted_pair()
    init.send(_big_envelopes(3, random.Random(2)))
    frames = RawPeer.unframe(init.data_to_send())
    assert len(frames) >= 2
    resp.receive_data(RawPeer.frame(frames[0]))
    with pytest.raises(DecodeError):
        resp.receive_data(b"")


@pytest.mark.parametrize("delivered", [0, 1, 2], ids=["before-msg1", "after-msg1", "after-msg2"])
def test_eof_during_the_handshake_is_a_remote_error(delivered: int) -> None:
    """A peer that hangs up before the handshake completes is a RemoteProtocolError."""
    init = SecureChannel(True, INIT_KEY)
    resp = SecureChannel(False, RESP_KEY)
    if delivered >= 1:
        transfer(init, resp)
    if delivered >= 2:
        transfer(resp, init)
    victim = resp if delivered != 1 else init
    with pytest.raises(RemoteProtocolError):
        victim.receive_data(b"")


# --------------------------------------------------------------------- junk on the channel


@settings(max_examples=60)
@given(st.booleans(), st.binary(min_size=1, max_size=2000), CHUNKINGS)
def test_random_bytes_before_the_handshake_only_raise_remote_errors(
    initiator: bool, junk: bytes, chunking: Any
) -> None:
    """Junk instead of a handshake: only RemoteProtocolError (by EOF at the latest)."""
    channel = SecureChannel(initiator, INIT_KEY if initiator else RESP_KEY)
    channel.data_to_send()
    feed_expecting_failure(channel, junk, chunking)
    assert not channel.is_open


@settings(max_examples=60)
@given(st.booleans(), st.binary(min_size=1, max_size=3000), CHUNKINGS)
def test_random_bytes_after_the_handshake_only_raise_remote_errors(
    initiator_receives: bool, junk: bytes, chunking: Any
) -> None:
    """Raw junk after a valid handshake: RemoteProtocolError, never a message."""
    init, resp = open_pair()
    feed_expecting_failure(init if initiator_receives else resp, junk, chunking)


@pytest.mark.parametrize("phase", ["handshake", "transport"])
def test_zero_length_frame_is_a_decode_error(phase: str) -> None:
    """A frame length prefix of 0 is refused at once, in either phase."""
    if phase == "handshake":
        channel = SecureChannel(False, RESP_KEY)
    else:
        channel, _ = open_pair()
    with pytest.raises(DecodeError) as info:
        channel.receive_data(b"\x00\x00")
    assert_stays_failed(channel, info.value)


@pytest.mark.parametrize("length", [0, MAX_MESSAGE_BYTES + 1, 2**32 - 1])
def test_message_length_out_of_range_in_a_valid_frame(length: int) -> None:
    """A correctly encrypted frame whose message header is 0 or over the cap is refused as
    soon as the 4-byte header is readable (before any body is buffered)."""
    channel, peer = raw_pair(channel_is_initiator=True)
    expected = DecodeError if length == 0 else FrameTooLargeError  # empty is malformed
    with pytest.raises(expected) as info:
        channel.receive_data(peer.encrypted_frame(U32.pack(length)))
    assert_stays_failed(channel, info.value)


def test_message_length_split_across_frames_is_still_checked() -> None:
    """The length header may straddle frames; an oversized one is still refused."""
    channel, peer = raw_pair(channel_is_initiator=False)
    header = U32.pack(MAX_MESSAGE_BYTES + 1)
    channel.receive_data(peer.encrypted_frame(header[:3]))
    assert channel.next_event() is NEED_DATA
    with pytest.raises(FrameTooLargeError):
        channel.receive_data(peer.encrypted_frame(header[3:]))


@pytest.mark.parametrize("kind", [0, 9, 200, 2**32])
def test_unknown_message_type_in_a_valid_frame_is_a_decode_error(kind: int) -> None:
    """A well-framed, authenticated message of unknown type is a DecodeError."""
    channel, peer = raw_pair(channel_is_initiator=True)
    with pytest.raises(DecodeError) as info:
        channel.receive_data(peer.stream(msgpack.packb([kind, 1, 2])))
    assert_stays_failed(channel, info.value)


def test_garbage_msgpack_in_a_valid_frame_is_a_decode_error() -> None:
    """Authenticated bytes that are not msgpack are refused as malformed."""
    channel, peer = raw_pair(channel_is_initiator=False)
    with pytest.raises(DecodeError):
        channel.receive_data(peer.stream(b"\xc1\xc1"))


def test_messages_before_a_bad_one_are_delivered() -> None:
    """A bad message fails the channel, but the good messages before it stay queued."""
    channel, peer = raw_pair(channel_is_initiator=True)
    data = peer.stream(encode_message(Ping(1))) + peer.stream(b"\xc1")
    with pytest.raises(DecodeError):
        channel.receive_data(data)
    assert drain_events(channel) == [MessageReceived(Ping(1))]


@settings(max_examples=60)
@given(st.data())
def test_a_flipped_byte_in_a_transport_frame_is_never_accepted(data: st.DataObject) -> None:
    """Any single-byte change to an encrypted frame (length prefix included) yields a
    RemoteProtocolError by EOF, and the altered message is never delivered."""
    init, resp = open_pair()
    sender, receiver = data.draw(st.sampled_from([(init, resp), (resp, init)]))
    sender.send(data.draw(MESSAGES))
    wire = bytearray(sender.data_to_send())
    pos = data.draw(st.integers(0, len(wire) - 1))
    wire[pos] ^= data.draw(st.integers(1, 255))
    feed_expecting_failure(receiver, bytes(wire), data.draw(CHUNKINGS))


@settings(max_examples=60)
@given(st.integers(0, 2), st.data())
def test_a_flipped_byte_in_a_handshake_frame_fails_the_handshake(
    which: int, data: st.DataObject
) -> None:
    """Altering any byte of any handshake frame makes a side raise RemoteProtocolError (by
    EOF at the latest), and the two sides never both complete. Message 1 carries no tag,
    so damage to it surfaces when the initiator reads message 2."""
    init = SecureChannel(True, INIT_KEY)
    resp = SecureChannel(False, RESP_KEY)
    try:
        for index, (src, dst) in enumerate([(init, resp), (resp, init), (init, resp)]):
            wire = bytearray(src.data_to_send())
            if index == which:
                pos = data.draw(st.integers(0, len(wire) - 1))
                wire[pos] ^= data.draw(st.integers(1, 255))
            if wire:
                dst.receive_data(bytes(wire))
        # A frame whose length prefix grew waits for more bytes: the peer's EOF fails it.
        for channel in (init, resp):
            if not channel.is_open:
                channel.receive_data(b"")
    except RemoteProtocolError:
        pass
    else:
        pytest.fail("a corrupted handshake went unnoticed")
    assert not (init.is_open and resp.is_open)


def test_low_order_ephemeral_key_is_a_handshake_error() -> None:
    """An all-zero X25519 ephemeral (a low-order point) is refused in message 1."""
    resp = SecureChannel(False, RESP_KEY)
    with pytest.raises(HandshakeError):
        resp.receive_data(RawPeer.frame(bytes(32)))


def test_prologue_mismatch_is_a_handshake_error() -> None:
    """Different protocol versions (prologues) cannot complete a handshake."""
    init = SecureChannel(True, INIT_KEY, prologue=b"p2paid/2")
    resp = SecureChannel(False, RESP_KEY)
    transfer(init, resp)
    with pytest.raises(HandshakeError):
        transfer(resp, init)
    assert init.data_to_send() == b""


def test_replayed_frame_is_a_decrypt_error() -> None:
    """Nonces are implicit: the same valid frame delivered twice fails the second time."""
    init, resp = open_pair()
    init.send(Ping(1))
    frame = init.data_to_send()
    resp.receive_data(frame)
    assert drain_events(resp) == [MessageReceived(Ping(1))]
    with pytest.raises(DecryptError):
        resp.receive_data(frame)


def test_frames_from_another_session_are_refused() -> None:
    """A frame recorded on one connection does not decrypt on another (fresh keys)."""
    init1, _resp1 = open_pair()
    _init2, resp2 = open_pair()
    init1.send(Ping(1))
    with pytest.raises(DecryptError):
        resp2.receive_data(init1.data_to_send())


# --------------------------------------------------------------------- local misuse


@pytest.mark.parametrize("initiator", [True, False], ids=["initiator", "responder"])
def test_send_before_the_handshake_is_a_local_error(initiator: bool) -> None:
    """Sending a message before the handshake completed is the caller's bug."""
    channel = SecureChannel(initiator, INIT_KEY)
    channel.data_to_send()
    with pytest.raises(LocalProtocolError):
        channel.send(Ping(1))
    assert channel.data_to_send() == b""


def test_responder_cannot_send_between_message_1_and_3() -> None:
    """The responder has sent message 2 but is not open until message 3 arrives."""
    init = SecureChannel(True, INIT_KEY)
    resp = SecureChannel(False, RESP_KEY)
    transfer(init, resp)
    with pytest.raises(LocalProtocolError):
        resp.send(Ping(1))


# --------------------------------------------------------------------- pinned responder key


def test_expected_remote_mismatch_aborts_before_message_3() -> None:
    """A dialler pinned to another key fails at message 2 and never sends message 3, so the
    responder never learns the dialler's identity."""
    init = SecureChannel(True, INIT_KEY, expected_remote=_pub(OTHER_KEY))
    resp = SecureChannel(False, RESP_KEY)
    transfer(init, resp)
    msg2 = resp.data_to_send()
    with pytest.raises(HandshakeError) as info:
        init.receive_data(msg2)
    assert info.value.close_reason == "wrong-key"
    assert init.data_to_send() == b""  # no third frame
    assert init.bytes_out == HANDSHAKE_FRAME_SIZES[0]
    assert not init.is_open
    assert init.remote_static is None
    assert drain_events(init) == []
    assert_stays_failed(init, info.value)
    # the responder just sees the dialler go away mid-handshake
    with pytest.raises(RemoteProtocolError):
        resp.receive_data(b"")


def test_expected_remote_match_completes() -> None:
    """Pinning the right key changes nothing."""
    init, _resp = open_pair(expected_remote=_pub(RESP_KEY))
    assert init.remote_static == _pub(RESP_KEY)


# --------------------------------------------------------------------- helpers' own checks


@pytest.mark.parametrize(
    ("data", "chunking", "expected"),
    [
        (b"abcdef", "all", [b"abcdef"]),
        (b"abc", "bytes", [b"a", b"b", b"c"]),
        (b"abcdefg", [2, 3], [b"ab", b"cde", b"fg"]),
        (b"", "all", []),
    ],
)
def test_chunks_helper(data: bytes, chunking: Any, expected: Sequence[bytes]) -> None:
    """The chunker used above splits losslessly (a broken chunker would hide bugs)."""
    assert chunks(data, chunking) == list(expected)



# --------------------------------------------------------------------- strict decoder (finding 7)


def test_evidence_round_trips_and_malformed_evidence_is_refused() -> None:
    """Evidence (type 9): a board index and exactly two envelopes, each at most
    MAX_ENVELOPE_BYTES."""
    ev = Evidence(3, (b"a" * MAX_ENVELOPE_BYTES, b"b" * 200))
    assert decode_message(encode_message(ev)) == ev
    for body in ([9, 0, [b"a"]], [9, 0, [b"a", b"b", b"c"]], [9, 0, []], [9, 0, b"ab"],
                 [9, -1, [b"a", b"b"]], [9, 0, ["a", b"b"]], [9, 0]):
        with pytest.raises(DecodeError):
            decode_message(msgpack.packb(body, use_bin_type=True))
    with pytest.raises(FrameTooLargeError):
        decode_message(msgpack.packb([9, 0, [b"a" * (MAX_ENVELOPE_BYTES + 1), b"b"]]))


def test_hello_token_is_an_optional_fifth_field() -> None:
    """A 4-field Hello has no token; a 5th field is a bin of at most 64 bytes; a 6th
    and later fields are ignored."""
    plain = Hello(1, "node", True, ())
    assert encode_message(plain) == msgpack.packb([1, 1, "node", True, []])
    assert decode_message(encode_message(plain)).token is None  # type: ignore[union-attr]
    with_token = Hello(1, "node", True, (), b"t" * 64)
    assert decode_message(encode_message(with_token)) == with_token
    assert decode_message(msgpack.packb([1, 1, "node", True, [], b"t", "later"])) == Hello(
        1, "node", True, (), b"t")
    for token in (b"t" * 65, "text", 7, None):
        with pytest.raises(DecodeError):
            decode_message(msgpack.packb([1, 1, "node", True, [], token], use_bin_type=True))


def test_maps_are_refused_and_never_expanded() -> None:
    """A 1 MiB body holding a 100,000-entry map (the flood of finding 7) is refused at
    its first byte; as a trailing field it is refused by the skip budget. Neither
    allocates more than a few KiB."""
    flood = msgpack.packb({f"{i:06}": i for i in range(100_000)})
    assert len(flood) > 1_000_000
    trailing = b"\x93\x05\x07" + flood  # the map as a trailing field of a Ping
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError):
            decode_message(flood)
        with pytest.raises(DecodeError):
            decode_message(trailing)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"decoding the flood allocated {peak} bytes"


@pytest.mark.parametrize(("body", "ok"), [
    (b"\x94\x05\x07\x91\x90\x80", True),  # trailing [[]] and {}
    (b"\x93\x05\x07" + b"\x91" * 15 + b"\xc0", True),  # 16 levels deep
    (b"\x93\x05\x07" + b"\x91" * 16 + b"\xc0", False),  # 17 levels deep
    (b"\x93\x05\x07\xdc\x10\x00" + b"\xc0" * 4096, False),  # 4,097 values in all
    (b"\x93\x05\x07\xdc\x0f\xff" + b"\xc0" * 4095, True),  # 4,096 values in all
    (b"\x93\x05\x07\xdd\xff\xff\xff\xff", False),  # a huge array header: refused at once
    (b"\x93\x05\x07\xc1", False),  # the reserved byte
    (b"\x93\x05\x07\xc7\x03\x01abc", True),  # ext 8
    (b"\x93\x05\x07\xcb" + bytes(8), True),  # float 64
    (b"\x93\x05\x07\xcb" + bytes(7), False),  # cut short
    (b"\x92\x05\x07\xc0", False),  # a byte after the message
])
def test_trailing_fields_are_skipped_within_bounds(body: bytes, ok: bool) -> None:
    if ok:
        assert decode_message(body) == Ping(7)
    else:
        with pytest.raises(DecodeError):
            decode_message(body)


def test_unsigned_integers_in_any_width_and_signed_forms_are_accepted() -> None:
    """Other encoders may write a non-negative integer as int8..int64 (msgpack allows
    it); negative ones and the type code in a wide form are refused."""
    assert decode_message(b"\x92\x05\xd3" + (2**62).to_bytes(8, "big")) == Ping(2**62)
    assert decode_message(b"\x92\x05\xd0\x05") == Ping(5)
    for body in (b"\x92\x05\xd0\xff", b"\x92\x05\xff", b"\x92\xcc\x05\x01", b"\x92\x05\xc3"):
        with pytest.raises(DecodeError):
            decode_message(body)


def _channel_stream(channel: SecureChannel, peer: RawPeer, plaintext: bytes) -> list[bytes]:
    """``plaintext`` as transport frames from ``peer`` to ``channel``, one per element."""
    return [peer.encrypted_frame(plaintext[i : i + MAX_PLAINTEXT])
            for i in range(0, len(plaintext), MAX_PLAINTEXT)]


@pytest.mark.parametrize("head", [
    msgpack.packb({"type": 3}) + bytes(10),  # a map
    b"\xdd\x00\x00\x00\x04\x63",  # an array whose type is unknown (99)
    b"\xc4\x10",  # bytes
    b"\x94\x05",  # a Ping announced as 900 KiB
    b"\x94\x03\x00\x00\xdd\x00\x01\x86\xa0",  # Envelopes declaring 100,000 of them
    b"\x93\x02\x00\xdd\x00\x01\x86\xa0",  # a Vector declaring 100,000 entries
    b"\x94\x03\x00\x00\xdc\x00\x02\xa1x",  # an envelope that is text, not bytes
    b"\x94\x03\x00",  # Envelopes missing a field
])
def test_a_big_message_that_cannot_be_valid_is_refused_at_its_first_frame(head: bytes) -> None:
    """The receiver checks a message's first bytes against its length as soon as they
    arrive: a 900 KiB body that is a map, an unknown type or a Ping too large for its
    kind is refused after the first frame, before the other 13 are buffered."""
    channel, peer = raw_pair(False)
    channel.receive_data(peer.stream(encode_message(HELLO)))
    assert drain_events(channel) == [MessageReceived(HELLO)]
    body = head + bytes(900 * 1024 - len(head))
    frames = _channel_stream(channel, peer, U32.pack(len(body)) + body)
    assert len(frames) > 10
    with pytest.raises(RemoteProtocolError):
        channel.receive_data(frames[0])


def test_before_the_peers_hello_messages_are_at_most_max_hello_bytes() -> None:
    channel, peer = raw_pair(False)
    big = Envelopes(0, 0, (b"x" * 60_000, b"y" * 10_000))
    with pytest.raises(FrameTooLargeError):
        channel.receive_data(peer.stream(encode_message(big)))
    channel, peer = raw_pair(False)
    channel.receive_data(peer.stream(encode_message(HELLO)) + peer.stream(encode_message(big)))
    assert drain_events(channel) == [MessageReceived(HELLO), MessageReceived(big)]


def test_a_read_full_of_tiny_messages_is_decoded_only_as_it_is_taken() -> None:
    """9,000 Pings in one read: at most MAX_QUEUED_EVENTS are decoded ahead; all
    arrive, in order, as the caller takes them; a bad message among them is raised
    from next_event when its turn comes, and the channel stays failed."""
    channel, peer = raw_pair(False)
    pings = b"".join(U32.pack(3) + encode_message(Ping(i % 100)) for i in range(9000))
    channel.receive_data(peer.encrypted_frame(pings[:60_000]) + peer.encrypted_frame(
        pings[60_000:] + U32.pack(2) + b"\x91\x63"))
    assert len(channel._events) <= MAX_QUEUED_EVENTS  # test reaches in: queue length
    got = []
    with pytest.raises(DecodeError):
        while (event := channel.next_event()) is not NEED_DATA:
            assert isinstance(event, MessageReceived)
            got.append(event.message)
    assert got == [Ping(i % 100) for i in range(9000)]
    assert channel.next_event() is NEED_DATA
    with pytest.raises(DecodeError):
        channel.receive_data(b"")


def test_max_hello_bytes_fits_the_largest_hello() -> None:
    boards = tuple(HelloBoard(bytes([i % 256]) * 32, bytes(16)) for i in range(Hello.MAX_BOARDS))
    largest = Hello(2**64 - 1, "r" * 16, True, boards, b"t" * 64)
    assert len(encode_message(largest)) < MAX_HELLO_BYTES


@given(MESSAGES, st.data())
def test_the_start_of_a_valid_message_is_never_refused(message: Message,
                                                       data: st.DataObject) -> None:
    """check_head (run on every prefix of an arriving message) accepts every prefix of
    every valid message: early refusal never costs an honest peer its connection."""
    body = encode_message(message)
    cut = data.draw(st.integers(0, len(body)))
    check_head(body[:cut], len(body))


@given(st.binary(max_size=120), st.integers(1, 2 * MAX_MESSAGE_BYTES))
def test_check_head_on_garbage_raises_only_remote_protocol_errors(head: bytes,
                                                                  length: int) -> None:
    with contextlib.suppress(DecodeError, FrameTooLargeError):
        check_head(head, length)
