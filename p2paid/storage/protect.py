"""Protecting a data dir: unlock, set, change and remove the passphrase, duress.

The states of a data dir, and what a crash between two steps leaves:

* plain: no ``atrest`` mark in the store (a stale key file, left by an interrupted
  :func:`protect`, is ignored);
* protected: the store is marked sealed and the key file holds the wrapped key.

:func:`protect` writes the key file first, then rewrites every value sealed and sets
the mark in one SQLite transaction, then scrubs free pages and the WAL.
:func:`unprotect` rewrites every value plain and drops the mark in one transaction,
scrubs, then erases the key file. :func:`change_passphrase` and :func:`set_duress`
rewrite the key file only.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from pathlib import Path
from typing import Final, final

from p2paid.errors import PassphraseError, StorageError, UsageError
from p2paid.storage import keystore
from p2paid.storage.atrest import (
    DEFAULT_PARAMS,
    KEY_SIZE,
    Credentials,
    KdfParams,
    KeyRecord,
    Sealer,
    Unlock,
    Unlocked,
    derive_wrap_key,
    new_record,
    new_salt,
    unlock_record,
)
from p2paid.storage.sqlite import PLAIN_META, Database, SnapshotRow, rejection_row

__all__ = [
    "KNOWN_TABLES",
    "CredentialSource",
    "DuressUnlock",
    "Unlocker",
    "change_passphrase",
    "is_protected",
    "protect",
    "set_duress",
    "start_over",
    "unprotect",
]

#: Given credentials, or a function that asks for them (called only if needed).
CredentialSource = Credentials | Callable[[], Credentials] | None

#: Every table of a node's store, and so every table :func:`protect` knows how to
#: seal; a table not listed makes it refuse rather than leave plaintext behind.
KNOWN_TABLES: Final = frozenset({"meta", "boards", "envelopes", "snapshots", "rejections",
                                 "forks", "devices", "known_peers", "checkpoints"})


class DuressUnlock(Exception):
    """The duress passphrase was given: the caller wipes and starts over."""

    def __init__(self, record: KeyRecord, unlocked: Unlocked) -> None:
        super().__init__("duress")
        self.record = record
        self.unlocked = unlocked


def is_protected(data_dir: str | os.PathLike[str]) -> bool:
    """Whether the data dir has a key file (a protected store, or an interrupted
    :func:`protect`); for ``status`` without opening the store."""
    return keystore.key_path(data_dir).exists()


@final
class Unlocker:
    """Opens a sealed store's key for :class:`Database` (``unlock=Unlocker(...)``).

    After a successful call, :attr:`unlocked` holds what the passphrase opened.

    Raises (when called):
        PassphraseError: no credentials, wrong ones, or no key file.
        DuressUnlock: the duress passphrase was given.
    """

    def __init__(self, data_dir: str | os.PathLike[str], credentials: CredentialSource) -> None:
        self.data_dir = Path(data_dir)
        self._credentials = credentials
        self.unlocked: Unlocked | None = None
        self.record: KeyRecord | None = None

    def __call__(self) -> Sealer:
        record = keystore.read_record(self.data_dir)
        if record is None:
            raise PassphraseError(
                f"the data dir {self.data_dir} is protected but its key file "
                f"{keystore.KEY_FILENAME} is missing: it was wiped, or the data dir is "
                "damaged; its data cannot be read")
        if self._credentials is None:
            raise PassphraseError(f"the data dir {self.data_dir} is protected by a passphrase;"
                                  " give it (--passphrase-file FILE, or P2PAID_PASSPHRASE_FILE,"
                                  " or on the terminal)")
        creds = self._credentials() if callable(self._credentials) else self._credentials
        unlocked = unlock_record(record, creds)
        if unlocked.kind is Unlock.DURESS:
            raise DuressUnlock(record, unlocked)
        assert unlocked.data_key is not None
        self.unlocked, self.record = unlocked, record
        return Sealer(unlocked.data_key)


def protect(db: Database, creds: Credentials, params: KdfParams = DEFAULT_PARAMS) -> Unlocked:
    """Protect a plain store with a passphrase (and a key file if ``creds`` has one).

    The caller holds the data dir's :class:`~p2paid.storage.lock.DataDirLock`: no
    other process may have the store open with its old, plain view.

    Raises:
        UsageError: it is protected already, or ``params`` are out of range.
    """
    if db.sealer is not None or db.sealed_on_disk():
        raise UsageError("the data dir is protected already; use 'p2paid passphrase change'")
    try:
        params.check()
    except StorageError:
        raise UsageError(f"Argon2id parameters out of range ({params}): memory up to 4 GiB, "
                         "up to 64 passes") from None
    _check_tables(db)
    data_key = os.urandom(KEY_SIZE)
    salt = new_salt()
    wrap_key = derive_wrap_key(creds, salt, params)
    keystore.write_record(db.data_dir, new_record(wrap_key, data_key, salt, params,
                                                  creds.key_file is not None))
    sealer = Sealer(data_key)
    _reseal(db, sealer)
    db.scrub()
    return Unlocked(Unlock.REAL, wrap_key, data_key)


def unprotect(db: Database) -> None:
    """Store everything plain again and erase the key file (the caller holds the lock).

    Raises:
        UsageError: it is not protected.
    """
    if db.sealer is None:
        raise UsageError("the data dir is not protected by a passphrase")
    _check_tables(db)
    _reseal(db, None)
    db.scrub()
    keystore.erase(db.data_dir)


def change_passphrase(data_dir: str | os.PathLike[str], record: KeyRecord, unlocked: Unlocked,
                      new: Credentials) -> bool:
    """Wrap the data-dir key under a new passphrase (and key file, or none); nothing
    else is rewritten. Returns False if a duress passphrase was dropped (it is bound to
    whether a key file is needed, which changed)."""
    assert unlocked.data_key is not None
    wrap_key = derive_wrap_key(new, record.salt, record.params)
    needs_file = new.key_file is not None
    keystore.write_record(data_dir, record.with_real(wrap_key, unlocked.data_key, needs_file))
    return needs_file == record.key_file


def set_duress(data_dir: str | os.PathLike[str], record: KeyRecord, unlocked: Unlocked,
               duress: bytes | None, key_file: bytes | None) -> None:
    """Set (or with None clear) the duress passphrase; it takes the key file the real
    one needs, if any.

    Raises:
        UsageError: it is the real passphrase.
    """
    if duress is None:
        keystore.write_record(data_dir, record.with_duress(None))
        return
    wrap_key = derive_wrap_key(Credentials(duress, key_file if record.key_file else None),
                               record.salt, record.params)
    if hmac.compare_digest(wrap_key, unlocked.wrap_key):
        raise UsageError("the duress passphrase must differ from the real one")
    keystore.write_record(data_dir, record.with_duress(wrap_key))


def start_over(data_dir: str | os.PathLike[str], signal: DuressUnlock) -> Unlocked:
    """After the data dir was wiped for a duress passphrase: a fresh, empty,
    protected store there, which that passphrase unlocks from now on (one derivation
    was done already; none is done again)."""
    record, unlocked = signal.record, signal.unlocked
    data_key = os.urandom(KEY_SIZE)
    keystore.write_record(data_dir, new_record(unlocked.wrap_key, data_key, record.salt,
                                               record.params, record.key_file))
    sealer = Sealer(data_key)
    db = Database(data_dir)
    try:
        with db.write():
            db.set_sealed(sealer)
    finally:
        db.close()
    return Unlocked(Unlock.REAL, unlocked.wrap_key, data_key)


# ---------------------------------------------------------------------------- resealing


def _tables(db: Database) -> set[str]:
    return {str(r[0]) for r in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}


def _check_tables(db: Database) -> None:
    unknown = _tables(db) - KNOWN_TABLES
    if unknown:
        names = ", ".join(sorted(unknown))
        raise UsageError(f"this store has tables p2paid cannot protect ({names}); is it a "
                         "relay's data dir, or from a newer p2paid?")


def _reseal(db: Database, new: Sealer | None) -> None:
    """Rewrite every sealed value of the store under ``new`` (None: plain), and mark it."""
    with db.write():
        tables = _tables(db)
        meta = [(str(k), db.get_meta(str(k))) for (k,) in db.execute("SELECT key FROM meta")
                if str(k) not in PLAIN_META]
        boards = db.boards()
        snaps: list[tuple[bytes, SnapshotRow, int]] = []
        for b, at in db.execute("SELECT board_id, saved_at FROM snapshots"):
            assert isinstance(b, bytes) and isinstance(at, int)
            snap = db.snapshot(b)
            if snap is not None:
                snaps.append((b, snap, at))
        rejected: list[tuple[bytes, bytes, int, bytes, str, str, object, object, int]] = []
        for b, a, s, h, c, d, x, ch, at in db.execute(
                "SELECT board_id, author, seq, hash, code, detail, data, change_hash, at "
                "FROM rejections"):
            ids = (_b(b), _b(a), _i(s), _b(h))
            detail = db.open_text("rejections.detail", rejection_row(*ids), d)
            rejected.append((*ids, str(c), detail, x, ch, _i(at)))
        devices = [(str(i), db.open_text("devices.name", str(i).encode(), n),
                    b"" if k == b"" else db.open("devices.author_key", str(i).encode(), k))
                   for i, n, k in db.execute("SELECT id, name, author_key FROM devices")]
        peers: list[tuple[object, ...]] = []
        if "known_peers" in tables:
            if db.sealer is None and new is not None:
                peers = [(new.blind("known_peers.node_id", _b(n)), f, s)
                         for n, f, s in db.execute("SELECT * FROM known_peers")]
            # a digest cannot be turned back into a node id: plain again, the book restarts
            db.execute("DELETE FROM known_peers")

        db.set_sealed(new)  # from here on, values are written under ``new``
        for key, value in meta:
            if value is not None:
                db.set_meta(key, value)
        for row in boards:
            db.execute("DELETE FROM boards WHERE board_id = ?", (row.board_id,))
            db.execute("INSERT INTO boards VALUES (?, ?, ?, ?, ?, ?)", db.board_values(row))
        for b, snap, at in snaps:
            db.execute("INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?, ?, ?, ?, ?)",
                       db.snapshot_values(b, snap, at))
        db.execute("DELETE FROM rejections")
        for b, a, s, h, c, d, x, ch, at in rejected:
            db.record_rejection(b, a, s, h, c, d, x if isinstance(x, bytes) else None, at,
                                ch if isinstance(ch, bytes) else None)
        for device_id, name, secret in devices:
            db.execute("UPDATE devices SET name = ?, author_key = ? WHERE id = ?",
                       (db.seal_text("devices.name", device_id.encode(), name),
                        secret if secret == b"" else db.seal("devices.author_key",
                                                             device_id.encode(), secret),
                        device_id))
        for peer in peers:
            db.execute("INSERT INTO known_peers VALUES (?, ?, ?)", peer)


def _b(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    raise StorageError("the store holds a record of the wrong shape; is it corrupt?")


def _i(value: object) -> int:
    if isinstance(value, int):
        return value
    raise StorageError("the store holds a record of the wrong shape; is it corrupt?")
