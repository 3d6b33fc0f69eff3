"""Bad input from users, files and the command line: a clear error, nothing changed.

Each case proves two things: the error is a :class:`p2paid.P2paidError` subclass
with a one-line message that says what is wrong, and the store is exactly as it
was before (boards, envelopes, rejections, version vectors, items).
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

import p2paid.board.member
from p2paid import (
    AmbiguousIdError,
    Board,
    BundleError,
    Invite,
    InviteError,
    Item,
    NotFoundError,
    P2paidError,
    StorageError,
    Store,
    UsageError,
    ValidationError,
    open_store,
)
from p2paid.storage.sqlite import DB_FILENAME

# ---------------------------------------------------------------------------- fixtures


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused input must leave untouched."""

    counts: dict[str, int]
    vectors: dict[bytes, dict[bytes, int]]
    items: dict[bytes, list[Item]]
    carried: dict[bytes, int]


def snapshot(store: Store) -> Snapshot:
    boards = store.boards()
    return Snapshot(
        dict(store._db.counts()),
        {b.id: b.version_vector() for b in boards},
        {b.id: b.items() for b in boards},
        store.carried(),
    )


@pytest.fixture
def alice(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "alice")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def bob(tmp_path: Path) -> Iterator[Store]:
    s = open_store(tmp_path / "bob")
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def alice_board(alice: Store) -> Board:
    board = alice.create_board("Riverside", display_name="Alice")
    board.post_need("Drinking water", category="water", quantity=40, unit="litres")
    board.post_offer("Van with driver", category="transport")
    return board


@pytest.fixture
def bob_board(bob: Store, alice_board: Board) -> Board:
    """Bob joined Alice's board and has everything she wrote."""
    board = bob.join(alice_board.invite(), display_name="Bob")
    board.receive(alice_board.envelopes())
    assert len(board.items()) == 2
    return board


def assert_one_line(exc: BaseException) -> None:
    text = str(exc)
    assert text and "\n" not in text and len(text) < 300, text


# ---------------------------------------------------------------------------- bundles


@pytest.fixture
def bundle(tmp_path: Path, alice: Store, alice_board: Board) -> bytes:
    """The bytes of a valid bundle with Alice's board (3 envelopes)."""
    path = tmp_path / "good.p2paid"
    assert alice.export_bundle(path) == 3
    return path.read_bytes()


def _flip(at: int) -> Callable[[bytes], bytes]:
    def mutate(data: bytes) -> bytes:
        out = bytearray(data)
        out[at % len(out)] ^= 0x01
        return bytes(out)

    return mutate


BUNDLE_DAMAGE: list[Any] = [
    pytest.param(lambda d: d[: len(d) // 2], ("truncated",), id="truncated-half"),
    pytest.param(lambda d: d[:5], ("truncated", "not a p2paid bundle"), id="truncated-header"),
    pytest.param(lambda d: d[:-40], ("truncated",), id="truncated-before-trailer"),
    pytest.param(lambda d: d[:-1], ("checksum", "truncated"), id="truncated-last-byte"),
    pytest.param(lambda d: b"", ("truncated",), id="empty"),
    pytest.param(lambda d: os.urandom(len(d)), ("not a p2paid bundle",), id="random-bytes"),
    pytest.param(lambda d: d[:8] + b"\x03" + d[9:], ("newer", "upgrade"), id="version-3"),
    pytest.param(lambda d: d[:9] + b"\x01" + d[10:], ("flags",), id="unknown-flags"),
    pytest.param(_flip(200), ("checksum",), id="flipped-byte-in-record"),
    pytest.param(_flip(-1), ("checksum",), id="flipped-byte-in-checksum"),
    pytest.param(_flip(-33), ("count",), id="flipped-byte-in-count"),
    pytest.param(lambda d: d + b"\x00", ("trailing",), id="trailing-byte"),
    pytest.param(lambda d: d + d, ("trailing",), id="bundle-twice"),
]


@pytest.mark.parametrize(("damage", "words"), BUNDLE_DAMAGE)
def test_damaged_bundle_is_refused_and_changes_nothing(
    tmp_path: Path, alice: Store, alice_board: Board, bob: Store, bob_board: Board,
    damage: Callable[[bytes], bytes], words: tuple[str, ...],
) -> None:
    """A damaged bundle raises BundleError naming the damage and Bob's store is untouched
    (the reader checks the whole file before yielding a record). Control: the intact
    bundle carries one envelope Bob lacks, and importing it does change his store."""
    alice_board.post_offer("Blankets")
    good = tmp_path / "good.p2paid"
    assert alice.export_bundle(good) == 4
    path = tmp_path / "damaged.p2paid"
    path.write_bytes(damage(good.read_bytes()))
    before = snapshot(bob)
    with pytest.raises(BundleError) as info:
        bob.import_bundle(path)
    assert_one_line(info.value)
    assert any(w in str(info.value) for w in words), str(info.value)
    assert snapshot(bob) == before
    report = bob.import_bundle(good)
    assert (report.accepted, report.duplicates, report.rejected) == (1, 3, 0)
    assert len(bob_board.items()) == 3


@pytest.mark.parametrize(("damage", "words"), BUNDLE_DAMAGE)
def test_damaged_bundle_refused_by_fresh_store(
    tmp_path: Path, bundle: bytes, damage: Callable[[bytes], bytes], words: tuple[str, ...],
) -> None:
    """Control: the intact bundle would have added 3 carried envelopes to a fresh store,
    the damaged one adds nothing."""
    fresh = open_store(tmp_path / "fresh")
    try:
        good = tmp_path / "good.p2paid"
        good.write_bytes(bundle)
        path = tmp_path / "damaged.p2paid"
        path.write_bytes(damage(bundle))
        before = snapshot(fresh)
        with pytest.raises(BundleError):
            fresh.import_bundle(path)
        assert snapshot(fresh) == before
        assert fresh.import_bundle(good).accepted == 3
        assert sum(fresh.carried().values()) == 3
    finally:
        fresh.close()


# ---------------------------------------------------------------------------- field validation


BAD_FIELDS: list[Any] = [
    pytest.param({"title": "x" * 201}, "title", id="title-201"),
    pytest.param({"title": "   "}, "title", id="title-blank"),
    pytest.param({"title": "water\x07now"}, "control", id="title-bell"),
    pytest.param({"title": "water\nnow"}, "control", id="title-newline"),
    pytest.param({"title": "water\x1b[31m"}, "control", id="title-escape"),
    pytest.param({"details": "d" * 4001}, "details", id="details-4001"),
    pytest.param({"unit": "u" * 31}, "unit", id="unit-31"),
    pytest.param({"location": "l" * 201}, "location", id="location-201"),
    pytest.param({"quantity": 0}, "quantity", id="quantity-0"),
    pytest.param({"quantity": -5}, "quantity", id="quantity-negative"),
    pytest.param({"quantity": 10**9 + 1}, "quantity", id="quantity-huge"),
    pytest.param({"quantity": True}, "quantity", id="quantity-bool"),
    pytest.param({"quantity": 2.5}, "quantity", id="quantity-float"),
    pytest.param({"quantity": "40"}, "quantity", id="quantity-str"),
    pytest.param({"category": "weapons"}, "category", id="category-unknown"),
    pytest.param({"category": 3}, "category", id="category-int"),
    pytest.param({"urgency": "yesterday"}, "urgency", id="urgency-unknown"),
    pytest.param({"expires_in_days": 0}, "expiry", id="expiry-0"),
    pytest.param({"expires_in_days": 10_000}, "expiry", id="expiry-huge"),
    pytest.param({"title": 42}, "title", id="title-not-text"),
]


@pytest.mark.parametrize(("fields", "word"), BAD_FIELDS)
def test_bad_field_on_post(
    alice: Store, alice_board: Board, fields: dict[str, Any], word: str
) -> None:
    """post_need with an out-of-range field -> ValidationError naming the field;
    nothing is written."""
    kwargs: dict[str, Any] = {"title": "Drinking water", **fields}
    title = kwargs.pop("title")
    before = snapshot(alice)
    with pytest.raises(ValidationError) as info:
        alice_board.post_need(title, **kwargs)
    assert word in str(info.value), str(info.value)
    assert_one_line(info.value)
    assert snapshot(alice) == before


@pytest.mark.parametrize(("fields", "word"), BAD_FIELDS)
def test_bad_field_on_edit(
    alice: Store, alice_board: Board, fields: dict[str, Any], word: str
) -> None:
    """edit() with the same bad values -> ValidationError; the item is unchanged."""
    item = alice_board.needs()[0]
    before = snapshot(alice)
    with pytest.raises(ValidationError):
        alice_board.edit(item.id, **fields)
    assert snapshot(alice) == before
    assert alice_board.get(item.id) == item


def test_details_may_hold_newlines(alice_board: Board) -> None:
    """Control for the limits: 4000 characters of details with newlines and tabs,
    a 200-character title and quantity 1e9 are all accepted."""
    item = alice_board.post_need("t" * 200, details=("line\twith tab\n" * 400)[:4000],
                                 quantity=10**9)
    assert len(item.title) == 200 and item.quantity == 10**9


def test_lone_surrogate_in_title_is_a_validation_error(alice: Store, alice_board: Board) -> None:
    """A title holding a lone surrogate (what Python makes of non-UTF-8 argv bytes) must
    be refused with ValidationError.

    LIBRARY BUG (model.clean_text; the same in invite.validate_board_name): category
    "Cs" is not refused, so the string reaches automerge/sqlite, which raise
    UnicodeEncodeError - not a P2paidError, and the CLI prints a traceback.
    """
    before = snapshot(alice)
    with pytest.raises(ValidationError):
        alice_board.post_need("water \udcff")
    with pytest.raises(ValidationError):
        alice.create_board("board \udcff")
    assert snapshot(alice) == before


# ---------------------------------------------------------------------------- invites


_RELAY = "p2paid-relay://192.0.2.1:7070/" + "a" * 52


def _encode_invite(body: bytes) -> str:
    """Build an invite by hand from the spec: base32(body || checksum), lowercase."""
    check = hashlib.sha256(b"p2paid invite\x00" + body).digest()[:4]
    return "p2paid:" + base64.b32encode(body + check).decode().rstrip("=").lower()


def _valid_invite() -> str:
    return Invite(os.urandom(32), "Riverside mutual aid", (_RELAY,)).to_uri()


def _swap_char(uri: str) -> str:
    at = len(uri) // 2
    return uri[:at] + ("a" if uri[at] != "a" else "b") + uri[at + 1 :]


INVITES: list[Any] = [
    pytest.param(lambda: "https://example.org/" + _valid_invite()[7:], "start with",
                 id="wrong-scheme"),
    pytest.param(lambda: "p2paid:", "empty", id="empty"),
    pytest.param(lambda: "p2paid:hello-world!", "base32", id="not-base32"),
    pytest.param(lambda: _valid_invite()[:12], "too short", id="truncated"),
    pytest.param(lambda: _swap_char(_valid_invite()), "checksum", id="checksum-mismatch"),
    pytest.param(lambda: _encode_invite(b"\x02" + msgpack.packb([os.urandom(32), "x", []])),
                 "version 2", id="version-2"),
    pytest.param(lambda: _encode_invite(b"\x01\xc1\xc1\xc1"), "malformed",
                 id="garbage-msgpack"),
    pytest.param(lambda: _encode_invite(b"\x01" + msgpack.packb([os.urandom(31), "x", []])),
                 "32 bytes", id="short-secret"),
    pytest.param(lambda: _encode_invite(b"\x01" + msgpack.packb([os.urandom(32), "", []])),
                 "name", id="empty-name"),
    pytest.param(lambda: _encode_invite(b"\x01" + msgpack.packb(
        [os.urandom(32), "x", ["p2paid-relay://a..b:7447/" + "a" * 52]])),
                 "relay hint 1", id="bad-relay-host"),
]


@pytest.mark.parametrize(("make", "word"), INVITES)
def test_malformed_invite(bob: Store, make: Callable[[], str], word: str) -> None:
    """Store.join with a malformed invite -> InviteError saying what is wrong; no board."""
    before = snapshot(bob)
    with pytest.raises(InviteError) as info:
        bob.join(make())
    assert word in str(info.value), str(info.value)
    assert_one_line(info.value)
    assert snapshot(bob) == before


def test_invite_errors_are_distinct() -> None:
    """Each kind of malformed invite gets its own message."""
    messages = []
    for param in INVITES:
        make = param.values[0]
        with pytest.raises(InviteError) as info:
            Invite.from_uri(make())
        messages.append(str(info.value))
    assert len(set(messages)) == len(messages), messages


@pytest.mark.parametrize("cut", range(1, 9))
def test_invite_cut_short_says_so(cut: int) -> None:
    """An invite that lost its last characters in copy and paste is reported as cut off,
    never as "characters that are not base32" (every character left IS base32).

    LIBRARY BUG (invite.Invite.from_uri): for cuts leaving a base32 length that is not
    a valid length (len % 8 in {1, 3, 6}), b32decode raises binascii.Error and the
    message blames the alphabet. The module docstring promises a truncated invite is
    caught "before anyone sees a confusing error".
    """
    uri = _valid_invite()
    with pytest.raises(InviteError) as info:
        Invite.from_uri(uri[:-cut])
    assert "cut off" in str(info.value), str(info.value)


def test_valid_invite_still_parses_with_whitespace_and_uppercase() -> None:
    """Control: the intact invite parses, also upper-cased (QR alphanumeric) and padded."""
    uri = _valid_invite()
    assert Invite.from_uri(f"  {uri.upper()}\n") == Invite.from_uri(uri)


def test_joining_twice_is_a_usage_error(bob: Store, alice_board: Board) -> None:
    """Joining a board already joined -> UsageError; nothing changes."""
    bob.join(alice_board.invite())
    before = snapshot(bob)
    with pytest.raises(UsageError, match="already joined"):
        bob.join(alice_board.invite())
    assert snapshot(bob) == before


# ---------------------------------------------------------------------------- item lookup


def test_unknown_item_id(alice_board: Board) -> None:
    """A prefix that matches nothing -> NotFoundError naming it and the board."""
    ids = {i.id[:4] for i in alice_board.items()}
    prefix = next(p for p in ("0000", "ffff", "1234", "abcd") if p not in ids)
    with pytest.raises(NotFoundError) as info:
        alice_board.get(prefix)
    assert prefix in str(info.value) and "Riverside" in str(info.value)
    with pytest.raises(UsageError, match="at least 4"):
        alice_board.get("ab")


def test_ambiguous_prefix(
    alice: Store, alice_board: Board, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two items sharing a prefix: the prefix -> AmbiguousIdError listing both; a
    longer prefix finds each one."""
    ids = iter(["beef" + "0" * 27 + "1", "beef" + "0" * 27 + "2"])
    monkeypatch.setattr(p2paid.board.member, "new_item_id", lambda: next(ids))
    one = alice_board.post_need("first")
    two = alice_board.post_need("second")
    with pytest.raises(AmbiguousIdError) as info:
        alice_board.get("beef")
    assert "2 items" in str(info.value)
    assert alice_board.get(one.id).title == "first"
    assert alice_board.get(two.id[:32]).title == "second"
    before = snapshot(alice)
    with pytest.raises(AmbiguousIdError):
        alice_board.fulfil("beef00")
    assert snapshot(alice) == before


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda b, i: b.edit(i, title="mine now"), id="edit"),
        pytest.param(lambda b, i: b.fulfil(i), id="fulfil"),
        pytest.param(lambda b, i: b.withdraw(i), id="withdraw"),
        pytest.param(lambda b, i: b.edit(i, quantity=None), id="edit-quantity"),
    ],
)
def test_changing_someone_elses_item(
    bob: Store, bob_board: Board, alice_board: Board,
    action: Callable[[Board, str], object],
) -> None:
    """Bob editing/fulfilling Alice's need -> UsageError naming the author; nothing written."""
    need = bob_board.needs()[0]
    assert need.author == alice_board.author.hex()
    before = snapshot(bob)
    with pytest.raises(UsageError) as info:
        action(bob_board, need.id)
    assert "only its author" in str(info.value) and "Alice" in str(info.value)
    assert snapshot(bob) == before


def test_claiming_own_item_is_refused(alice: Store, alice_board: Board) -> None:
    """Claiming your own need -> UsageError; nothing written."""
    before = snapshot(alice)
    with pytest.raises(UsageError, match="your own"):
        alice_board.claim(alice_board.needs()[0].id)
    assert snapshot(alice) == before


# ---------------------------------------------------------------------------- corrupt store


def test_corrupt_store_file(tmp_path: Path) -> None:
    """Random bytes where p2paid.sqlite3 belongs -> StorageError on open_store, and the
    file is left as it was (nothing "repaired" away)."""
    data_dir = tmp_path / "corrupt"
    data_dir.mkdir()
    junk = os.urandom(16384)
    (data_dir / DB_FILENAME).write_bytes(junk)
    with pytest.raises(StorageError) as info:
        open_store(data_dir)
    assert_one_line(info.value)
    assert "store" in str(info.value)
    assert (data_dir / DB_FILENAME).read_bytes() == junk


def test_half_a_store_file(tmp_path: Path, alice: Store, alice_board: Board) -> None:
    """A real store file cut in half (a failed copy) -> StorageError, not sqlite3 errors."""
    alice.close()
    data = (tmp_path / "alice" / DB_FILENAME).read_bytes()
    data_dir = tmp_path / "half"
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(StorageError):
        s = open_store(data_dir)
        try:
            s.boards()
            for b in s.boards():
                b.items()
        finally:
            s.close()


def test_store_from_newer_p2paid(tmp_path: Path) -> None:
    """A store written by a newer schema -> StorageError asking to upgrade."""
    import sqlite3

    data_dir = tmp_path / "newer"
    open_store(data_dir).close()
    con = sqlite3.connect(data_dir / DB_FILENAME)
    with con:
        con.execute("UPDATE meta SET value = 99 WHERE key = 'schema'")
    con.close()
    with pytest.raises(StorageError, match="upgrade"):
        open_store(data_dir)


def test_missing_store_without_create(tmp_path: Path) -> None:
    """open_store(create=False) on an empty dir -> NotFoundError pointing to 'p2paid init'."""
    with pytest.raises(NotFoundError, match="p2paid init"):
        open_store(tmp_path / "nothing", create=False)
    assert not (tmp_path / "nothing" / DB_FILENAME).exists()


# ---------------------------------------------------------------------------- CLI


def run_cli(data_dir: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "P2PAID_DATA_DIR"}
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), *args],
        capture_output=True, timeout=60, env=env, check=False,
    )


def assert_cli_error(proc: subprocess.CompletedProcess[bytes], word: str) -> None:
    """Exit 1, exactly one line on stderr starting 'p2paid: ', no traceback."""
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 1, (proc.returncode, err)
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("p2paid: ") and word in lines[0], lines[0]


@pytest.fixture
def cli_dir(tmp_path: Path) -> Path:
    """A data dir with one board holding one need, made through the library."""
    data_dir = tmp_path / "cli"
    with open_store(data_dir) as s:
        s.create_board("Riverside").post_need("Drinking water")
    return data_dir


def _cli_counts(data_dir: Path) -> dict[str, int]:
    with open_store(data_dir, create=False) as s:
        return dict(s._db.counts())


def test_cli_malformed_invite(cli_dir: Path) -> None:
    """`board join` with a broken invite: exit 1, one line, nothing joined."""
    before = _cli_counts(cli_dir)
    assert_cli_error(run_cli(cli_dir, "board", "join", "p2paid:not*base32"), "base32")
    assert _cli_counts(cli_dir) == before


def test_cli_random_bundle(cli_dir: Path, tmp_path: Path) -> None:
    """`bundle import` of random bytes: exit 1, one line, nothing imported."""
    junk = tmp_path / "junk.p2paid"
    junk.write_bytes(os.urandom(3000))
    before = _cli_counts(cli_dir)
    assert_cli_error(run_cli(cli_dir, "bundle", "import", str(junk)), "bundle")
    assert _cli_counts(cli_dir) == before


def test_cli_title_too_long_and_unknown_id(cli_dir: Path) -> None:
    """`need add` with a 201-character title and `show` of an unknown id: exit 1, one line."""
    before = _cli_counts(cli_dir)
    assert_cli_error(run_cli(cli_dir, "need", "add", "x" * 201), "title")
    assert_cli_error(run_cli(cli_dir, "show", "zzzz"), "zzzz")
    assert _cli_counts(cli_dir) == before


def test_cli_corrupt_store(tmp_path: Path) -> None:
    """Any command on a corrupt store file: exit 1, one line mentioning the store."""
    data_dir = tmp_path / "corrupt"
    data_dir.mkdir()
    (data_dir / DB_FILENAME).write_bytes(os.urandom(8192))
    assert_cli_error(run_cli(data_dir, "list"), "store")


def test_cli_non_utf8_title(cli_dir: Path) -> None:
    """`need add` with a title that is not valid UTF-8 on the command line: exit 1 with one
    line, no traceback. LIBRARY BUG: see test_lone_surrogate_in_title_is_a_validation_error
    (UnicodeEncodeError escapes from automerge; the CLI shows a traceback)."""
    before = _cli_counts(cli_dir)
    assert_cli_error(run_cli(cli_dir, "need", "add", b"water \xff"), "title")
    assert _cli_counts(cli_dir) == before


def test_every_error_here_is_a_p2paid_error() -> None:
    """The classes asserted in this file all derive from P2paidError (the CLI's net)."""
    for cls in (BundleError, InviteError, ValidationError, NotFoundError, AmbiguousIdError,
                UsageError, StorageError):
        assert issubclass(cls, P2paidError)
