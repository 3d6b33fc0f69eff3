"""One board's Automerge document: ownership-aware apply, section writes, typed reads.

Theory of operation
-------------------
Every member writes only inside its own *section*, a map created by the first op
of its first change at root key ``author.hex()``. Readers never look a section up
through the root key (another member could write a conflicting root key and win);
they address it by object id ``(start_op of the author's seq-1 change, author)``,
which Automerge's ``get``/``keys`` accept directly.

Remote changes arrive already verified (signature, chain, ownership) as
``(ChangeHeader, bytes)``. This module releases them in causal order: a change is
applied only once every dependency is applied, so Automerge never has to queue
one and the set of applied hashes is exactly known. Whatever is ready is applied
in one call, because each apply call costs O(document size).

Reads are validated with :mod:`p2paid.model` and cached per author; the cache of
an author is dropped whenever a change of that author is applied.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, final

from automerge.core import ROOT, Document, Message, ObjType, ScalarType, SyncState

from .changes import ChangeHeader, parse_change
from .errors import LocalProtocolError, NotFoundError, ValidationError
from .model import Claim, ClaimStatus, Item, ItemKind, clean_text

__all__ = ["BoardDocument", "SectionWriter", "new_item_id", "section_object_id"]

SCHEMA_VERSION: Final = 1
_COLLECTIONS: Final = {ItemKind.NEED: "needs", ItemKind.OFFER: "offers"}
_KINDS: Final = {coll: kind for kind, coll in _COLLECTIONS.items()}
_CLAIMS: Final = "claims"
_PROFILE: Final = "profile"
#: Most changes held waiting for a dependency; beyond it the oldest are dropped from
#: memory (they stay in the store and are retried when the board is next opened).
MAX_PENDING: Final = 200_000

Value = str | int | None


def new_item_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return os.urandom(16).hex()


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def section_object_id(author: bytes, start_op: int) -> bytes:
    """Automerge's external object id for op ``start_op@author``.

    Layout: ``0x10 (version 1, kind id) || uLEB(len(actor)) || actor ||
    uLEB(actor index hint = 0) || uLEB(counter)``; the index is a hint that
    Automerge corrects by the actor bytes.
    """
    return b"\x10" + _uleb(len(author)) + author + _uleb(0) + _uleb(start_op)


def sync_message_with_changes(changes: Iterable[bytes]) -> bytes:
    """An Automerge sync message (type 0x42) carrying only changes (no heads, need, have)."""
    body = [b"\x42", b"\x00", b"\x00", b"\x00"]
    items = list(changes)
    body.append(_uleb(len(items)))
    for change in items:
        body.append(_uleb(len(change)))
        body.append(change)
    return b"".join(body)


@dataclass(slots=True)
class _Section:
    """What one author's section holds, validated."""

    name: str = ""
    items: dict[ItemKind, dict[str, Item]] = field(
        default_factory=lambda: {kind: {} for kind in ItemKind}
    )
    claims: dict[str, Claim] = field(default_factory=dict)
    relays: tuple[str, ...] = ()


@final
class SectionWriter:
    """Ops on the local author's own section, inside one Automerge transaction."""

    def __init__(self, tx: Any, section: bytes) -> None:
        self._tx = tx
        self.section = section
        #: ``(collection, id)`` of every entry written; collection "profile" has id "".
        self.touched: list[tuple[str, str]] = []

    def _child(self, key: str) -> bytes:
        got = self._tx.get(self.section, key)
        if got is None or got[0] != ObjType.Map:
            return bytes(self._tx.put_object(self.section, key, ObjType.Map))
        return bytes(got[1])

    def _put_fields(self, obj: bytes, fields: Mapping[str, Value]) -> None:
        for key, value in fields.items():
            if value is None:
                if self._tx.get(obj, key) is not None:
                    self._tx.delete(obj, key)
            elif isinstance(value, bool):
                raise LocalProtocolError("booleans are not part of the schema")
            elif isinstance(value, int):
                self._tx.put(obj, key, ScalarType.Int, value)
            else:
                self._tx.put(obj, key, ScalarType.Str, value)

    def _put_entry(self, collection: str, entry_id: str, fields: Mapping[str, Value]) -> None:
        obj = bytes(self._tx.put_object(self._child(collection), entry_id, ObjType.Map))
        self._put_fields(obj, fields)
        self.touched.append((collection, entry_id))

    def _update_entry(self, collection: str, entry_id: str, fields: Mapping[str, Value]) -> None:
        got = self._tx.get(self._child(collection), entry_id)
        if got is None or got[0] != ObjType.Map:
            raise NotFoundError(f"no {collection[:-1]} {entry_id} of yours")
        self._put_fields(bytes(got[1]), fields)
        self.touched.append((collection, entry_id))

    def set_name(self, name: str) -> None:
        self._put_fields(self._child(_PROFILE), {"name": name})
        self.touched.append((_PROFILE, ""))

    def set_relays(self, relays: Iterable[str]) -> None:
        self._put_fields(self._child(_PROFILE), {"relays": "\n".join(relays) or None})
        self.touched.append((_PROFILE, ""))

    def put_item(self, kind: ItemKind, item_id: str, fields: Mapping[str, Value]) -> None:
        self._put_entry(_COLLECTIONS[kind], item_id, fields)

    def update_item(self, kind: ItemKind, item_id: str, fields: Mapping[str, Value]) -> None:
        self._update_entry(_COLLECTIONS[kind], item_id, fields)

    def put_claim(self, claim_id: str, fields: Mapping[str, Value]) -> None:
        self._put_entry(_CLAIMS, claim_id, fields)

    def update_claim(self, claim_id: str, fields: Mapping[str, Value]) -> None:
        self._update_entry(_CLAIMS, claim_id, fields)


@final
class BoardDocument:
    """The Automerge document of one board, as seen by one local author.

    Args:
        author: the local author key (Automerge actor id of local changes).
        doc: a loaded document (from a snapshot), or None for an empty one.
        applied: hashes of every change ``doc`` holds.
        vector: ``author -> highest seq`` that ``doc`` holds.
        sections: ``author -> start_op`` of each known section's creating op.
    """

    def __init__(
        self,
        author: bytes,
        doc: Document | None = None,
        applied: Iterable[bytes] = (),
        vector: Mapping[bytes, int] | None = None,
        sections: Mapping[bytes, int] | None = None,
    ) -> None:
        self.author = author
        self._doc = doc if doc is not None else Document(actor_id=author)
        if doc is not None:
            self._doc.set_actor(author)
        self._applied: set[bytes] = set(applied)
        self._pending: dict[bytes, tuple[ChangeHeader, bytes]] = {}
        self._waiting: defaultdict[bytes, list[bytes]] = defaultdict(list)
        self.start_ops: dict[bytes, int] = dict(sections or {})
        self.applied_seq: dict[bytes, int] = dict(vector or {})
        self._cache: dict[bytes, _Section] = {}

    # ------------------------------------------------------------------ applying

    @property
    def automerge(self) -> Document:
        """The underlying automerge-py core document (read it; do not write to it)."""
        return self._doc

    def is_applied(self, change_hash: bytes) -> bool:
        return change_hash in self._applied

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    def add_changes(self, changes: Iterable[tuple[ChangeHeader, bytes]]) -> list[ChangeHeader]:
        """Apply every change whose dependencies are met; hold the rest.

        Returns:
            The headers of all changes applied by this call (including held ones
            that became ready), in the causal order they were applied.
        """
        ready: list[tuple[ChangeHeader, bytes]] = []
        ready_hashes: set[bytes] = set()
        queue = list(changes)
        queue.reverse()
        applied = self._applied
        while queue:
            header, data = queue.pop()
            h = header.hash
            if h in applied or h in ready_hashes:
                continue
            missing = next((d for d in header.deps if d not in applied and d not in ready_hashes),
                           None)
            if missing is not None:
                if h not in self._pending:
                    self._hold(header, data, missing)
                continue
            self._pending.pop(h, None)
            ready.append((header, data))
            ready_hashes.add(h)
            for waiter in reversed(self._waiting.pop(h, ())):
                held = self._pending.pop(waiter, None)
                if held is not None:
                    queue.append(held)
        if ready:
            self._apply_ready(ready)
        return [header for header, _ in ready]

    def _hold(self, header: ChangeHeader, data: bytes, missing: bytes) -> None:
        if len(self._pending) >= MAX_PENDING:
            oldest = next(iter(self._pending))
            del self._pending[oldest]
        self._pending[header.hash] = (header, data)
        self._waiting[missing].append(header.hash)

    def _apply_ready(self, ready: list[tuple[ChangeHeader, bytes]]) -> None:
        message = Message.decode(sync_message_with_changes(data for _, data in ready))
        self._doc.receive_sync_message(SyncState(), message)
        for header, _ in ready:
            self._note_applied(header)

    def _note_applied(self, header: ChangeHeader, *, drop_cache: bool = True) -> None:
        self._applied.add(header.hash)
        self.applied_seq[header.actor] = header.seq
        if header.seq == 1:
            self.start_ops.setdefault(header.actor, header.start_op)
        if drop_cache:
            self._cache.pop(header.actor, None)

    # ------------------------------------------------------------------ writing

    def write(self, edit: Callable[[SectionWriter], None]) -> tuple[ChangeHeader, bytes]:
        """Run ``edit`` in one transaction on the local author's section.

        The first write also creates the section, as the first op of the
        author's first change (the ownership rule depends on it).

        Returns:
            The new change's header and bytes.

        Raises:
            LocalProtocolError: ``edit`` made no change.
            Whatever ``edit`` raises (the transaction is rolled back).
        """
        before = self._doc.get_last_local_change()
        with self._doc.transaction() as tx:
            section = self._section_id()
            if section is None:
                section = bytes(tx.put_object(ROOT, self.author.hex(), ObjType.Map))
                tx.put(section, "v", ScalarType.Int, SCHEMA_VERSION)
            writer = SectionWriter(tx, section)
            edit(writer)
        change = self._doc.get_last_local_change()
        if change is None or (before is not None and change.seq == before.seq):
            raise LocalProtocolError("the edit changed nothing")
        data = change.bytes
        header = parse_change(data)
        self._note_applied(header, drop_cache=False)
        self._refresh_entries(writer.touched)
        return header, data

    def _refresh_entries(self, touched: list[tuple[str, str]]) -> None:
        """Re-read only what a local write touched (a whole re-read costs O(section))."""
        sec = self._cache.get(self.author)
        if sec is None:
            return
        obj = self._section_id()
        if obj is None or any(coll == _PROFILE for coll, _ in touched):
            self._cache.pop(self.author, None)
            return
        doc = self._doc
        for coll, entry_id in touched:
            child = doc.get(obj, coll)
            entry = None if child is None else doc.get(child[1], entry_id)
            self._store_entry(sec, self.author.hex(), coll, entry_id, entry)

    def _section_id(self, author: bytes | None = None) -> bytes | None:
        author = self.author if author is None else author
        start_op = self.start_ops.get(author)
        return None if start_op is None else section_object_id(author, start_op)

    # ------------------------------------------------------------------ reading

    @property
    def authors(self) -> list[bytes]:
        """Every author whose section this document holds."""
        return list(self.start_ops)

    def section(self, author: bytes) -> _Section:
        """The validated content of one author's section (empty if none or malformed)."""
        cached = self._cache.get(author)
        if cached is None:
            cached = self._cache[author] = self._read_section(author)
        return cached

    def display_name(self, author: bytes) -> str:
        return self.section(author).name

    def items(self) -> list[Item]:
        """Every valid need and offer, with the active claims on each attached."""
        claims: defaultdict[tuple[str, str], list[Claim]] = defaultdict(list)
        sections = {author: self.section(author) for author in self.start_ops}
        for sec in sections.values():
            for claim in sec.claims.values():
                if claim.status is ClaimStatus.ACTIVE:
                    claims[(claim.item_author, claim.item_id)].append(claim)
        out: list[Item] = []
        for sec in sections.values():
            for by_id in sec.items.values():
                for item in by_id.values():
                    mine = claims.get((item.author, item.id))
                    if mine:
                        mine.sort(key=lambda c: (c.created, c.id))
                        item = _with_claims(item, tuple(mine))
                    out.append(item)
        out.sort(key=lambda i: (i.created, i.id))
        return out

    def claims_by(self, author: bytes) -> list[Claim]:
        return list(self.section(author).claims.values())

    def _read_map(self, obj: bytes) -> dict[str, Any]:
        doc = self._doc
        keys = doc.keys(obj)
        return {
            key: (value[1] if not isinstance(value, ObjType) else (value, oid))
            for key, (value, oid) in zip(keys, doc.values(obj), strict=True)
        }

    def _child_map(self, fields: Mapping[str, Any], key: str) -> dict[str, Any]:
        entry = fields.get(key)
        if isinstance(entry, tuple) and entry[0] == ObjType.Map:
            return self._read_map(entry[1])
        return {}

    def _read_section(self, author: bytes) -> _Section:
        sec = _Section()
        obj = self._section_id(author)
        if obj is None:
            return sec
        try:
            if self._doc.object_type(obj) != ObjType.Map:
                return sec
        except Exception:  # automerge raises a bare Exception for an unknown object id
            return sec
        fields = self._read_map(obj)
        profile = self._child_map(fields, _PROFILE)
        author_hex = author.hex()
        try:
            sec.name = clean_text(profile.get("name", ""), "display name")
        except ValidationError:
            sec.name = ""
        relays = profile.get("relays")
        if isinstance(relays, str):
            sec.relays = tuple(r for r in relays.split("\n") if r)[:8]
        for coll in (*_COLLECTIONS.values(), _CLAIMS):
            for entry_id, value in self._child_map(fields, coll).items():
                self._store_entry(sec, author_hex, coll, entry_id, value)
        return sec

    def _store_entry(
        self, sec: _Section, author_hex: str, coll: str, entry_id: str, value: Any
    ) -> None:
        """Validate one entry into ``sec``; a malformed or missing one is left out."""
        kind = _KINDS.get(coll)
        target: dict[str, Any] = sec.claims if kind is None else sec.items[kind]
        target.pop(entry_id, None)
        if not (isinstance(value, tuple) and value[0] == ObjType.Map):
            return
        fields = self._read_map(value[1])
        try:
            if kind is None:
                target[entry_id] = Claim.from_fields(entry_id, author_hex, sec.name, fields)
            else:
                target[entry_id] = Item.from_fields(kind, entry_id, author_hex, sec.name, fields)
        except ValidationError:
            return  # a malformed entry is not shown

    # ------------------------------------------------------------------ persistence

    def save(self) -> bytes:
        """The whole document in Automerge's saved format."""
        return bytes(self._doc.save())

    def heads(self) -> list[bytes]:
        return sorted(bytes(h) for h in self._doc.get_heads())


def _with_claims(item: Item, claims: tuple[Claim, ...]) -> Item:
    return replace(item, claims=claims)
