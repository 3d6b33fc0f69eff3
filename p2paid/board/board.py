"""A joined board: needs, offers, claims and relays, read and written by one member.

:class:`Board` is the synchronous library API for one board. Every write runs
under the store's write lock: it first catches up with envelopes that other
processes on the same data dir have stored, then makes one Automerge change,
seals it as the next envelope of the local author's feed and commits it durably
(:class:`~p2paid.board.log.BoardLog`, the board's replica engine, does that and
everything else about feeds and the document). Remote envelopes (a bundle, a peer)
go through :meth:`Board.receive`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Iterator
from typing import final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.chunk import ChangeHeader
from p2paid.board import relayplan
from p2paid.board.deviceboard import DeviceBoard
from p2paid.board.document import BoardDocument
from p2paid.board.log import BoardLog, Clock, ReceiveReport
from p2paid.board.member import ItemChanges, ItemFields, ItemFilters, MemberBoard
from p2paid.board.model import BoardEvent, now_ms
from p2paid.board.relayplan import RelaySuggestion, board_relays, normal_address
from p2paid.core.envelope import Envelope
from p2paid.core.feed import FeedHead
from p2paid.core.identity import AuthorId, AuthorKey
from p2paid.core.invite import MAX_RELAY_HINTS, BoardId, BoardKeys, Invite, derive_board_keys
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import NotFoundError, StorageError, UsageError
from p2paid.storage.base import ForkRow
from p2paid.storage.devices import Device, DeviceRegistry
from p2paid.storage.sqlite import BoardRow, Database

__all__ = ["Board", "ItemChanges", "ItemFields", "ItemFilters", "ReceiveReport"]


@final
class Board(MemberBoard):
    """One joined board. Obtain it from :meth:`p2paid.Store.board`; do not construct it.

    Reads (:meth:`items`, :meth:`get`) first pick up whatever other processes
    stored. Writes return once the change is durable in the store. The domain API
    (:class:`~p2paid.board.member.MemberBoard`) acts as the node's own member;
    :meth:`as_device` gives the same API as a paired device.
    """

    def __init__(self, db: Database, row: BoardRow, *, clock: Clock = now_ms) -> None:
        self._db = db
        self._clock = clock
        self.keys: BoardKeys = derive_board_keys(row.secret)
        if self.keys.board_id != row.board_id:
            raise StorageError("a stored board's id does not match its secret")
        self.id = BoardId(row.board_id)
        self.name = row.name
        self.relays: tuple[str, ...] = row.relays
        self._author_key = AuthorKey(row.author_key)
        self.author = AuthorId(self._author_key.public)
        self._cipher = ChaCha20Poly1305(self.keys.content_key)
        self._log = BoardLog(db, self.id, self._author_key, self._cipher, self.name, clock)
        self._devices = DeviceRegistry(db)
        for device in self._devices.all(self.id):
            self._log.add_local_author(device.author)

    def as_device(self, device: Device | str) -> DeviceBoard:
        """This board as a paired device (by :class:`Device` or id): the same domain
        API, acting as the device's own member (its section, its feed, its key), on
        the same document and log as the node's own member.

        Raises:
            NotFoundError: no such device, or it was paired for another board.
            RevokedDeviceError: the device was revoked (also raised by each write
                made after it is revoked, by this or another process).
        """
        device_id = device if isinstance(device, str) else device.id
        found = self._devices.get(device_id)
        if found.board_id != self.id:
            raise NotFoundError(f"device {found.name!r} ({found.id}) is not paired for "
                                f"board {self.name!r}")
        key = self._devices.key(found.id)
        self._log.add_local_author(key.public)
        return DeviceBoard(self._log, found, key, self._devices, self._clock)

    # ------------------------------------------------------------------ the replica engine

    @property
    def log(self) -> BoardLog:
        """The board's feeds and document (what replication and bundles use)."""
        return self._log

    @property
    def document(self) -> BoardDocument:
        """The board's document, loaded on first use."""
        return self._log.document

    def load(self) -> BoardDocument:
        """Load the document now (otherwise it loads on first use); returns it."""
        return self._log.load()

    def refresh(self) -> list[ChangeHeader]:
        """Apply envelopes that other processes stored since we last looked."""
        return self._log.refresh()

    def receive(self, envelopes: Iterable[bytes | Envelope], *,
                defer_apply: bool = False) -> ReceiveReport:
        """Verify, store and apply envelopes from a peer or a bundle (see
        :meth:`BoardLog.receive`)."""
        return self._log.receive(envelopes, defer_apply=defer_apply)

    def precheck(self, records: Iterable[bytes]) -> None:
        """Check checkpoints a later :meth:`receive` will take (see
        :meth:`BoardLog.precheck`)."""
        self._log.precheck(records)

    def flush(self, max_changes: int | None = None) -> list[ChangeHeader]:
        """Apply changes that :meth:`receive` stored with ``defer_apply``."""
        return self._log.flush(max_changes)

    def heads(self) -> dict[bytes, FeedHead]:
        """The newest envelope held per author."""
        return self._log.heads()

    def version_vector(self) -> dict[bytes, int]:
        """``author -> highest contiguous seq`` held."""
        return self._log.version_vector()

    def envelopes(self) -> Iterable[bytes]:
        """Every stored envelope of this board, per author in seq order."""
        return self._log.envelopes()

    def forks(self) -> dict[bytes, ForkRow]:
        """Proven forks of this board's authors (each author's feed ends before its fork)."""
        return self._log.forks()

    @property
    def forked(self) -> dict[bytes, int]:
        """``author -> seq`` of each proven fork (the author's feed ends before ``seq``)."""
        return self._log.forked

    def record_fork(self, first: bytes | Envelope, second: bytes | Envelope) -> bool:
        """Learn a fork from its evidence (see :meth:`BoardLog.record_fork`)."""
        return self._log.record_fork(first, second)

    def track_events(self) -> None:
        """Record a :class:`~p2paid.model.BoardEvent` for every change from now on."""
        self._log.track_events()

    def take_events(self) -> list[BoardEvent]:
        """Events recorded since the last call (see :meth:`track_events`)."""
        return self._log.take_events()

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """Make every write inside one durable transaction (one commit, one fsync)."""
        with self._log.group():
            yield

    def save_snapshot(self) -> None:
        """Store the current document so the next open skips re-applying changes."""
        self._log.save_snapshot()

    def maybe_snapshot(self, threshold: int | None = None) -> bool:
        """Save a snapshot if enough changes were applied since the last."""
        return (self._log.maybe_snapshot() if threshold is None
                else self._log.maybe_snapshot(threshold))

    def close(self) -> None:
        """Save a snapshot if enough changed; the board stays usable."""
        self._log.close()

    @property
    def applied_count(self) -> int:
        return self._log.applied_count

    @property
    def seen_id(self) -> int:
        return self._log.seen_id

    def __repr__(self) -> str:
        return f"<Board {self.name!r} {self.id.hex()[:12]}>"

    def invite(self, relays: Iterable[str] | None = None) -> str:
        """The invite URI (board secret, name and relay hints): share it only with members."""
        hints = tuple(self.relays[-MAX_RELAY_HINTS:] if relays is None else relays)
        return Invite(self.keys.secret, self.name, hints).to_uri()

    def export_automerge(self) -> bytes:
        """The raw saved Automerge document, readable by any Automerge implementation."""
        self._log.refresh()
        return self._log.document.save()

    def publish_relays(self, relays: Iterable[str]) -> None:
        """Publish relay addresses in your own section, as hints for other members."""
        hints = tuple(relays)
        self._log.write(lambda w: w.set_relays(hints))

    def add_relay(self, address: str) -> None:
        """Use a relay for this board: remember it, and publish it to the other members.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays:
            return
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        self.publish_relays(self.relays[-MAX_RELAY_HINTS:])

    def relays_in_use(self) -> list[str]:
        """The relays this board syncs through: its own (from its invite, added here,
        or accepted) and those you publish; each valid address once, in normal form.

        Relays that other members publish are not among them: they are only
        suggestions until accepted (:meth:`suggested_relays`, :meth:`accept_relay`).
        """
        self._log.refresh()
        self._reload_relays()
        return board_relays(self.relays, self._log.document.view.relays(self.author))

    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        """Relays other members publish on this board that it does not use, each with
        the members who publish it (their names are not verified: compare
        fingerprints). Rejected ones only with ``rejected=True``."""
        in_use = set(self.relays_in_use())
        view = self._log.document.view
        hints = {a: view.relays(a) for a in self._log.document.authors if a != self.author}
        hints = {a: h for a, h in hints.items() if h}
        if not hints:
            return []
        members = {m.author: m for m in view.members()}
        found = relayplan.suggestions(
            self.id, self.name, [(members[a.hex()], h) for a, h in hints.items()],
            in_use, self._rejected_relays())
        return [s for s in found if rejected or not s.rejected]

    def accept_relay(self, address: str) -> str:
        """Sync this board through a relay that another member suggests. It becomes
        one of the board's own relays (so it also goes into invites made here), but
        is not published. Returns the address in normal form.

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            return text
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() - {text})
        self.relays = (*self.relays, text)
        self._db.set_board_relays(self.id, self.relays)
        return text

    def reject_relay(self, address: str) -> str:
        """Say that a relay another member suggests is not to be used: it is then left
        out of :meth:`suggested_relays` (it can still be accepted later).

        Raises:
            InviteError: not a relay address.
            NotFoundError: no other member of this board suggests it.
            UsageError: this board syncs through it (stop with :meth:`remove_relay`).
        """
        text = str(RelayAddress.parse(address))
        if text in self.relays_in_use():
            raise UsageError(f"board {self.name!r} syncs through {text}; "
                             "to stop, use 'p2paid relay remove'")
        if all(s.address != text for s in self.suggested_relays(rejected=True)):
            raise NotFoundError(f"no member of board {self.name!r} suggests relay {text}")
        self._set_rejected_relays(self._rejected_relays() | {text})
        return text

    def remove_relay(self, address: str) -> bool:
        """Stop syncing this board through a relay of its own (and stop publishing it,
        if you do). Returns False if the board did not use it.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        self._log.refresh()
        self._reload_relays()
        kept = tuple(r for r in self.relays if normal_address(r) != text)
        published = self._log.document.view.relays(self.author)
        unpublish = [r for r in published if normal_address(r) != text]
        if kept == self.relays and len(unpublish) == len(published):
            return False
        if kept != self.relays:
            self.relays = kept
            self._db.set_board_relays(self.id, kept)
        if len(unpublish) != len(published):
            self.publish_relays(unpublish)
        return True

    def _reload_relays(self) -> None:
        """The board's own relays as stored (another process may have changed them)."""
        for row in self._db.boards():
            if row.board_id == self.id:
                self.relays = row.relays

    def _rejected_relays(self) -> frozenset[str]:
        raw = self._db.get_meta(relayplan.REJECTED_META_PREFIX + self.id.hex())
        try:
            entries = json.loads(raw) if raw else []
        except ValueError:
            entries = []
        return frozenset(e for e in entries if isinstance(e, str))

    def _set_rejected_relays(self, addresses: Iterable[str]) -> None:
        self._db.set_meta(relayplan.REJECTED_META_PREFIX + self.id.hex(),
                          json.dumps(sorted(addresses)).encode())
