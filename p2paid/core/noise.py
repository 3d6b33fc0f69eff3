"""Noise_XX_25519_ChaChaPoly_SHA256 (Noise Protocol Framework revision 34), sans-I/O.

``CipherState``, ``SymmetricState`` and ``HandshakeState`` are the spec's section 5
objects under the spec's names; comments quote the spec step each line implements.
Only the XX pattern is built in: ``-> e; <- e, ee, s, es; -> s, se``.

:meth:`HandshakeState.write_message` returns bytes to send and
:meth:`HandshakeState.read_message` takes bytes received; after the third message
:meth:`HandshakeState.to_transport` returns a :class:`NoiseTransport`. An error from
``read_message`` aborts the handshake (spec section 5.3): the object refuses further use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.errors import (
    DecryptError,
    FrameTooLargeError,
    HandshakeError,
    LimitExceededError,
    LocalProtocolError,
)

__all__ = [
    "MAX_MESSAGE_LEN",
    "PROTOCOL_NAME",
    "CipherState",
    "HandshakeState",
    "NoiseTransport",
    "SymmetricState",
]

PROTOCOL_NAME: Final = b"Noise_XX_25519_ChaChaPoly_SHA256"
MAX_MESSAGE_LEN: Final = 65535  # "All Noise messages are less than or equal to 65535 bytes"
DHLEN: Final = 32
HASHLEN: Final = 32
TAGLEN: Final = 16
MAX_NONCE: Final = 2**64 - 1  # "The maximum n value (2^64-1) is reserved for other use."

# XX message patterns; the initiator writes messages 0 and 2. _OVERHEAD is what each
# message adds to its payload (ephemeral key, encrypted static key, tags).
_PATTERN: Final = (("e",), ("e", "ee", "s", "es"), ("s", "se"))
_OVERHEAD: Final = (DHLEN, DHLEN + DHLEN + 2 * TAGLEN, DHLEN + 2 * TAGLEN)


def _hash(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hmac(key: bytes, data: bytes) -> bytes:
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()


def _hkdf(chaining_key: bytes, input_key_material: bytes, num_outputs: int) -> list[bytes]:
    """HKDF as Noise section 4.3 defines it."""
    # Sets temp_key = HMAC-HASH(chaining_key, input_key_material).
    temp_key = _hmac(chaining_key, input_key_material)
    # Sets output1 = HMAC-HASH(temp_key, byte(0x01)).
    outputs = [_hmac(temp_key, b"\x01")]
    # Sets output2 = HMAC-HASH(temp_key, output1 || byte(0x02)). (output3 likewise.)
    for i in range(2, num_outputs + 1):
        outputs.append(_hmac(temp_key, outputs[-1] + bytes([i])))
    return outputs


def _nonce(n: int) -> bytes:
    # "The 96-bit nonce is formed by encoding 32 bits of zeros followed by
    # little-endian encoding of n."
    return b"\x00\x00\x00\x00" + n.to_bytes(8, "little")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError as exc:  # a low-order point: the shared secret would be all zeros
        raise HandshakeError("peer sent an invalid X25519 public key") from exc


@final
class CipherState:
    """A key ``k`` (maybe empty) and an 8-byte counter nonce ``n`` (spec section 5.1)."""

    __slots__ = ("_aead", "n")

    def __init__(self, key: bytes | None = None) -> None:
        self._aead: ChaCha20Poly1305 | None = None
        self.n = 0
        self.initialize_key(key)

    def initialize_key(self, key: bytes | None) -> None:
        """Sets k = key. Sets n = 0."""
        self._aead = None if key is None else ChaCha20Poly1305(key)
        self.n = 0

    def has_key(self) -> bool:
        """Returns true if k is non-empty, false otherwise."""
        return self._aead is not None

    def set_nonce(self, nonce: int) -> None:
        """Sets n = nonce."""
        self.n = nonce

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """If k is non-empty returns ENCRYPT(k, n++, ad, plaintext). Otherwise returns plaintext.

        Raises:
            LocalProtocolError: n reached 2^64-1; the caller must rekey or reconnect first.
        """
        if self._aead is None:
            return plaintext
        if self.n >= MAX_NONCE:
            raise LocalProtocolError("send nonce exhausted")
        ciphertext = self._aead.encrypt(_nonce(self.n), plaintext, ad)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """If k is non-empty returns DECRYPT(k, n++, ad, ciphertext). Otherwise returns ciphertext.

        On failure n is not incremented.

        Raises:
            DecryptError: authentication failed.
            LimitExceededError: the peer used up the nonce space.
        """
        if self._aead is None:
            return ciphertext
        if self.n >= MAX_NONCE:
            raise LimitExceededError("receive nonce exhausted")
        try:
            plaintext = self._aead.decrypt(_nonce(self.n), ciphertext, ad)
        except InvalidTag as exc:
            raise DecryptError("Noise message failed authentication") from exc
        self.n += 1
        return plaintext

    def rekey(self) -> None:
        """Sets k = REKEY(k); n is unchanged.

        REKEY(k) is the first 32 bytes of ENCRYPT(k, maxnonce, zerolen, zeros).

        Raises:
            LocalProtocolError: there is no key to rekey.
        """
        if self._aead is None:
            raise LocalProtocolError("rekey() without a key")
        new_k = self._aead.encrypt(_nonce(MAX_NONCE), bytes(32), b"")[:32]
        self._aead = ChaCha20Poly1305(new_k)


@final
class SymmetricState:
    """A CipherState, the chaining key ``ck`` and the handshake hash ``h`` (section 5.2)."""

    __slots__ = ("cipher_state", "ck", "h")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        self.cipher_state = CipherState()
        self.h = self.ck = b""
        self.initialize_symmetric(protocol_name)

    def initialize_symmetric(self, protocol_name: bytes) -> None:
        """InitializeSymmetric(protocol_name)."""
        # If protocol_name is less than or equal to HASHLEN bytes in length, sets h equal
        # to protocol_name with zero bytes appended to make HASHLEN bytes.
        # Otherwise sets h = HASH(protocol_name).
        if len(protocol_name) <= HASHLEN:
            self.h = protocol_name.ljust(HASHLEN, b"\x00")
        else:
            self.h = _hash(protocol_name)
        # Sets ck = h.
        self.ck = self.h
        # Calls InitializeKey(empty).
        self.cipher_state.initialize_key(None)

    def mix_key(self, input_key_material: bytes) -> None:
        """MixKey(input_key_material)."""
        # Sets ck, temp_k = HKDF(ck, input_key_material, 2).
        self.ck, temp_k = _hkdf(self.ck, input_key_material, 2)
        # Calls InitializeKey(temp_k). (HASHLEN is 32: no truncation.)
        self.cipher_state.initialize_key(temp_k)

    def mix_hash(self, data: bytes) -> None:
        """Sets h = HASH(h || data)."""
        self.h = _hash(self.h + data)

    def get_handshake_hash(self) -> bytes:
        """Returns h."""
        return self.h

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """Sets ciphertext = EncryptWithAd(h, plaintext), calls MixHash(ciphertext)."""
        ciphertext = self.cipher_state.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Sets plaintext = DecryptWithAd(h, ciphertext), calls MixHash(ciphertext).

        Raises:
            DecryptError: authentication failed.
        """
        plaintext = self.cipher_state.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        """Return ``(c1, c2)``: c1 for initiator-to-responder, c2 for the reverse."""
        # Sets temp_k1, temp_k2 = HKDF(ck, zerolen, 2).
        temp_k1, temp_k2 = _hkdf(self.ck, b"", 2)
        # Creates two new CipherState objects c1 and c2; keys them with temp_k1, temp_k2.
        return CipherState(temp_k1), CipherState(temp_k2)


@final
@dataclass(eq=False)
class NoiseTransport:
    """The transport phase after a completed handshake.

    Attributes:
        send_cipher: encrypts what we send (c1 for the initiator, c2 for the responder).
        recv_cipher: decrypts what we receive.
        handshake_hash: the final ``h`` (32 bytes), for channel binding.
        remote_static: the peer's X25519 static public key: its node id.
    """

    send_cipher: CipherState = field(repr=False)
    recv_cipher: CipherState = field(repr=False)
    handshake_hash: bytes
    remote_static: bytes

    def encrypt(self, plaintext: bytes) -> bytes:
        """Encrypt one transport message (empty associated data).

        Raises:
            LocalProtocolError: the message would exceed MAX_MESSAGE_LEN, or nonces ran out.
        """
        if len(plaintext) > MAX_MESSAGE_LEN - TAGLEN:
            raise LocalProtocolError(f"plaintext over {MAX_MESSAGE_LEN - TAGLEN} bytes")
        return self.send_cipher.encrypt_with_ad(b"", plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """Decrypt the peer's next transport message.

        Raises:
            FrameTooLargeError: it exceeds MAX_MESSAGE_LEN.
            DecryptError: it was forged, altered, truncated, replayed or reordered.
        """
        if len(ciphertext) > MAX_MESSAGE_LEN:
            raise FrameTooLargeError(f"Noise message over {MAX_MESSAGE_LEN} bytes")
        return self.recv_cipher.decrypt_with_ad(b"", ciphertext)


@final
class HandshakeState:
    """Initialize(XX, initiator, prologue, s, e) and the XX messages (section 5.3).

    Args:
        initiator: True for the side that sends the first message (the dialer).
        s: our static key (the node key).
        prologue: bytes both sides must agree on (p2paid: ``b"p2paid/1"``); mixed into ``h``.
        e: a fixed ephemeral key, for test vectors only; None generates one.

    ``rs`` and ``re``, the peer's public keys, start empty: XX has no pre-messages.
    """

    __slots__ = ("_failed", "_index", "_transport", "e", "initiator", "re", "rs", "s", "ss")

    def __init__(
        self,
        initiator: bool,
        s: X25519PrivateKey,
        prologue: bytes,
        e: X25519PrivateKey | None = None,
    ) -> None:
        # Calls InitializeSymmetric(protocol_name).
        self.ss = SymmetricState(PROTOCOL_NAME)
        # Calls MixHash(prologue).
        self.ss.mix_hash(prologue)
        # Sets the initiator, s, e, rs, and re variables to the corresponding arguments.
        self.initiator, self.s, self.e = initiator, s, e
        self.rs: bytes | None = None
        self.re: bytes | None = None
        self._index = 0
        self._failed = False
        self._transport: NoiseTransport | None = None

    @property
    def complete(self) -> bool:
        """True once all three messages have passed."""
        return self._transport is not None

    @property
    def is_our_turn(self) -> bool:
        """True if the next call is :meth:`write_message`, False if :meth:`read_message`."""
        return (self._index % 2 == 0) == self.initiator

    def _check_turn(self, writing: bool) -> None:
        if self._failed:
            raise LocalProtocolError("the handshake has failed")
        if self.complete:
            raise LocalProtocolError("the handshake is already complete")
        if self.is_our_turn != writing:
            verb = "write_message" if writing else "read_message"
            raise LocalProtocolError(f"{verb}() called out of turn at message {self._index + 1}")

    def _mix_dh(self, token: str) -> None:
        e, re, rs = self.e, self.re, self.rs
        assert e is not None and re is not None  # in XX both ephemerals precede every DH
        if token == "ee":
            # Calls MixKey(DH(e, re)).
            self.ss.mix_key(_dh(e, re))
        elif (token == "es") == self.initiator:
            # "es" as initiator, "se" as responder: Calls MixKey(DH(e, rs)).
            assert rs is not None
            self.ss.mix_key(_dh(e, rs))
        else:
            # "es" as responder, "se" as initiator: Calls MixKey(DH(s, re)).
            self.ss.mix_key(_dh(self.s, re))

    def _next_message(self) -> None:
        self._index += 1
        if self._index == len(_PATTERN):
            # If there are no more message patterns returns two new CipherState objects
            # by calling Split().
            c1, c2 = self.ss.split()
            send, recv = (c1, c2) if self.initiator else (c2, c1)
            assert self.rs is not None
            self._transport = NoiseTransport(send, recv, self.ss.get_handshake_hash(), self.rs)

    def write_message(self, payload: bytes = b"") -> bytes:
        """Build our next handshake message.

        Args:
            payload: carried encrypted (in clear in message 1, which has no key yet).

        Returns:
            The message to send.

        Raises:
            LocalProtocolError: not our turn, handshake over or failed, or payload too large.
        """
        self._check_turn(writing=True)
        if len(payload) > MAX_MESSAGE_LEN - _OVERHEAD[self._index]:
            raise LocalProtocolError("handshake payload too large")
        out = []
        for token in _PATTERN[self._index]:
            if token == "e":
                # Sets e (which must be empty) to GENERATE_KEYPAIR(). [Unless a test fixed e.]
                if self.e is None:
                    self.e = X25519PrivateKey.generate()
                e_pub = self.e.public_key().public_bytes_raw()
                # Appends e.public_key to the buffer. Calls MixHash(e.public_key).
                out.append(e_pub)
                self.ss.mix_hash(e_pub)
            elif token == "s":
                # Appends EncryptAndHash(s.public_key) to the buffer.
                out.append(self.ss.encrypt_and_hash(self.s.public_key().public_bytes_raw()))
            else:
                self._mix_dh(token)
        # Appends EncryptAndHash(payload) to the buffer.
        out.append(self.ss.encrypt_and_hash(payload))
        self._next_message()
        return b"".join(out)

    def read_message(self, message: bytes) -> bytes:
        """Process the peer's next handshake message.

        Args:
            message: exactly one handshake message, as received.

        Returns:
            The payload it carried.

        Raises:
            LocalProtocolError: it is our turn to write, or the handshake is over or failed.
            FrameTooLargeError: the message exceeds MAX_MESSAGE_LEN.
            HandshakeError: truncated, failed authentication, or an invalid public key.
        """
        self._check_turn(writing=False)
        self._failed = True  # cleared only once the whole message is accepted
        if len(message) > MAX_MESSAGE_LEN:
            raise FrameTooLargeError(f"Noise message over {MAX_MESSAGE_LEN} bytes")
        if len(message) < _OVERHEAD[self._index]:
            raise HandshakeError(f"truncated handshake message {self._index + 1}")
        rest = memoryview(message)
        try:
            for token in _PATTERN[self._index]:
                if token == "e":
                    # Sets re (which must be empty) to the next DHLEN bytes from the message.
                    self.re, rest = bytes(rest[:DHLEN]), rest[DHLEN:]
                    _dh(self.s, self.re)  # refuse a low-order key now, not at our next write
                    # Calls MixHash(re.public_key).
                    self.ss.mix_hash(self.re)
                elif token == "s":
                    # Sets temp to the next DHLEN + 16 bytes of the message if HasKey() == True,
                    # or to the next DHLEN bytes otherwise.
                    n = DHLEN + TAGLEN if self.ss.cipher_state.has_key() else DHLEN
                    temp, rest = bytes(rest[:n]), rest[n:]
                    # Sets rs (which must be empty) to DecryptAndHash(temp).
                    self.rs = self.ss.decrypt_and_hash(temp)
                else:
                    self._mix_dh(token)
            # Calls DecryptAndHash() on the remaining bytes of the message.
            payload = self.ss.decrypt_and_hash(bytes(rest))
        except DecryptError as exc:
            msg = f"handshake message {self._index + 1} failed authentication"
            raise HandshakeError(msg) from exc
        self._failed = False
        self._next_message()
        return payload

    def to_transport(self) -> NoiseTransport:
        """Return the transport phase (the same object on every call).

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        if self._transport is None:
            raise LocalProtocolError("the handshake is not complete")
        return self._transport
