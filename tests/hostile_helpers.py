"""A hostile member: one who joined a board (it holds the invite) and writes its own
section with hand-made Automerge changes, so it can store what the API refuses.

Its changes are made the way an honest node makes them: in a document that holds
only its own changes, so each depends only on its own previous one (seq 1 has no
dependencies and starts at op 1), signed with its own author key and sealed as
the next envelope of its own feed. What it writes is therefore never refused for
its form; only the readers' validation stands between it and the other members.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from automerge.core import ROOT, Document, ObjType, ScalarType
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.board.store import Store
from p2paid.core.envelope import ZERO_HASH, Envelope, seal_envelope
from p2paid.core.identity import AuthorKey

__all__ = ["FIXED_NOW", "HostileMember", "deliver"]

#: "now" of the hostile's entries (2030), inside the schema's time range.
FIXED_NOW = 1_900_000_000_000

Edit = Callable[[Any, bytes], None]


class HostileMember:
    """A member of one board that writes its section by hand.

    Args:
        store: the attacker's own store; it joins the board there and uses the
            author key that join gave it.
        invite: the board's invite.
        author_key: write as this author instead (two members with one key fork
            its feed).
    """

    def __init__(self, store: Store, invite: str, *, author_key: AuthorKey | None = None) -> None:
        board = store.join(invite)
        self.board_id = bytes(board.id)
        self._cipher = ChaCha20Poly1305(board.keys.content_key)
        self._key = author_key or AuthorKey(board._author_key.private_bytes())
        self.author = bytes(self._key.public)
        self._doc = Document(actor_id=self.author)
        self._section: bytes | None = None
        self._seq = 0
        self._prev = ZERO_HASH
        self._ids = 0
        #: every envelope written so far, in order
        self.envelopes: list[bytes] = []

    @property
    def author_hex(self) -> str:
        return self.author.hex()

    def write(self, edit: Edit) -> bytes:
        """One change of ``edit(tx, section)`` (the section is created by the first op of
        the first change); returns the sealed envelope."""
        with self._doc.transaction() as tx:
            if self._section is None:
                self._section = bytes(tx.put_object(ROOT, self.author.hex(), ObjType.Map))
                tx.put(self._section, "v", ScalarType.Int, 1)
            edit(tx, self._section)
        change = self._doc.get_last_local_change()
        assert change is not None and change.seq == self._seq + 1
        env = seal_envelope(board_id=self.board_id, cipher=self._cipher,
                            author_key=self._key, seq=self._seq + 1, prev=self._prev,
                            change=bytes(change.bytes))
        self._seq, self._prev = env.seq, env.hash
        self.envelopes.append(env.raw)
        return env.raw

    def new_id(self) -> str:
        self._ids += 1
        return f"{self._ids:032x}"

    def set_profile(self, **fields: str) -> bytes:
        """Write ``profile`` keys (``name``, ``relays``) as they are."""
        def edit(tx: Any, section: bytes) -> None:
            _put_fields(tx, _child(tx, section, "profile"), fields)
        return self.write(edit)

    def post(self, fields: Mapping[str, str | int], kind: str = "needs",
             item_id: str | None = None) -> str:
        """Put an item map with exactly ``fields`` (defaults: category other, created now)."""
        item_id = item_id or self.new_id()
        values: dict[str, str | int] = {"category": "other", "created": FIXED_NOW, **fields}

        def edit(tx: Any, section: bytes) -> None:
            obj = tx.put_object(_child(tx, section, kind), item_id, ObjType.Map)
            _put_fields(tx, bytes(obj), values)
        self.write(edit)
        return item_id

    def claim(self, item_author: str, item_id: str, *, quantity: int | None = None,
              note: str = "", created: int = FIXED_NOW, kind: str = "need") -> str:
        """Put an active claim on another member's item, with any quantity."""
        claim_id = self.new_id()
        values: dict[str, str | int] = {"kind": kind, "item_author": item_author,
                                        "item": item_id, "status": "active",
                                        "created": created}
        if quantity is not None:
            values["quantity"] = quantity
        if note:
            values["note"] = note

        def edit(tx: Any, section: bytes) -> None:
            obj = tx.put_object(_child(tx, section, "claims"), claim_id, ObjType.Map)
            _put_fields(tx, bytes(obj), values)
        self.write(edit)
        return claim_id


def _child(tx: Any, section: bytes, key: str) -> bytes:
    got = tx.get(section, key)
    if got is None:
        return bytes(tx.put_object(section, key, ObjType.Map))
    return bytes(got[1])


def _put_fields(tx: Any, obj: bytes, fields: Mapping[str, str | int]) -> None:
    for key, value in fields.items():
        if isinstance(value, int):
            tx.put(obj, key, ScalarType.Int, value)
        else:
            tx.put(obj, key, ScalarType.Str, value)


def deliver(envelopes: Iterable[bytes], *stores: Store) -> None:
    """Give envelopes to each store's (only) board, as a bundle or a peer would."""
    raws = list(envelopes)
    for store in stores:
        report = store.board().receive([Envelope.decode(r) for r in raws])
        assert not report.rejected, report.rejected
