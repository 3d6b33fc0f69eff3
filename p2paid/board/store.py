"""The synchronous library API: a data dir with its boards, keys, devices and bundles.

>>> import p2paid
>>> with p2paid.open_store("/tmp/aid") as store:              # doctest: +SKIP
...     board = store.create_board("Riverside mutual aid")
...     board.post_need("Drinking water", category="water", quantity=40, unit="litres")
...     print(board.invite())

Everything the ``p2paid`` command does is available here; the async node
(:func:`p2paid.open_node`) is built on the same objects.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from platformdirs import user_data_dir

from p2paid.automerge.rules import AuthorState, FeedRules, check_change
from p2paid.board.board import Board, ReceiveReport
from p2paid.board.bundle import check_bundle, read_bundle, write_bundle
from p2paid.board.checkpoint import check_checkpoint
from p2paid.board.model import clean_text, now_ms
from p2paid.board.relayplan import RelaySuggestion, configured_for
from p2paid.core.checkpoint import Checkpoint, decode_record
from p2paid.core.envelope import Envelope, open_envelope
from p2paid.core.feed import FeedHead, Rejection
from p2paid.core.identity import AuthorKey, NodeKey, fingerprint
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret, validate_board_name
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.replication import peek_envelope
from p2paid.errors import (
    AmbiguousIdError,
    ChainError,
    EnvelopeError,
    FileError,
    NotFoundError,
    UsageError,
)
from p2paid.storage.atrest import Sealer
from p2paid.storage.devices import Device, DeviceRegistry
from p2paid.storage.files import existing_kind
from p2paid.storage.ingest import ingest, ingest_checkpoint
from p2paid.storage.keystore import key_path
from p2paid.storage.peerbook import PeerBook
from p2paid.storage.protect import CredentialSource, DuressUnlock, Unlocker, start_over
from p2paid.storage.roles import NODE_KEY, refuse_relay_dir
from p2paid.storage.sqlite import DB_FILENAME, BoardRow, Database
from p2paid.storage.wipe import wipe

__all__ = ["BoardReport", "ImportReport", "Progress", "Store", "default_data_dir",
           "open_store"]

#: Envelopes handed to one :meth:`Board.receive` call during a bundle import.
IMPORT_BATCH: Final = 10_000
_NODE_KEY: Final = NODE_KEY
_RELAYS: Final = "relays"
_RUNTIME: Final = "runtime"
_LAST_SYNC: Final = "last_sync"


def default_data_dir() -> Path:
    """``$P2PAID_DATA_DIR``, else the per-user data dir (e.g. ``~/.local/share/p2paid``)."""
    env = os.environ.get("P2PAID_DATA_DIR")
    return Path(env) if env else Path(user_data_dir("p2paid", appauthor=False))


@final
@dataclass(slots=True)
class BoardReport:
    """Import counts for one board of a bundle."""

    board_id: bytes
    name: str | None  #: None for a board this store has not joined (carried, unreadable)
    accepted: int = 0
    duplicates: int = 0
    held: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, report: ReceiveReport) -> None:
        self.accepted += report.accepted
        self.duplicates += report.duplicates
        self.held = report.held
        for rejection in report.rejected:
            self.rejected[rejection.error.code] += 1


@final
@dataclass(slots=True)
class ImportReport:
    """What a bundle import did, per board."""

    boards: dict[bytes, BoardReport] = field(default_factory=dict)

    @property
    def accepted(self) -> int:
        return sum(b.accepted for b in self.boards.values())

    @property
    def duplicates(self) -> int:
        return sum(b.duplicates for b in self.boards.values())

    @property
    def rejected(self) -> int:
        return sum(sum(b.rejected.values()) for b in self.boards.values())


@final
@dataclass(frozen=True, slots=True)
class Progress:
    """How far a bundle import or export is, for a progress callback."""

    done: int  #: envelopes handled so far (for an import: each stored and committed)
    total: int  #: envelopes in all
    #: (imports) what the envelopes done so far did; their changes are committed
    report: ImportReport | None = None


@final
class Store:
    """A p2paid data dir: its boards, keys and envelopes. Use :func:`open_store`."""

    def __init__(self, data_dir: str | os.PathLike[str], *, create: bool = True,
                 credentials: CredentialSource = None) -> None:
        path = Path(data_dir)
        if existing_kind(path, "use the data dir") == "file":
            raise FileError(f"cannot use the data dir {path}: it is a file, not a folder", path)
        if not create and existing_kind(path / DB_FILENAME, "use the data dir") is None:
            if key_path(path).exists():
                raise NotFoundError(f"no p2paid data in {path} but its key file; the data "
                                    "dir was damaged or partly wiped")
            raise NotFoundError(f"no p2paid data in {path}; run 'p2paid init' first")
        self.data_dir = path
        unlocker = Unlocker(path, credentials)
        try:
            self._db = Database(path, unlock=unlocker)
        except DuressUnlock as signal:
            # Wipe silently and open an empty store that this passphrase unlocks.
            wipe(path, keep_dir=True)
            unlocker.unlocked = start_over(path, signal)
            assert unlocker.unlocked.data_key is not None
            sealer = Sealer(unlocker.unlocked.data_key)
            self._db = Database(path, unlock=lambda: sealer)
        #: what unlocked the store (None: it is not protected, or was started over)
        self.unlocker = unlocker
        #: True if this open created the store (nothing was there before)
        self.created = self._db.created
        try:
            refuse_relay_dir(self._db, path)
        except BaseException:
            self._db.close()
            raise
        self._boards: dict[bytes, Board] = {}
        self._devices = DeviceRegistry(self._db)

    @property
    def sealer(self) -> Sealer | None:
        """The data dir's sealer, for a store of its own beside this one (the web
        interface's); None if the data dir is not protected."""
        return self._db.sealer

    @property
    def protected(self) -> bool:
        """Whether the data dir is protected by a passphrase (encrypted at rest)."""
        return self._db.sealer is not None

    @property
    def database(self) -> Database:
        """The underlying store (for :mod:`p2paid.storage.protect`)."""
        return self._db

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Save snapshots where worthwhile and close the database."""
        try:
            for board in self._boards.values():
                board.close()
        finally:
            self._db.close()

    # ------------------------------------------------------------------ node state

    def peer_book(self) -> PeerBook:
        """The peers this node has met (kept in the store, across restarts)."""
        return PeerBook(self._db)

    def last_arrival(self) -> int:
        """The arrival counter of the newest stored envelope (any board, any process):
        it grows whenever an envelope is stored, so a watcher polls it."""
        return self._db.last_id()

    def read_runtime(self) -> bytes | None:
        """What the node running on this data dir last published (see
        :meth:`write_runtime`)."""
        return self._db.get_meta(_RUNTIME)

    def write_runtime(self, status: bytes) -> None:
        """Publish the running node's status for ``p2paid status`` in other processes."""
        self._db.set_meta(_RUNTIME, status)

    def record_sync(self, board_ids: Iterable[bytes], via: str, at: int | None = None) -> None:
        """Remember that these boards were just synced (``via``: ``bundle``, ``peer``,
        ``relay``), for ``p2paid status`` after the process that synced has gone."""
        with self._db.write():
            synced = self._sync_records()
            for board_id in board_ids:
                synced[board_id.hex()] = [now_ms() if at is None else at, via]
            self._db.set_meta(_LAST_SYNC, json.dumps(synced).encode())

    def last_syncs(self) -> dict[bytes, tuple[int, str]]:
        """When each board was last synced and how, as :meth:`record_sync` kept it:
        ``board_id -> (ms since the epoch, via)``."""
        return {bytes.fromhex(k): (int(v[0]), str(v[1])) for k, v in self._sync_records().items()
                if isinstance(v, list) and len(v) == 2}

    def _sync_records(self) -> dict[str, list[int | str]]:
        raw = self._db.get_meta(_LAST_SYNC)
        try:
            records = json.loads(raw) if raw else {}
        except ValueError:
            return {}
        return records if isinstance(records, dict) else {}

    # ------------------------------------------------------------------ keys

    @property
    def node_key(self) -> NodeKey:
        """This node's transport key, created on first use."""
        raw = self._db.get_meta(_NODE_KEY)
        if raw is None:
            with self._db.write():
                raw = self._db.get_meta(_NODE_KEY)
                if raw is None:
                    raw = NodeKey.generate().private_bytes()
                    self._db.set_meta(_NODE_KEY, raw)
        return NodeKey(raw)

    @property
    def node_fingerprint(self) -> str:
        return fingerprint(self.node_key.public)

    # ------------------------------------------------------------------ boards

    def boards(self) -> list[Board]:
        """Every joined board, oldest first."""
        out = []
        for row in self._db.boards():
            board = self._boards.get(row.board_id)
            if board is None:
                board = self._boards[row.board_id] = Board(self._db, row)
            out.append(board)
        return out

    def board(self, selector: str | bytes | None = None) -> Board:
        """Find a joined board by id (hex prefix), exact name, or alone.

        Raises:
            NotFoundError: no board matches, or none is joined.
            AmbiguousIdError: several match, or ``selector`` is None and several are joined.
        """
        boards = self.boards()
        if isinstance(selector, bytes):
            for b in boards:
                if b.id == selector:
                    return b
            raise NotFoundError(f"board {selector.hex()[:12]} is not joined")
        if selector is None:
            if len(boards) == 1:
                return boards[0]
            if not boards:
                raise NotFoundError("no board yet: create one with 'p2paid board create NAME' "
                                    "or join one with 'p2paid board join INVITE'")
            names = ", ".join(f"{b.name} ({b.id.hex()[:8]})" for b in boards)
            raise AmbiguousIdError(f"several boards are joined; choose one with --board: {names}")
        wanted = selector.strip()
        by_name = [b for b in boards if b.name == wanted]
        if len(by_name) == 1:
            return by_name[0]
        prefix = wanted.lower()
        by_id = [b for b in boards if b.id.hex().startswith(prefix)] if len(prefix) >= 4 else []
        if len(by_id) == 1:
            return by_id[0]
        if len(by_id) > 1 or len(by_name) > 1:
            raise AmbiguousIdError(f"{wanted!r} matches several boards; give more of the id")
        raise NotFoundError(f"no joined board named or with id {wanted!r}")

    def create_board(
        self, name: str, *, display_name: str | None = None, relays: Iterable[str] = ()
    ) -> Board:
        """Create a new board with a fresh secret; you are its first member.

        Raises:
            InviteError: a relay hint is not a valid relay address.
        """
        hints = tuple(str(RelayAddress.parse(r)) for r in relays)
        return self._add_board(new_board_secret(), validate_board_name(name), hints,
                               display_name)

    def join(self, invite: str | Invite, *, display_name: str | None = None) -> Board:
        """Join a board from its invite. Envelopes already carried for it become readable.

        Raises:
            InviteError: the invite is malformed.
            UsageError: the board is already joined.
        """
        inv = Invite.from_uri(invite) if isinstance(invite, str) else invite
        return self._add_board(inv.secret, inv.name, inv.relays, display_name)

    def _add_board(
        self, secret: bytes, name: str, relays: tuple[str, ...], display_name: str | None
    ) -> Board:
        keys = derive_board_keys(secret)
        row = BoardRow(keys.board_id, secret, name, AuthorKey.generate().private_bytes(),
                       relays, now_ms())
        with self._db.write():
            if any(b.board_id == keys.board_id for b in self._db.boards()):
                raise UsageError(f"board {name!r} is already joined")
            self._db.add_board(row)
            self._adopt_carried(row)
        board = self._boards[row.board_id] = Board(self._db, row)
        if display_name:
            board.set_display_name(display_name)
        return board

    def _adopt_carried(self, row: BoardRow) -> None:
        """Check envelopes carried for a board we just joined; drop what members refuse
        (with everything later of the same author, as every member does)."""
        board_id = row.board_id
        cipher = ChaCha20Poly1305(derive_board_keys(row.secret).content_key)
        rules = FeedRules(lambda _author: AuthorState(), lambda _author: False)
        updates: list[tuple[bytes, int]] = []
        rows = self._db.envelopes_by_id([i for i, *_ in self._db.change_index(board_id)])
        refused_from: dict[bytes, int] = {}
        checkpoints = self._db.checkpoint_seqs(board_id)
        for r in rows:
            if r.author in refused_from:
                continue
            try:
                if r.seq == checkpoints.get(r.author) and rules.state(r.author).seq < r.seq:
                    # The feed starts with a checkpoint (SPEC 8a): check it as a member.
                    held = self._db.checkpoint(board_id, r.author)
                    assert held is not None
                    checked = check_checkpoint(Checkpoint.decode(held[1]), cipher)
                    rules.adopt(r.author, checked.state)
                    updates.append((checked.head[0].hash, r.id))
                    continue
                env = Envelope.decode(r.data)
                header = check_change(env, open_envelope(env, cipher))
                rules.check(header)
            except EnvelopeError as exc:
                from_checkpoint = r.seq == checkpoints.get(r.author)
                refused_from[r.author] = 1 if from_checkpoint else r.seq
                if not from_checkpoint:  # (a checkpoint's head may be a valid envelope)
                    self._db.record_rejection(board_id, r.author, r.seq, r.hash, exc.code,
                                             str(exc), None, now_ms())
                continue
            updates.append((header.hash, r.id))
        self._db.set_change_hashes(updates)
        for author, seq in refused_from.items():
            self._db.delete_feed_from(board_id, author, seq)

    # ------------------------------------------------------------------ devices

    def add_device(self, board_id: bytes, name: str) -> Device:
        """Pair a device (a phone) with a joined board: make it a new author key,
        held by this node, so that it posts as a member of its own (see
        :meth:`Board.as_device`).

        Raises:
            NotFoundError: the board is not joined.
            ValidationError: the name is empty or too long.
        """
        board = self.board(bytes(board_id))
        device = self._devices.add(board.id, clean_text(name, "device name", required=True),
                                   now_ms())
        board.log.add_local_author(device.author)
        return device

    def devices(self, board_id: bytes | None = None) -> list[Device]:
        """Every paired device (of one board), oldest first, revoked ones included."""
        return self._devices.all(None if board_id is None else bytes(board_id))

    def device(self, device_id: str) -> Device:
        """The paired device with this id.

        Raises:
            NotFoundError: there is none.
        """
        return self._devices.get(device_id)

    def revoke_device(self, device_id: str) -> Device:
        """Cut a device off: it can no longer write (its key is erased); its past
        posts stay, signed by it. Revoking it again changes nothing.

        Raises:
            NotFoundError: there is no such device.
        """
        return self._devices.revoke(device_id, now_ms())

    def touch_device(self, device_id: str) -> Device:
        """Note that a device was seen now (:attr:`Device.last_seen`).

        Raises:
            NotFoundError: there is no such device.
        """
        return self._devices.touch(device_id, now_ms())

    # ------------------------------------------------------------------ relays

    def relays(self) -> dict[str, list[bytes] | None]:
        """Relays this node uses: ``address -> board ids`` (None: every board)."""
        raw = self._db.get_meta(_RELAYS)
        entries = json.loads(raw) if raw else {}
        return {a: None if b is None else [bytes.fromhex(x) for x in b]
                for a, b in entries.items()}

    def add_relay(self, address: str, board: bytes | None = None) -> str:
        """Use a relay for every board, or for one; returns the address in normal form.

        Raises:
            InviteError: not a relay address.
        """
        text = str(RelayAddress.parse(address))
        relays = self.relays()
        if board is None:
            relays[text] = None
        else:
            current = relays.get(text, [])
            if current is not None and board not in current:
                relays[text] = [*current, board]
        self._save_relays(relays)
        return text

    def remove_relay(self, address: str) -> None:
        """Stop using a relay configured with :meth:`add_relay`.

        Raises:
            NotFoundError: it is not configured.
        """
        text = str(RelayAddress.parse(address))
        relays = self.relays()
        if relays.pop(text, False) is False:
            raise NotFoundError(f"relay {text} is not configured")
        self._save_relays(relays)

    def suggested_relays(self, *, rejected: bool = False) -> list[RelaySuggestion]:
        """Relays that other members suggest on joined boards and that this node does
        not use for that board (see :meth:`Board.suggested_relays`)."""
        configured = self.relays()
        return [s for board in self.boards()
                for s in board.suggested_relays(rejected=rejected)
                if s.address not in configured_for(configured, board.id)]

    def accept_relay(self, address: str, board: bytes | None = None) -> list[Board]:
        """Use a relay that members suggest: on every board that suggests it, or on one.
        Returns the boards that now sync through it.

        Raises:
            InviteError: not a relay address.
            NotFoundError: no member suggests it (on that board).
        """
        return self._decide_relay(address, board, accept=True)

    def reject_relay(self, address: str, board: bytes | None = None) -> list[Board]:
        """Do not use a relay that members suggest, and stop listing it (on every board
        that suggests it, or on one). Returns those boards.

        Raises:
            InviteError: not a relay address.
            NotFoundError: no member suggests it (on that board).
        """
        return self._decide_relay(address, board, accept=False)

    def _decide_relay(self, address: str, board: bytes | None, *, accept: bool) -> list[Board]:
        text = str(RelayAddress.parse(address))
        boards = [self.board(board)] if board is not None else [
            b for b in self.boards()
            if any(s.address == text for s in b.suggested_relays(rejected=True))]
        if not boards:
            raise NotFoundError(f"no member of a joined board suggests relay {text} "
                                "(see 'p2paid relay list')")
        for b in boards:
            if accept:
                b.accept_relay(text)
            else:
                b.reject_relay(text)
        return boards

    def _save_relays(self, relays: dict[str, list[bytes] | None]) -> None:
        data = {a: None if b is None else [x.hex() for x in b] for a, b in relays.items()}
        self._db.set_meta(_RELAYS, json.dumps(data).encode())

    def carried(self) -> dict[bytes, int]:
        """Boards this store holds envelopes for but has not joined: ``id -> count``."""
        joined = {b.board_id for b in self._db.boards()}
        return {b: n for b, n in self._db.envelope_boards().items() if b not in joined}

    # ------------------------------------------------------------------ bundles

    def export_bundle(
        self, path: str | os.PathLike[str], boards: Iterable[bytes] | None = None, *,
        progress: Callable[[Progress], None] | None = None,
    ) -> int:
        """Write every envelope of the given boards (default: all held, joined or
        carried) to a bundle file, and the two envelopes of each fork proof known (so
        that whoever imports it learns the fork). Returns the number of records.

        ``progress`` is called every thousand envelopes or so, and once at the end."""
        held = self._db.envelope_boards()
        ids = list(boards) if boards is not None else sorted(
            set(held) | set(self._db.board_sizes()))
        for board in self._boards.values():
            board.refresh()
        total = sum(held.get(b, 0) + 2 * len(self._db.forks(b)) for b in ids)

        def report(done: int) -> None:
            if progress is not None:
                progress(Progress(done, max(done, total)))

        def all_envelopes() -> Iterator[bytes]:
            for board_id in ids:
                yield from self._board_records(board_id)
                for fork in self._db.forks(board_id).values():
                    yield fork.first
                    yield fork.second

        with self._db.read():
            has_checkpoints = any(self._db.checkpoint_seqs(b) for b in ids)
            count = write_bundle(path, all_envelopes(), report, checkpoints=has_checkpoints)
        report(count)
        return count

    def _board_records(self, board_id: bytes) -> Iterator[bytes]:
        """A board's feeds as bundle records: each author's checkpoint (SPEC 8a), if one
        is held, in place of its envelopes up to its seq; then the envelopes after it."""
        reach = self._db.checkpoint_seqs(board_id)
        author = b""
        for raw in self._db.envelopes(board_id):
            _, this, seq = peek_envelope(raw)
            if this != author:
                author = this
                held = self._db.checkpoint(board_id, author) if author in reach else None
                if held is not None:
                    yield held[1]
            if seq > reach.get(author, 0):
                yield raw

    def import_bundle(self, path: str | os.PathLike[str], *,
                      progress: Callable[[Progress], None] | None = None) -> ImportReport:
        """Verify a bundle file, then store and apply what is new in it.

        Importing a bundle twice changes nothing the second time. Envelopes for
        boards not joined are kept (unreadable) and applied when you join. Every
        board in the bundle counts as synced now (:meth:`last_syncs`).

        ``progress`` is called once the file is checked and after each batch of
        :data:`IMPORT_BATCH` envelopes is committed; an exception it raises (a
        ``KeyboardInterrupt``, say) stops the import there, with everything it
        reported stored (import the bundle again to finish).

        Raises:
            BundleError: the file is damaged or of a newer version (nothing is changed).
        """
        total = check_bundle(path)
        report = ImportReport()

        def advance(done: int) -> None:
            if progress is not None:
                progress(Progress(done, total, report))

        advance(0)
        batch: dict[bytes, list[Envelope | Checkpoint]] = {}
        pending = done = 0
        for raw in read_bundle(path, checked=True):
            done += 1
            try:
                record = decode_record(raw)
            except EnvelopeError as exc:
                report.boards.setdefault(b"", BoardReport(b"", None)).rejected[exc.code] += 1
                continue
            batch.setdefault(record.board_id, []).append(record)
            pending += 1
            if pending >= IMPORT_BATCH:
                self._import_batch(batch, report)
                advance(done)
                batch, pending = {}, 0
        self._import_batch(batch, report)
        self.record_sync((b for b in report.boards if b), "bundle")
        advance(done)
        return report

    def _import_batch(self, batch: dict[bytes, list[Envelope | Checkpoint]],
                      report: ImportReport) -> None:
        for board_id, records in batch.items():
            carried = self._carry(board_id, records)
            if carried is None:
                board = self.board(board_id)
                entry = report.boards.setdefault(board_id, BoardReport(board_id, board.name))
                entry.add(board.receive(
                    [r.raw if isinstance(r, Checkpoint) else r for r in records]))
            else:
                entry = report.boards.setdefault(board_id, BoardReport(board_id, None))
                entry.add(carried)

    def _carry(self, board_id: bytes, records: list[Envelope | Checkpoint]
               ) -> ReceiveReport | None:
        """Store envelopes and checkpoints of a board not joined, blind (as a relay
        does); None if it is joined.

        The check runs under the write lock, so a join by another process
        cannot slip in between and leave unopened envelopes in a joined board.
        """
        envelopes = [r for r in records if isinstance(r, Envelope)]
        checkpoints = [r for r in records if isinstance(r, Checkpoint)]
        taken = 0
        rejected: list[Rejection] = []
        with self._db.write():
            if any(row.board_id == board_id for row in self._db.boards()):
                return None
            forked = {a: f.seq for a, f in self._db.forks(board_id).items()}
            heads = self._db.heads(board_id)
            for cp in checkpoints:  # (a bundle has each checkpoint before its envelopes)
                got = ingest_checkpoint(self._db, board_id, cp, heads, None, forked)
                if got.head is not None:
                    envelopes.append(got.head)
                elif got.rejected is not None:
                    rejected.append(got.rejected)
                elif got.taken:
                    heads[cp.author] = FeedHead(cp.seq, cp.head.hash)
                    taken += cp.seq
            result = ingest(self._db, board_id, envelopes, heads, None, forked=forked)
        gaps = [Rejection(e, ChainError(f"seq {e.seq}: earlier envelopes missing"))
                for e in result.gaps]
        return ReceiveReport(len(result.accepted) + taken, result.duplicates, 0,
                             rejected + result.rejected + gaps)


def open_store(data_dir: str | os.PathLike[str] | None = None, *, create: bool = True,
               credentials: CredentialSource = None) -> Store:
    """Open (and by default create) the p2paid store in ``data_dir``.

    Args:
        data_dir: defaults to :func:`default_data_dir`.
        create: when False, raise :class:`NotFoundError` if there is no store yet.
        credentials: the passphrase (and key file) of a protected data dir, or a
            function returning them, called only if the data dir is protected.

    Raises:
        StorageError: the store cannot be opened (corrupt, not writable).
        PassphraseError: it is protected and ``credentials`` do not unlock it.
    """
    return Store(default_data_dir() if data_dir is None else data_dir, create=create,
                 credentials=credentials)

