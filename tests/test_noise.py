"""p2paid.core.noise: test vectors, interop with two independent implementations, failures."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from p2paid.core.noise import (
    MAX_MESSAGE_LEN,
    PROTOCOL_NAME,
    CipherState,
    HandshakeState,
    NoiseTransport,
    SymmetricState,
)
from p2paid.errors import (
    DecryptError,
    FrameTooLargeError,
    HandshakeError,
    LimitExceededError,
    LocalProtocolError,
    RemoteProtocolError,
)

VECTORS = json.loads(
    (Path(__file__).parents[1] / "protocol" / "vectors" / "noise_xx.json").read_text()
)["vectors"]
PROLOGUE = b"p2paid/1"
HANDSHAKE_MESSAGES = 3
# Fixed statics keep the hypothesis test cheap; fresh ephemerals come from each handshake.
INIT_KEY = X25519PrivateKey.generate()
RESP_KEY = X25519PrivateKey.generate()


def _raw(key: X25519PrivateKey) -> bytes:
    return key.private_bytes_raw()


def _pub(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def _pair(
    init_prologue: bytes = PROLOGUE, resp_prologue: bytes = PROLOGUE
) -> tuple[HandshakeState, HandshakeState]:
    return (
        HandshakeState(True, INIT_KEY, init_prologue),
        HandshakeState(False, RESP_KEY, resp_prologue),
    )


def _handshake(init: HandshakeState, resp: HandshakeState) -> tuple[NoiseTransport, NoiseTransport]:
    assert resp.read_message(init.write_message(b"one")) == b"one"
    assert init.read_message(resp.write_message(b"two")) == b"two"
    assert resp.read_message(init.write_message(b"three")) == b"three"
    return init.to_transport(), resp.to_transport()


def _flip(message: bytes, index: int) -> bytes:
    changed = bytearray(message)
    changed[index] ^= 0x01
    return bytes(changed)


# ------------------------------------------------------------------ our two ends


def test_handshake_and_transport_between_our_own_ends() -> None:
    init, resp = _pair()
    assert (init.is_our_turn, resp.is_our_turn) == (True, False)
    first = init.write_message(b"hi")
    assert len(first) == 32 + 2 and first.endswith(b"hi")  # message 1 has no key yet
    assert (init.is_our_turn, resp.is_our_turn) == (False, False)  # both wait to read
    resp.read_message(first)
    assert resp.is_our_turn
    assert init.read_message(resp.write_message()) == b""
    assert init.rs == _pub(RESP_KEY) and resp.rs is None
    assert not init.complete
    resp.read_message(init.write_message())
    assert init.complete and resp.complete
    a, b = init.to_transport(), resp.to_transport()
    assert a is init.to_transport()
    assert a.remote_static == _pub(RESP_KEY) and b.remote_static == _pub(INIT_KEY)
    assert a.handshake_hash == b.handshake_hash and len(a.handshake_hash) == 32
    for i in range(5):
        assert b.decrypt(a.encrypt(b"ping %d" % i)) == b"ping %d" % i
        assert a.decrypt(b.encrypt(b"pong %d" % i)) == b"pong %d" % i
    assert a.send_cipher.n == 5 and b.recv_cipher.n == 5
    assert "send_cipher" not in repr(a)


def test_largest_messages_fit_and_larger_are_refused() -> None:
    init, resp = _pair()
    big = bytes(MAX_MESSAGE_LEN - 32)
    first = init.write_message(big)
    assert len(first) == MAX_MESSAGE_LEN and resp.read_message(first) == big
    with pytest.raises(LocalProtocolError):
        resp.write_message(bytes(MAX_MESSAGE_LEN - 96 + 1))
    init.read_message(resp.write_message(bytes(MAX_MESSAGE_LEN - 96)))
    resp.read_message(init.write_message())
    a, b = init.to_transport(), resp.to_transport()
    assert len(a.encrypt(bytes(MAX_MESSAGE_LEN - 16))) == MAX_MESSAGE_LEN
    with pytest.raises(LocalProtocolError):
        a.encrypt(bytes(MAX_MESSAGE_LEN - 15))
    with pytest.raises(FrameTooLargeError):
        b.decrypt(bytes(MAX_MESSAGE_LEN + 1))
    with pytest.raises(FrameTooLargeError):
        HandshakeState(False, RESP_KEY, PROLOGUE).read_message(bytes(MAX_MESSAGE_LEN + 1))


# ------------------------------------------------------------------ test vectors


@pytest.fixture(params=VECTORS, ids=[v["name"] for v in VECTORS])
def vector(request: pytest.FixtureRequest) -> dict[str, Any]:
    v: dict[str, Any] = request.param
    assert v["protocol_name"].encode() == PROTOCOL_NAME
    assert v["source"]
    return v


def _key(hex_key: str) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))


def test_vector(vector: dict[str, Any]) -> None:
    sides = [
        HandshakeState(
            role == "init",
            _key(vector[f"{role}_static"]),
            bytes.fromhex(vector[f"{role}_prologue"]),
            e=_key(vector[f"{role}_ephemeral"]),
        )
        for role in ("init", "resp")
    ]
    transports: list[NoiseTransport] = []
    for i, message in enumerate(vector["messages"]):
        payload = bytes.fromhex(message["payload"])
        sender, receiver = (0, 1) if i % 2 == 0 else (1, 0)
        if i < HANDSHAKE_MESSAGES:
            ciphertext = sides[sender].write_message(payload)
            assert ciphertext.hex() == message["ciphertext"], f"handshake message {i}"
            assert sides[receiver].read_message(ciphertext) == payload
            if i == HANDSHAKE_MESSAGES - 1:
                transports = [side.to_transport() for side in sides]
        else:
            ciphertext = transports[sender].encrypt(payload)
            assert ciphertext.hex() == message["ciphertext"], f"transport message {i}"
            assert transports[receiver].decrypt(ciphertext) == payload
    init, resp = transports
    assert init.handshake_hash == resp.handshake_hash
    if "handshake_hash" in vector:
        assert init.handshake_hash.hex() == vector["handshake_hash"]
    assert init.remote_static == _pub(_key(vector["resp_static"]))
    assert resp.remote_static == _pub(_key(vector["init_static"]))


# ------------------------------------------------------------------ interop


def _noiseprotocol(initiator: bool, key: X25519PrivateKey) -> Any:
    connection = pytest.importorskip("noise.connection")
    conn = connection.NoiseConnection.from_name(PROTOCOL_NAME)
    conn.set_as_initiator() if initiator else conn.set_as_responder()
    conn.set_prologue(PROLOGUE)
    conn.set_keypair_from_private_bytes(connection.Keypair.STATIC, _raw(key))
    conn.start_handshake()
    return conn


@pytest.mark.parametrize("ours_initiator", [True, False], ids=["ours-init", "ours-resp"])
def test_interop_noiseprotocol(ours_initiator: bool) -> None:
    theirs = _noiseprotocol(not ours_initiator, RESP_KEY if ours_initiator else INIT_KEY)
    ours = HandshakeState(ours_initiator, INIT_KEY if ours_initiator else RESP_KEY, PROLOGUE)
    for i in range(HANDSHAKE_MESSAGES):
        payload = b"handshake payload %d" % i
        if ours.is_our_turn:
            assert bytes(theirs.read_message(ours.write_message(payload))) == payload
        else:
            assert ours.read_message(bytes(theirs.write_message(payload))) == payload
    assert theirs.handshake_finished
    t = ours.to_transport()
    assert t.handshake_hash == theirs.get_handshake_hash()
    assert t.remote_static == _pub(RESP_KEY if ours_initiator else INIT_KEY)
    for i in range(4):
        assert theirs.decrypt(t.encrypt(b"ours %d" % i)) == b"ours %d" % i
        assert t.decrypt(theirs.encrypt(b"theirs %d" % i)) == b"theirs %d" % i
    # Rekey() keeps the nonce; noiseprotocol implements it the same way.
    t.send_cipher.rekey()
    theirs.rekey_inbound_cipher()
    t.recv_cipher.rekey()
    theirs.rekey_outbound_cipher()
    assert theirs.decrypt(t.encrypt(b"after rekey")) == b"after rekey"
    assert t.decrypt(theirs.encrypt(b"after rekey too")) == b"after rekey too"


def _dissononce(initiator: bool, key: X25519PrivateKey) -> Any:
    def mod(name: str) -> Any:
        return pytest.importorskip(f"dissononce.{name}")

    dh = mod("dh.x25519.x25519").X25519DH()
    cipher_state = mod("processing.impl.cipherstate").CipherState(
        mod("cipher.chachapoly").ChaChaPolyCipher()
    )
    symmetric = mod("processing.impl.symmetricstate").SymmetricState(
        cipher_state, mod("hash.sha256").SHA256Hash()
    )
    hs = mod("processing.impl.handshakestate").HandshakeState(symmetric, dh)
    s = dh.generate_keypair(mod("dh.x25519.private").PrivateKey(_raw(key)))
    pattern = mod("processing.handshakepatterns.interactive.XX").XXHandshakePattern()
    hs.initialize(pattern, initiator, PROLOGUE, s=s)
    return hs


@pytest.mark.parametrize("ours_initiator", [True, False], ids=["ours-init", "ours-resp"])
def test_interop_dissononce(ours_initiator: bool) -> None:
    theirs = _dissononce(not ours_initiator, RESP_KEY if ours_initiator else INIT_KEY)
    ours = HandshakeState(ours_initiator, INIT_KEY if ours_initiator else RESP_KEY, PROLOGUE)
    ciphers = None
    for i in range(HANDSHAKE_MESSAGES):
        payload, buffer = b"dissononce payload %d" % i, bytearray()
        if ours.is_our_turn:
            ciphers = theirs.read_message(ours.write_message(payload), buffer)
        else:
            ciphers = theirs.write_message(payload, buffer)
            buffer = bytearray(ours.read_message(bytes(buffer)))
        assert bytes(buffer) == payload
    assert ciphers is not None
    their_send, their_recv = ciphers if not ours_initiator else ciphers[::-1]
    t = ours.to_transport()
    assert t.handshake_hash == theirs.symmetricstate.get_handshake_hash()
    assert t.remote_static == _pub(RESP_KEY if ours_initiator else INIT_KEY)
    for i in range(4):
        assert their_recv.decrypt_with_ad(b"", t.encrypt(b"ours %d" % i)) == b"ours %d" % i
        assert t.decrypt(their_send.encrypt_with_ad(b"", b"theirs %d" % i)) == b"theirs %d" % i


def test_vectors_agree_with_noiseprotocol(vector: dict[str, Any]) -> None:
    """The JSON itself is checked by an independent implementation, not only by ours."""
    connection = pytest.importorskip("noise.connection")
    sides = []
    for role in ("init", "resp"):
        conn = connection.NoiseConnection.from_name(PROTOCOL_NAME)
        conn.set_as_initiator() if role == "init" else conn.set_as_responder()
        conn.set_prologue(bytes.fromhex(vector[f"{role}_prologue"]))
        for kind in ("static", "ephemeral"):
            keypair = getattr(connection.Keypair, kind.upper())
            conn.set_keypair_from_private_bytes(keypair, bytes.fromhex(vector[f"{role}_{kind}"]))
        with warnings.catch_warnings():  # it warns that a fixed ephemeral is for tests only
            warnings.simplefilter("ignore")
            conn.start_handshake()
        sides.append(conn)
    for i, message in enumerate(vector["messages"]):
        sender = sides[i % 2]
        payload = bytes.fromhex(message["payload"])
        if i < HANDSHAKE_MESSAGES:
            ciphertext = bytes(sender.write_message(payload))
            sides[1 - i % 2].read_message(ciphertext)
        else:
            ciphertext = sender.encrypt(payload)
        assert ciphertext.hex() == message["ciphertext"]


# ------------------------------------------------------------------ failures


@pytest.mark.parametrize("where", ["ephemeral", "static", "payload-tag"])
def test_tampered_second_message_fails_the_handshake(where: str) -> None:
    init, resp = _pair()
    resp.read_message(init.write_message())
    second = resp.write_message(b"payload")
    index = {"ephemeral": 0, "static": 40, "payload-tag": len(second) - 1}[where]
    with pytest.raises(HandshakeError) as info:
        init.read_message(_flip(second, index))
    assert isinstance(info.value, RemoteProtocolError)
    assert isinstance(info.value.__cause__, DecryptError)
    assert isinstance(info.value.__cause__.__cause__, InvalidTag)
    assert info.value.close_reason == "handshake"
    # A failed handshake stays failed, even for the genuine message.
    with pytest.raises(LocalProtocolError):
        init.read_message(second)
    with pytest.raises(LocalProtocolError):
        init.write_message()


def test_tampered_first_and_third_messages_are_caught() -> None:
    init, resp = _pair()
    first = init.write_message(b"clear")
    resp.read_message(_flip(first, len(first) - 1))  # unauthenticated, but hashed into h...
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message())  # ...so the reply no longer verifies
    init, resp = _pair()
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    with pytest.raises(HandshakeError):
        resp.read_message(_flip(init.write_message(), 5))
    assert resp.rs is None and not resp.complete


def test_tampered_transport_message_raises_decrypt_error() -> None:
    a, b = _handshake(*_pair())
    first, second = a.encrypt(b"first"), a.encrypt(b"second")
    for index in (0, len(first) - 1):
        with pytest.raises(DecryptError) as info:
            b.decrypt(_flip(first, index))
        assert isinstance(info.value.__cause__, InvalidTag)
        assert info.value.close_reason == "decrypt"
    with pytest.raises(DecryptError):
        b.decrypt(first[:10])  # shorter than the tag
    with pytest.raises(DecryptError):
        b.decrypt(second)  # out of order: wrong nonce
    assert b.decrypt(first) == b"first"  # failures did not advance the nonce
    with pytest.raises(DecryptError):
        b.decrypt(first)  # replay
    assert b.decrypt(second) == b"second"


def test_wrong_prologue_fails() -> None:
    init, resp = _pair(resp_prologue=b"p2paid/2")
    resp.read_message(init.write_message())
    with pytest.raises(HandshakeError):
        init.read_message(resp.write_message())


def test_calls_out_of_turn_are_local_errors() -> None:
    init, resp = _pair()
    with pytest.raises(LocalProtocolError):
        init.read_message(bytes(32))
    with pytest.raises(LocalProtocolError):
        resp.write_message()
    with pytest.raises(LocalProtocolError):
        init.to_transport()
    first = init.write_message()
    with pytest.raises(LocalProtocolError):
        init.write_message()
    resp.read_message(first)
    with pytest.raises(LocalProtocolError):
        resp.read_message(first)
    _ = init.read_message(resp.write_message())
    resp.read_message(init.write_message())
    for side in (init, resp):
        with pytest.raises(LocalProtocolError):
            side.write_message()
        with pytest.raises(LocalProtocolError):
            side.read_message(bytes(64))


@pytest.mark.parametrize("stage", [0, 1, 2], ids=["msg1", "msg2", "msg3"])
def test_truncated_handshake_message(stage: int) -> None:
    init, resp = _pair()
    messages = []
    for i in range(stage + 1):
        writer, reader = (init, resp) if i % 2 == 0 else (resp, init)
        message = writer.write_message()
        messages.append(message)
        if i < stage:
            reader.read_message(message)
    reader = resp if stage % 2 == 0 else init
    with pytest.raises(HandshakeError, match="truncated"):
        reader.read_message(messages[-1][:-17])


def test_low_order_public_key_is_refused() -> None:
    resp = HandshakeState(False, RESP_KEY, PROLOGUE)
    with pytest.raises(HandshakeError, match="invalid X25519"):
        resp.read_message(bytes(32))  # u = 0 has order 4


def test_nonce_exhaustion_and_keyless_cipher() -> None:
    key = bytes(range(32))
    sender, receiver = CipherState(key), CipherState(key)
    sender.set_nonce(2**64 - 2)
    receiver.set_nonce(2**64 - 2)
    assert receiver.decrypt_with_ad(b"ad", sender.encrypt_with_ad(b"ad", b"last")) == b"last"
    with pytest.raises(LocalProtocolError):
        sender.encrypt_with_ad(b"ad", b"one too many")
    with pytest.raises(LimitExceededError):
        receiver.decrypt_with_ad(b"ad", bytes(16))
    keyless = CipherState()
    assert not keyless.has_key()
    assert keyless.encrypt_with_ad(b"ad", b"plain") == b"plain"
    assert keyless.decrypt_with_ad(b"ad", b"plain") == b"plain"
    with pytest.raises(LocalProtocolError):
        keyless.rekey()


def test_long_protocol_name_is_hashed() -> None:
    short = SymmetricState(PROTOCOL_NAME)
    assert short.get_handshake_hash() == PROTOCOL_NAME + bytes(32 - len(PROTOCOL_NAME))
    long = SymmetricState(b"Noise_XXpsk3_25519_ChaChaPoly_SHA256")
    assert long.get_handshake_hash() == long.ck and len(long.ck) == 32


@given(
    stage=st.integers(min_value=0, max_value=3),
    garbage=st.binary(max_size=200),
    flip=st.none() | st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
)
def test_garbage_only_raises_remote_protocol_errors(
    stage: int, garbage: bytes, flip: tuple[int, int] | None
) -> None:
    """Random bytes, or the genuine message with one byte changed, at every stage."""

    def bad(genuine: bytes) -> bytes:
        if flip is None:
            return garbage
        index, mask = flip[0] % len(genuine), flip[1]
        return genuine[:index] + bytes([genuine[index] ^ mask]) + genuine[index + 1 :]

    init, resp = _pair()
    try:
        if stage == 0:
            resp.read_message(bad(init.write_message()))  # unauthenticated: may be accepted
            return
        resp.read_message(init.write_message())
        if stage == 1:
            init.read_message(bad(resp.write_message(b"payload")))
        elif stage == 2:
            init.read_message(resp.write_message())
            resp.read_message(bad(init.write_message(b"payload")))
        else:
            init.read_message(resp.write_message())
            resp.read_message(init.write_message())
            resp.to_transport().decrypt(bad(init.to_transport().encrypt(b"transport")))
    except RemoteProtocolError:
        return
    pytest.fail("a forged or altered message was accepted")
