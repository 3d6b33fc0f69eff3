"""After a real session, a protected data dir gives nothing away to a byte search.

Two boards, needs with known titles and names, a paired phone with a web invite and
session, a relay, and a sync with a second node on 127.0.0.1; then every byte of
every file of the data dir (WAL, shm and journal included) is searched for every
title, name, board name, board secret, key, invite, token and the peer's id. With a
passphrase none is found; without one, every one is (so the search can fail).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from atrest_helpers import FAST, PASSPHRASE, Needles, found, real_session

from p2paid.board.store import open_store
from p2paid.errors import PassphraseError
from p2paid.storage.atrest import Credentials
from p2paid.storage.lock import DataDirLock
from p2paid.storage.protect import protect
from p2paid.web.webstore import WebStore

#: Kept only as digests or hashes even without a passphrase (nothing to find).
_NEVER_STORED = {"data-dir key", "web invite token", "web session token", "invite",
                 "peer's fingerprint", "secret of Riverside Mutual Aid Board (hex)",
                 "secret of Hillside Kitchen Collective (hex)"}


async def test_a_protected_data_dir_holds_no_secret_after_a_session(tmp_path: Path) -> None:
    data_dir, needles = await real_session(tmp_path, protected=True)
    assert len(needles.items) > 20
    assert found(data_dir, needles) == {}
    # ... and it is all there for the passphrase
    with open_store(data_dir, create=False, credentials=Credentials(PASSPHRASE)) as store:
        assert {b.name for b in store.boards()} == {"Riverside Mutual Aid Board",
                                                    "Hillside Kitchen Collective"}
        one = store.board("Riverside Mutual Aid Board")
        assert {i.title for i in one.items()} >= {"Insulin pens for Daw Khin",
                                                  "Water filters from the second node"}
        assert [d.name for d in store.devices()] == ["Phone of Ma Thida Htwe"]
        assert len(store.peer_book()) == 1
        with WebStore(data_dir, sealer=store.sealer) as web:
            assert [i.label for i in web.invites()] == ["Pairing for Ko Aung Min"]


async def test_the_same_session_without_a_passphrase_gives_everything_away(
        tmp_path: Path) -> None:
    data_dir, needles = await real_session(tmp_path, protected=False)
    hits = found(data_dir, needles)
    missing = set(needles.items) - set(hits) - _NEVER_STORED
    assert not missing, f"the search did not find {sorted(missing)}"
    assert {"board name Riverside Mutual Aid Board", "node key", "device key",
            "Insulin pens for Daw Khin", "web invite label", "peer's node id"} <= set(hits)


async def test_setting_a_passphrase_later_leaves_no_plaintext_behind(tmp_path: Path) -> None:
    """The conversion rewrites every value sealed, then VACUUMs with secure_delete and
    truncates the WAL: nothing of the plain store survives in a file."""
    data_dir, needles = await real_session(tmp_path, protected=False)
    creds = Credentials(b"set later")
    with open_store(data_dir, create=False) as store, DataDirLock(data_dir, "node"):
        protect(store.database, creds, FAST)
    with open_store(data_dir, create=False, credentials=creds) as store:
        with WebStore(data_dir, sealer=store.sealer):
            pass
        assert len(store.boards()) == 2
    hits = found(data_dir, needles)
    # a digest cannot be turned back into a node id: the peer book restarts empty
    assert hits == {}, hits


def test_a_wrong_passphrase_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "d"
    creds = Credentials(PASSPHRASE)
    with open_store(data_dir) as store:
        protect(store.database, creds, FAST)
        store.create_board("Aid").post_need("Tents")
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    for wrong in (Credentials(b"wrong"), Credentials(PASSPHRASE + b" "),
                  Credentials(PASSPHRASE, key_file=b"a key file it does not need")):
        if wrong.key_file is not None:
            # (a key file given needlessly is ignored: the passphrase alone opens it)
            with open_store(data_dir, create=False, credentials=wrong) as store:
                assert store.board("Aid").items()
            continue
        with pytest.raises(PassphraseError, match="wrong passphrase; nothing was changed"):
            open_store(data_dir, create=False, credentials=wrong)
    with pytest.raises(PassphraseError, match="protected by a passphrase"):
        open_store(data_dir, create=False)
    after = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    assert {k: v for k, v in after.items() if k != "p2paid.sqlite3-wal"} == \
           {k: v for k, v in before.items() if k != "p2paid.sqlite3-wal"}


def test_needles_helper_reports_where(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"..secret..")
    needles = Needles()
    needles.add("s", "secret")
    needles.add("t", b"absent")
    assert found(tmp_path, needles) == {"s": ["x"]}
