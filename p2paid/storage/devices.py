"""Paired devices: one author key per phone, held by the node (the ``devices`` table).

Each phone paired with a node is a member of its own on one board: the node makes
an Ed25519 author key for it, keeps it here and signs the phone's changes with it,
so that every post names the phone it came from and one phone can be cut off
(:meth:`DeviceRegistry.revoke`) without touching the others. Revoking erases the
private key from the table (SQLite may keep the old bytes in free pages or the WAL
for a while); the public key stays, so that the device's past posts are still
shown as its own.

Private keys never leave this module except as an :class:`AuthorKey` (whose
``repr`` shows only the fingerprint); :class:`Device` holds none. In a protected
data dir the name and the private key are sealed (:meth:`Database.seal`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final, final

from p2paid.core import base32
from p2paid.core.identity import AuthorId, AuthorKey, fingerprint
from p2paid.errors import NotFoundError, RevokedDeviceError, StorageError
from p2paid.storage.sqlite import Database

__all__ = ["Device", "DeviceRegistry"]

#: Random bytes of a device id (16 base32 characters).
_ID_BYTES: Final = 10
_COLUMNS: Final = "id, board_id, name, author, created, last_seen, revoked"


@final
@dataclass(frozen=True, slots=True, repr=False)
class Device:
    """A phone paired with this node, as a member of one board (no secret in it)."""

    id: str  #: random, 16 lowercase base32 characters
    board_id: bytes
    name: str  #: what the node's owner called it ("Amina's phone")
    author: AuthorId  #: its public author key on the board
    created: int  #: ms since the epoch
    last_seen: int | None  #: ms since the epoch (see :meth:`DeviceRegistry.touch`)
    revoked: int | None  #: ms since the epoch when it was revoked; None while it may write

    @property
    def fingerprint(self) -> str:
        """The fingerprint the device's posts show to every member."""
        return fingerprint(self.author)

    def __repr__(self) -> str:
        state = "revoked" if self.revoked is not None else "active"
        return (f"<Device {self.id} {self.name!r} board {self.board_id.hex()[:12]} "
                f"{self.fingerprint} {state}>")


def _device(db: Database, row: tuple[object, ...]) -> Device:
    id_, board_id, stored_name, author, created, last_seen, revoked = row
    name = db.open_text("devices.name", str(id_).encode(), stored_name)
    if not (isinstance(id_, str) and isinstance(board_id, bytes) and isinstance(name, str)
            and isinstance(author, bytes) and isinstance(created, int)
            and isinstance(last_seen, int | None) and isinstance(revoked, int | None)):
        raise StorageError("the store holds a device record of the wrong shape; is it corrupt?")
    return Device(id_, board_id, name, AuthorId(author), created, last_seen, revoked)


@final
class DeviceRegistry:
    """The devices of a store, read and written through ``db``.

    Raises:
        StorageError: from every method when the store fails.
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    def add(self, board_id: bytes, name: str, now: int) -> Device:
        """Make a new device with a fresh author key for ``board_id``."""
        key = AuthorKey.generate()
        device = Device(base32.encode(os.urandom(_ID_BYTES)), board_id, name, key.public,
                        now, None, None)
        with self._db.write():
            self._db.execute(
                "INSERT INTO devices (id, board_id, name, author, author_key, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (device.id, board_id, self._db.seal_text("devices.name", device.id.encode(), name),
                 key.public, self._db.seal("devices.author_key", device.id.encode(),
                                           key.private_bytes()), now))
        return device

    def all(self, board_id: bytes | None = None) -> list[Device]:
        """Every device (of one board), oldest first, revoked ones included."""
        if board_id is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM devices ORDER BY created, rowid")
        else:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM devices WHERE board_id = ? ORDER BY created, rowid",
                (board_id,))
        return [_device(self._db, r) for r in rows]

    def get(self, device_id: str) -> Device:
        """The device with this id.

        Raises:
            NotFoundError: there is none.
        """
        rows = self._db.execute(f"SELECT {_COLUMNS} FROM devices WHERE id = ?",
                                (device_id.strip().lower(),))
        if not rows:
            raise NotFoundError(f"no paired device with id {device_id!r}")
        return _device(self._db, rows[0])

    def active(self, device_id: str) -> Device:
        """The device with this id, if it may write.

        Raises:
            NotFoundError: there is no such device.
            RevokedDeviceError: it was revoked.
        """
        device = self.get(device_id)
        if device.revoked is not None:
            raise RevokedDeviceError(f"device {device.name!r} ({device.id}) was revoked; "
                                     "it can no longer post (pair the phone again)")
        return device

    def key(self, device_id: str) -> AuthorKey:
        """The device's author key, if it may write.

        Raises:
            NotFoundError: there is no such device.
            RevokedDeviceError: it was revoked.
        """
        device = self.active(device_id)
        rows = self._db.execute("SELECT author_key FROM devices WHERE id = ?", (device.id,))
        raw = rows[0][0] if rows else None
        if not isinstance(raw, bytes):
            raise StorageError("the store holds a device key of the wrong shape")
        key = AuthorKey(self._db.open("devices.author_key", device.id.encode(), raw))
        if key.public != device.author:
            raise StorageError(f"device {device.id}'s key does not match its author")
        return key

    def revoke(self, device_id: str, now: int) -> Device:
        """Revoke a device: erase its private key; it can no longer write.
        Revoking it again changes nothing."""
        with self._db.write():
            device = self.get(device_id)
            if device.revoked is None:
                self._db.execute(
                    "UPDATE devices SET revoked = ?, author_key = X'' WHERE id = ?",
                    (now, device.id))
        return self.get(device.id)

    def touch(self, device_id: str, now: int) -> Device:
        """Note that the device was seen (used) now."""
        with self._db.write():
            device = self.get(device_id)
            self._db.execute("UPDATE devices SET last_seen = ? WHERE id = ?", (now, device.id))
        return self.get(device.id)
