"""Encryption at rest, sans I/O: the data-dir key, its wrapping, and sealed values.

A protected data dir has one random 32-byte *data-dir key*. Every stored value that
is not already ciphertext under a board's content key is *sealed* under it
(:class:`Sealer`: ChaCha20-Poly1305, the associated data naming the table, column
and row, so that a sealed value moved to another row or column does not open).

The data-dir key is *wrapped* (encrypted) under a key derived from the passphrase
with Argon2id and, optionally, from the bytes of a key file (Argon2id's ``secret``
input). The wrapped key lives in the key file ``p2paid.key`` (:mod:`p2paid.storage.keystore`)
as :data:`RECORD_SIZE`-byte records, each with a checksum, so that a torn write is
detected and the other copy used. A record has two slots that look alike: the real
one (the wrapped data-dir key) and the duress one (random bytes, or a marker wrapped
under the duress passphrase). One Argon2id derivation is tried against both, so a
duress passphrase costs no more time than the real one, and nothing in the file
says whether one is set.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, replace
from enum import Enum
from typing import Final, final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from p2paid.errors import PassphraseError, StorageError

__all__ = [
    "DEFAULT_PARAMS",
    "KEY_SIZE",
    "RECORD_SIZE",
    "Credentials",
    "KdfParams",
    "KeyRecord",
    "Sealer",
    "Unlock",
    "Unlocked",
    "derive_wrap_key",
    "new_record",
    "new_salt",
    "unlock_record",
]

KEY_SIZE: Final = 32
RECORD_SIZE: Final = 256
_MAGIC: Final = b"P2PAIDK1"
_SALT_SIZE: Final = 16
_NONCE: Final = 12
_SLOT: Final = _NONCE + KEY_SIZE + 16
#: magic, generation, memory (KiB), iterations, lanes, flags, salt
_HEADER: Final = struct.Struct(f">8sQIIIB{_SALT_SIZE}s")
_BODY: Final = _HEADER.size + 2 * _SLOT
_FLAG_KEY_FILE: Final = 1
#: What a duress slot wraps: the content is irrelevant, only that it opens.
_DURESS_MARK: Final = b"\0" * KEY_SIZE
#: Refused when reading a record: a hostile file must not make us allocate gigabytes.
_MAX_MEMORY_KIB: Final = 4 * 1024 * 1024
_MAX_ITERATIONS: Final = 64


@final
@dataclass(frozen=True, slots=True)
class KdfParams:
    """Argon2id's cost parameters (RFC 9106)."""

    memory_kib: int
    iterations: int
    lanes: int

    def check(self) -> None:
        """Raises StorageError for parameters out of range (a damaged or hostile file)."""
        if not (1 <= self.lanes <= 16 and 8 * self.lanes <= self.memory_kib <= _MAX_MEMORY_KIB
                and 1 <= self.iterations <= _MAX_ITERATIONS):
            raise StorageError(f"the key file asks for Argon2id parameters out of range "
                               f"({self}); is it damaged?")


#: RFC 9106's second recommended option: 64 MiB, 3 passes, 4 lanes. About 0.1 s on a
#: current x86 server core and, by the reasoning in the README, 0.5-0.8 s on a
#: Raspberry Pi 4.
DEFAULT_PARAMS: Final = KdfParams(memory_kib=64 * 1024, iterations=3, lanes=4)


@final
@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """What unlocks a data dir: a passphrase, and the contents of a key file if it has one."""

    passphrase: bytes
    key_file: bytes | None = None

    def __repr__(self) -> str:
        return "<Credentials>"


def derive_wrap_key(creds: Credentials, salt: bytes, params: KdfParams) -> bytes:
    """Argon2id of the passphrase, the key file's digest as Argon2's secret input."""
    secret = None if creds.key_file is None else hashlib.sha256(
        b"p2paid key file\0" + creds.key_file).digest()
    kdf = Argon2id(salt=salt, length=KEY_SIZE, iterations=params.iterations,
                   lanes=params.lanes, memory_cost=params.memory_kib, secret=secret)
    return kdf.derive(creds.passphrase)


@final
@dataclass(frozen=True, slots=True, repr=False)
class KeyRecord:
    """One record of the key file: parameters, salt, and the two slots."""

    generation: int
    params: KdfParams
    key_file: bool  #: unlocking needs a key file too
    salt: bytes
    real: bytes  #: nonce + wrapped data-dir key
    duress: bytes  #: nonce + wrapped marker, or random bytes

    def header(self) -> bytes:
        return _HEADER.pack(_MAGIC, self.generation, self.params.memory_kib,
                            self.params.iterations, self.params.lanes,
                            _FLAG_KEY_FILE if self.key_file else 0, self.salt)

    def encode(self) -> bytes:
        body = self.header() + self.real + self.duress
        body += b"\0" * (RECORD_SIZE - 32 - len(body))
        return body + hashlib.sha256(body).digest()

    @staticmethod
    def decode(raw: bytes) -> KeyRecord | None:
        """The record in ``raw``; None if it is torn or not a record (checksum).

        Raises:
            StorageError: it is intact but of an unknown version or out of range.
        """
        if len(raw) != RECORD_SIZE or not hmac.compare_digest(
                hashlib.sha256(raw[:-32]).digest(), raw[-32:]):
            return None
        magic, gen, memory, iterations, lanes, flags, salt = _HEADER.unpack_from(raw)
        if magic != _MAGIC or flags & ~_FLAG_KEY_FILE:
            raise StorageError("the key file is of an unknown version; upgrade p2paid")
        params = KdfParams(memory, iterations, lanes)
        params.check()
        at = _HEADER.size
        return KeyRecord(gen, params, bool(flags & _FLAG_KEY_FILE), salt,
                         raw[at:at + _SLOT], raw[at + _SLOT:at + 2 * _SLOT])

    def with_real(self, wrap_key: bytes, data_key: bytes, key_file: bool) -> KeyRecord:
        """This record with the data-dir key wrapped anew (a changed passphrase); the
        duress slot is kept, since it was made with the same salt."""
        rec = replace(self, generation=self.generation + 1, key_file=key_file)
        return replace(rec, real=_wrap(wrap_key, data_key, rec, b"real"))

    def with_duress(self, wrap_key: bytes | None) -> KeyRecord:
        """This record with a duress passphrase's slot (None: none, random bytes)."""
        rec = replace(self, generation=self.generation + 1)
        slot = os.urandom(_SLOT) if wrap_key is None else _wrap(wrap_key, _DURESS_MARK, rec,
                                                                 b"duress")
        return replace(rec, duress=slot)


def _ad(rec: KeyRecord, slot: bytes) -> bytes:
    # The generation is left out: a slot kept across a rewrap must still open.
    h = rec.header()
    return h[:8] + h[16:] + b"\0" + slot


def _wrap(wrap_key: bytes, value: bytes, rec: KeyRecord, slot: bytes) -> bytes:
    nonce = os.urandom(_NONCE)
    return nonce + ChaCha20Poly1305(wrap_key).encrypt(nonce, value, _ad(rec, slot))


def _unwrap(wrap_key: bytes, blob: bytes, rec: KeyRecord, slot: bytes) -> bytes | None:
    try:
        return ChaCha20Poly1305(wrap_key).decrypt(blob[:_NONCE], blob[_NONCE:], _ad(rec, slot))
    except InvalidTag:
        return None


def new_record(wrap_key: bytes, data_key: bytes, salt: bytes, params: KdfParams,
               key_file: bool) -> KeyRecord:
    """A first record: ``data_key`` wrapped under ``wrap_key`` (derived with ``salt``)."""
    rec = KeyRecord(1, params, key_file, salt, b"", os.urandom(_SLOT))
    return replace(rec, real=_wrap(wrap_key, data_key, rec, b"real"))


def new_salt() -> bytes:
    return os.urandom(_SALT_SIZE)


class Unlock(Enum):
    REAL = "real"
    DURESS = "duress"


@final
@dataclass(frozen=True, slots=True, repr=False)
class Unlocked:
    """What a passphrase opened: the data-dir key (REAL) or the duress slot."""

    kind: Unlock
    wrap_key: bytes
    data_key: bytes | None  #: None for DURESS


def unlock_record(rec: KeyRecord, creds: Credentials) -> Unlocked:
    """Derive once and try both slots.

    Raises:
        PassphraseError: neither opens (wrong passphrase, or the key file is missing or
            wrong).
    """
    if rec.key_file and creds.key_file is None:
        raise PassphraseError("this data dir needs its key file too (--data-key-file FILE, or "
                              "P2PAID_DATA_KEY_FILE)")
    if not rec.key_file and creds.key_file is not None:
        creds = Credentials(creds.passphrase)  # (a key file given needlessly is ignored)
    wrap_key = derive_wrap_key(creds, rec.salt, rec.params)
    data_key = _unwrap(wrap_key, rec.real, rec, b"real")
    if data_key is not None and len(data_key) == KEY_SIZE:
        return Unlocked(Unlock.REAL, wrap_key, data_key)
    if _unwrap(wrap_key, rec.duress, rec, b"duress") is not None:
        return Unlocked(Unlock.DURESS, wrap_key, None)
    extra = " or key file" if rec.key_file else ""
    raise PassphraseError(f"wrong passphrase{extra}; nothing was changed")


@final
class Sealer:
    """Seals and opens stored values under a data-dir key.

    ``where`` names the table and column (``"boards.name"``), ``row`` the row (its
    key's bytes): both are bound into the ciphertext as associated data.
    """

    __slots__ = ("_aead", "_blind")

    def __init__(self, data_key: bytes) -> None:
        if len(data_key) != KEY_SIZE:
            raise ValueError("a data-dir key is 32 bytes")
        self._aead = ChaCha20Poly1305(_subkey(data_key, b"p2paid seal v1"))
        self._blind = _subkey(data_key, b"p2paid blind v1")

    def __repr__(self) -> str:
        return "<Sealer>"

    def seal(self, where: str, row: bytes, value: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, value, _value_ad(where, row))

    def open(self, where: str, row: bytes, blob: bytes) -> bytes:
        """Raises StorageError if ``blob`` is not what was sealed for ``where`` and ``row``."""
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], _value_ad(where, row))
        except (InvalidTag, ValueError):
            raise StorageError(f"a sealed value in the store ({where}) does not open: it was "
                               "damaged or moved; is the store corrupt?") from None

    def blind(self, where: str, value: bytes) -> bytes:
        """A keyed digest of ``value``, to look it up without storing it (HMAC-SHA256)."""
        return hmac.new(self._blind, where.encode() + b"\0" + value, "sha256").digest()


def _subkey(key: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), KEY_SIZE, salt=None, info=info).derive(key)


def _value_ad(where: str, row: bytes) -> bytes:
    return b"p2paid at rest v1\0" + where.encode() + b"\0" + row
