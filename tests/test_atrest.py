"""Encryption at rest: sealed values, the key file, passphrase changes, key files, duress.

Real files, real SQLite, real Argon2id (at its cheapest parameters, :data:`FAST`).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest
from atrest_helpers import FAST, PASSPHRASE, Needles, found

from p2paid.board.store import Store, open_store
from p2paid.errors import NotFoundError, PassphraseError, StorageError, UsageError
from p2paid.storage import keystore
from p2paid.storage.atrest import (
    RECORD_SIZE,
    Credentials,
    KdfParams,
    KeyRecord,
    Sealer,
    Unlock,
    unlock_record,
)
from p2paid.storage.protect import (
    change_passphrase,
    protect,
    set_duress,
    unprotect,
)
from p2paid.storage.sqlite import DB_FILENAME

CREDS = Credentials(PASSPHRASE)


def _protected(data_dir: Path, creds: Credentials = CREDS) -> None:
    with open_store(data_dir) as store:
        protect(store.database, creds, FAST)
        board = store.create_board("Riverside Mutual Aid Board", display_name="Amina Zaw Oo")
        board.post_need("Insulin pens for Daw Khin")
        store.create_board("Second board")


def _titles(store: Store) -> set[str]:
    return {i.title for b in store.boards() for i in b.items()}


def _record(data_dir: Path) -> KeyRecord:
    record = keystore.read_record(data_dir)
    assert record is not None
    return record


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    sealer = Sealer(os.urandom(32))
    blob = sealer.seal("boards.name", b"row-1", b"Riverside")
    assert b"Riverside" not in blob
    assert sealer.open("boards.name", b"row-1", blob) == b"Riverside"
    for where, row in (("boards.name", b"row-2"), ("devices.name", b"row-1")):
        with pytest.raises(StorageError, match=r"does not open"):
            sealer.open(where, row, blob)
    with pytest.raises(StorageError):
        sealer.open("boards.name", b"row-1", blob[:-1] + bytes([blob[-1] ^ 1]))
    with pytest.raises(StorageError):
        Sealer(os.urandom(32)).open("boards.name", b"row-1", blob)
    with pytest.raises(StorageError):
        sealer.open("boards.name", b"row-1", b"short")
    assert sealer.blind("x", b"id") == sealer.blind("x", b"id") != sealer.blind("y", b"id")


def test_rows_swapped_on_disk_do_not_open(data_dir: Path) -> None:
    _protected(data_dir)
    con = sqlite3.connect(data_dir / DB_FILENAME)
    (a, name_a), (b, name_b) = con.execute("SELECT board_id, name FROM boards").fetchall()
    with con:
        con.execute("UPDATE boards SET name = ? WHERE board_id = ?", (name_b, a))
        con.execute("UPDATE boards SET name = ? WHERE board_id = ?", (name_a, b))
    con.close()
    with open_store(data_dir, create=False, credentials=CREDS) as store, \
            pytest.raises(StorageError, match=r"boards.name.*does not open"):
        store.boards()


def test_changing_the_passphrase_rewraps_the_key_only(data_dir: Path) -> None:
    _protected(data_dir)
    set_duress(data_dir, _record(data_dir),
               unlock_record(_record(data_dir), CREDS), b"duress words", None)
    files = {p.name: p.read_bytes() for p in data_dir.iterdir() if p.name != "p2paid.key"}
    new = Credentials(b"a new passphrase")
    record = _record(data_dir)
    assert change_passphrase(data_dir, record, unlock_record(record, CREDS), new)
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()
            if p.name != "p2paid.key"} == files
    assert (data_dir / "p2paid.key").stat().st_size == 2 * RECORD_SIZE
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        open_store(data_dir, create=False, credentials=CREDS)
    with open_store(data_dir, create=False, credentials=new) as store:
        assert "Insulin pens for Daw Khin" in _titles(store)
    # the duress passphrase survived the change (same salt, same key-file need)
    assert unlock_record(_record(data_dir), Credentials(b"duress words")).kind is Unlock.DURESS


def test_a_torn_or_damaged_key_file(data_dir: Path) -> None:
    _protected(data_dir)
    path = keystore.key_path(data_dir)
    raw = bytearray(path.read_bytes())
    raw[10] ^= 0xFF  # one copy torn: the other unlocks
    path.write_bytes(bytes(raw))
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        assert "Insulin pens for Daw Khin" in _titles(store)
    raw[RECORD_SIZE + 10] ^= 0xFF  # both: a clear error
    path.write_bytes(bytes(raw))
    with pytest.raises(StorageError, match="damaged or was wiped"):
        open_store(data_dir, create=False, credentials=CREDS)
    path.write_bytes(b"short")
    with pytest.raises(StorageError, match="damaged or was wiped"):
        open_store(data_dir, create=False, credentials=CREDS)


def test_a_hostile_key_file_cannot_make_us_allocate(data_dir: Path) -> None:
    _protected(data_dir)
    record = _record(data_dir)
    for bad in (KdfParams(1 << 30, 1, 4), KdfParams(1024, 10_000, 4), KdfParams(1024, 1, 0)):
        hostile = KeyRecord(record.generation + 1, bad, False, record.salt, record.real,
                            record.duress).encode()
        keystore.key_path(data_dir).write_bytes(hostile + hostile)
        with pytest.raises(StorageError, match="out of range"):
            open_store(data_dir, create=False, credentials=CREDS)


def test_a_key_file_is_needed_once_set_with_one(data_dir: Path) -> None:
    creds = Credentials(PASSPHRASE, key_file=b"bytes of a key file on a USB stick")
    _protected(data_dir, creds)
    with pytest.raises(PassphraseError, match="needs its key file"):
        open_store(data_dir, create=False, credentials=CREDS)
    with pytest.raises(PassphraseError, match="wrong passphrase or key file"):
        open_store(data_dir, create=False,
                   credentials=Credentials(PASSPHRASE, key_file=b"another file"))
    with open_store(data_dir, create=False, credentials=creds) as store:
        assert "Insulin pens for Daw Khin" in _titles(store)
    # dropping the key file (a passphrase change without one) keeps the data
    record = _record(data_dir)
    change_passphrase(data_dir, record, unlock_record(record, creds), CREDS)
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        assert "Insulin pens for Daw Khin" in _titles(store)


def test_removing_the_passphrase_stores_everything_plain_again(data_dir: Path) -> None:
    _protected(data_dir)
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        for board in store.boards():
            board.save_snapshot()
        unprotect(store.database)
        with pytest.raises(UsageError, match="not protected"):
            unprotect(store.database)
    assert not keystore.key_path(data_dir).exists()
    with open_store(data_dir, create=False) as store:
        assert not store.protected
        assert "Insulin pens for Daw Khin" in _titles(store)
    needles = Needles()
    needles.add("board name", "Riverside Mutual Aid Board")
    assert "board name" in found(data_dir, needles)


def test_protecting_twice_is_refused(data_dir: Path) -> None:
    _protected(data_dir)
    with open_store(data_dir, create=False, credentials=CREDS) as store, \
            pytest.raises(UsageError, match="protected already"):
        protect(store.database, CREDS, FAST)


def test_an_interrupted_protect_leaves_a_plain_store(data_dir: Path) -> None:
    """The key file is written before the store is sealed: a crash in between leaves a
    plain store and a stale key file, which is ignored."""
    with open_store(data_dir) as store:
        store.create_board("Aid").post_need("Tents")
    _protected(data_dir / "other")
    (data_dir / "p2paid.key").write_bytes((data_dir / "other" / "p2paid.key").read_bytes())
    with open_store(data_dir, create=False) as store:
        assert not store.protected and _titles(store) == {"Tents"}
        protect(store.database, CREDS, FAST)  # ... and setting it again works
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        assert _titles(store) == {"Tents"}


def test_a_sealed_store_without_its_key_file_says_so(data_dir: Path) -> None:
    _protected(data_dir)
    keystore.key_path(data_dir).unlink()
    with pytest.raises(PassphraseError, match=r"key file p2paid\.key is missing"):
        open_store(data_dir, create=False, credentials=CREDS)
    (data_dir / DB_FILENAME).unlink()
    keystore.key_path(data_dir).write_bytes(b"x")
    with pytest.raises(NotFoundError, match="damaged or partly wiped"):
        open_store(data_dir, create=False, credentials=CREDS)


def test_the_duress_passphrase_wipes_and_opens_an_empty_data_dir(data_dir: Path) -> None:
    _protected(data_dir)
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        old_fingerprint = store.node_fingerprint
        old_key = store.node_key.private_bytes()
        record = _record(data_dir)
        unlocked = unlock_record(record, CREDS)
        with pytest.raises(UsageError, match="must differ"):
            set_duress(data_dir, record, unlocked, PASSPHRASE, None)
        set_duress(data_dir, record, unlocked, b"duress words", None)
    duress = Credentials(b"duress words")
    with open_store(data_dir, create=False, credentials=duress) as store:
        assert store.protected
        assert store.boards() == []
        assert store.node_fingerprint != old_fingerprint
    # from now on the duress passphrase is this (empty) data dir's passphrase
    with open_store(data_dir, create=False, credentials=duress) as store:
        assert store.boards() == []
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        open_store(data_dir, create=False, credentials=CREDS)
    needles = Needles()
    needles.add("node key", old_key)
    needles.add("data-dir key", unlocked.data_key or b"")
    needles.add("old record", record.real)
    assert found(data_dir, needles) == {}


def test_a_duress_slot_looks_like_no_duress_slot(data_dir: Path) -> None:
    """Nothing in the key file says whether a duress passphrase is set."""
    _protected(data_dir)
    without = _record(data_dir)
    set_duress(data_dir, without, unlock_record(without, CREDS), b"duress words", None)
    with_duress = _record(data_dir)
    assert len(without.duress) == len(with_duress.duress)
    assert without.header()[16:] == with_duress.header()[16:]
    set_duress(data_dir, with_duress, unlock_record(with_duress, CREDS), None, None)
    with pytest.raises(PassphraseError):
        unlock_record(_record(data_dir), Credentials(b"duress words"))


def test_a_store_open_while_another_process_sets_the_passphrase_writes_nothing(
        data_dir: Path) -> None:
    with open_store(data_dir) as store:
        store.create_board("Aid")
    with open_store(data_dir, create=False) as before, \
            open_store(data_dir, create=False) as converting:
        protect(converting.database, CREDS, FAST)
        with pytest.raises(StorageError, match="set or removed the data dir's passphrase"):
            before.create_board("Written plain into a sealed store")
    with open_store(data_dir, create=False, credentials=CREDS) as store:
        assert [b.name for b in store.boards()] == ["Aid"]


def test_web_labels_follow_the_data_dir(data_dir: Path) -> None:
    from p2paid.web.webstore import WebStore

    with open_store(data_dir) as store:
        board = store.create_board("Aid")
        with WebStore(data_dir) as web:
            web.create_invite(board.id, label="Ko Aung Min")
        protect(store.database, CREDS, FAST)
        with WebStore(data_dir, sealer=store.sealer) as web:
            assert [i.label for i in web.invites()] == ["Ko Aung Min"]
        sealed = _labels(data_dir)
        assert isinstance(sealed[0], bytes) and b"Aung" not in sealed[0]
        with WebStore(data_dir, sealer=store.sealer):
            assert _labels(data_dir) == sealed  # (sealed once, not rewritten on each open)
        with pytest.raises(StorageError, match="sealed invite label"), WebStore(data_dir) as web:
            web.invites()
        with WebStore(data_dir, sealer=store.sealer) as web:
            web.reseal_labels(None)
        with WebStore(data_dir) as web:
            assert [i.label for i in web.invites()] == ["Ko Aung Min"]


def _labels(data_dir: Path) -> list[object]:
    con = sqlite3.connect(data_dir / "web.sqlite3")
    try:
        return [r[0] for r in con.execute("SELECT label FROM invites")]
    finally:
        con.close()


def test_argon2_parameters_out_of_range_are_refused_before_anything(data_dir: Path) -> None:
    with open_store(data_dir) as store:
        with pytest.raises(UsageError, match="out of range"):
            protect(store.database, CREDS, KdfParams(8 * 1024 * 1024, 3, 4))
        assert not store.protected
    assert not keystore.key_path(data_dir).exists()
