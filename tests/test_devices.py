"""Paired devices: each phone is a member of its own, with a key the node holds.

A device posts in its own section, as its own feed (seq 1.., chained, signed with its
key, each change depending only on its previous one), on the same board document as
the node's own member; the node's member and its devices claim each other's items;
another node accepts their changes under the ownership rules; a revoked device
writes nothing more; devices survive a restart and an upgrade of an older data dir.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given, settings
from hypothesis import strategies as st

import p2paid
from p2paid.automerge.chunk import parse_change
from p2paid.board.board import Board
from p2paid.board.member import MemberBoard
from p2paid.board.model import Member
from p2paid.board.store import Store
from p2paid.core.envelope import Envelope, open_envelope
from p2paid.core.identity import fingerprint
from p2paid.errors import NotFoundError, RevokedDeviceError, UsageError, ValidationError
from p2paid.storage.sqlite import DB_FILENAME, SCHEMA_VERSION


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with p2paid.open_store(tmp_path / "node") as s:
        yield s


def _feeds(board: Board) -> dict[bytes, list[Envelope]]:
    feeds: dict[bytes, list[Envelope]] = {}
    for raw in board.envelopes():
        env = Envelope.decode(raw)
        feeds.setdefault(env.author, []).append(env)
    return feeds


def assert_feeds_sound(board: Board) -> None:
    """Every author's feed is 1..n, hash-chained, signed by the author, and each change
    depends only on the author's previous one (SPEC 5)."""
    cipher = ChaCha20Poly1305(board.keys.content_key)
    for author, feed in _feeds(board).items():
        feed.sort(key=lambda e: e.seq)
        assert [e.seq for e in feed] == list(range(1, len(feed) + 1)), fingerprint(author)
        prev_env, prev_change = b"\x00" * 32, None
        for env in feed:
            env.verify_signature()
            assert env.prev == prev_env
            header = parse_change(open_envelope(env, cipher))
            assert header.actor == author and header.seq == env.seq
            assert header.other_actors == ()
            assert header.deps == (() if prev_change is None else (prev_change,))
            prev_env, prev_change = env.hash, header.hash
        assert board.version_vector()[author] == len(feed)


def assert_another_node_accepts(board: Board, tmp_path: Path) -> list[Member]:
    """A fresh node joins from the invite, receives every envelope and refuses none;
    returns the members it sees."""
    with p2paid.open_store(tmp_path / f"other-{len(list(tmp_path.iterdir()))}") as other_store:
        other = other_store.join(board.invite())
        envelopes = list(board.envelopes())
        report = other.receive(envelopes)
        assert report.rejected == [] and report.accepted == len(envelopes)
        assert [i.to_json(0) for i in other.items()] == [i.to_json(0) for i in board.items()]
        members = other.members()
    assert {m.author for m in members} == {m.author for m in board.members()}
    return members


def test_a_device_is_a_member_of_its_own(store: Store, tmp_path: Path) -> None:
    board = store.create_board("Aid", display_name="Node")
    device = store.add_device(board.id, "Amina's phone")
    assert (device.board_id, device.name, device.last_seen, device.revoked) == (
        board.id, "Amina's phone", None, None)
    assert device.author != board.author
    phone = board.as_device(device)
    phone.set_display_name("Amina")
    need = phone.post_need("Drinking water", quantity=40, unit="litres")
    assert need.author == device.author.hex() and need.author_name == "Amina"
    assert phone.me().author == device.author.hex() and phone.me().name == "Amina"
    assert board.me().name == "Node"
    members = {m.author: m.name for m in board.members()}
    assert members == {board.author.hex(): "Node", device.author.hex(): "Amina"}
    assert device.fingerprint == fingerprint(device.author) != board.author_fingerprint
    assert phone.author_fingerprint == device.fingerprint
    feeds = _feeds(board)
    assert [e.seq for e in feeds[device.author]] == [1, 2]
    assert [e.seq for e in feeds[board.author]] == [1]
    assert_feeds_sound(board)
    assert_another_node_accepts(board, tmp_path)


def test_members_and_devices_claim_each_others_items(store: Store, tmp_path: Path) -> None:
    board = store.create_board("Aid", display_name="Node")
    one = board.as_device(store.add_device(board.id, "one"))
    two = board.as_device(store.add_device(board.id, "two").id)
    rice = board.post_need("rice", quantity=10, unit="kg")
    van = one.post_offer("van")
    tent = two.post_need("tent")
    one.claim(rice.id, quantity=4)
    two.claim(rice.id, quantity=6)
    board.claim(van.id)
    two.claim(van.id[:8])
    board.claim(tent.id)
    one.claim(tent.id)
    for member, own in ((board, rice), (one, van), (two, tent)):
        with pytest.raises(UsageError, match="cannot claim your own"):
            member.claim(own.id)
    with pytest.raises(UsageError, match="only its author can change it"):
        one.fulfil(rice.id)
    with pytest.raises(UsageError, match="only its author can change it"):
        board.edit(van.id, title="bike")
    assert board.get(rice.id).open_quantity == 0
    assert {c.author for c in board.get(van.id).claims} == {board.author.hex(),
                                                            two.author.hex()}
    assert [c.item_id for c in one.my_claims()] == [rice.id, tent.id]
    assert len(one.unclaim(tent.id)) == 1
    assert [c.author for c in board.get(tent.id).claims] == [board.author.hex()]
    two.fulfil(tent.id)
    assert board.get(tent.id).status.value == "fulfilled"
    assert_feeds_sound(board)
    assert_another_node_accepts(board, tmp_path)


_ACTIONS = st.lists(
    st.tuples(st.sampled_from(["post", "claim", "edit", "withdraw", "name"]),
              st.integers(0, 2), st.integers(0, 50)),
    min_size=1, max_size=25)


@settings(max_examples=12)
@given(actions=_ACTIONS, snapshot_at=st.integers(0, 25))
def test_any_mix_of_local_authors_keeps_every_feed_sound(
        tmp_path_factory: pytest.TempPathFactory, actions: list[tuple[str, int, int]],
        snapshot_at: int) -> None:
    """Whatever the node's member and two devices do, in any order (with a snapshot and a
    reopen somewhere in between), each author's feed is contiguous, chained, signed and
    depends only on itself, and another node accepts all of it."""
    tmp = tmp_path_factory.mktemp("mix")
    s = p2paid.open_store(tmp / "node")
    board = s.create_board("Aid")
    ids = [s.add_device(board.id, f"phone {k}").id for k in range(2)]

    def members(b: Board) -> list[MemberBoard]:
        return [b, b.as_device(ids[0]), b.as_device(ids[1])]

    who = members(board)
    for step, (action, k, n) in enumerate(actions):
        if step == snapshot_at:
            board.save_snapshot()
            s.close()
            s = p2paid.open_store(tmp / "node")
            board = s.board()
            who = members(board)
        me = who[k]
        items = board.items()
        mine = [i for i in items if i.author == me.author.hex()]
        theirs = [i for i in items if i.author != me.author.hex() and i.status.value == "open"]
        if action == "post" or (action in ("edit", "withdraw") and not mine):
            me.post_need(f"need {step}", quantity=n + 1)
        elif action == "claim" and theirs:
            me.claim(theirs[n % len(theirs)].id, note=f"step {step}")
        elif action == "edit":
            me.edit(mine[n % len(mine)].id, title=f"edited {step}")
        elif action == "withdraw" and mine[n % len(mine)].status.value == "open":
            me.withdraw(mine[n % len(mine)].id)
        else:
            me.set_display_name(f"name {step}")
    assert_feeds_sound(board)
    assert len(assert_another_node_accepts(board, tmp)) == len(_feeds(board))
    s.close()


def test_a_revoked_device_cannot_write_and_its_posts_stay(store: Store, tmp_path: Path) -> None:
    board = store.create_board("Aid")
    lost, kept = store.add_device(board.id, "lost"), store.add_device(board.id, "kept")
    phone, other_phone = board.as_device(lost), board.as_device(kept)
    need = phone.post_need("blankets")
    # Revoked by another process (a second store on the data dir): the facade made
    # before it refuses every later write, under the write lock.
    with p2paid.open_store(store.data_dir) as elsewhere:
        revoked = elsewhere.revoke_device(lost.id)
    assert revoked.revoked is not None and revoked.author == lost.author
    before = board.version_vector()
    with pytest.raises(RevokedDeviceError, match="revoked"):
        phone.post_need("more blankets")
    with pytest.raises(RevokedDeviceError):
        phone.withdraw(need.id)
    with pytest.raises(RevokedDeviceError):
        board.as_device(lost.id)
    assert board.version_vector() == before
    assert board.get(need.id).author == lost.author.hex()  # its post stays, signed by it
    other_phone.claim(need.id)
    board.claim(need.id)
    assert store.revoke_device(lost.id) == revoked  # again: nothing changes
    # The private key is gone from the store; the public key still names the device.
    with sqlite3.connect(store.data_dir / DB_FILENAME) as con:
        keys = dict(con.execute("SELECT id, author_key FROM devices").fetchall())
    assert keys[lost.id] == b"" and len(keys[kept.id]) == 32
    assert store.device(lost.id).fingerprint == lost.fingerprint
    assert_feeds_sound(board)
    assert_another_node_accepts(board, tmp_path)


def test_registry_lookups_and_bad_input(store: Store) -> None:
    aid, food = store.create_board("Aid"), store.create_board("Food")
    first = store.add_device(aid.id, "  first  ")
    second = store.add_device(food.id, "second")
    assert first.name == "first"
    assert store.devices() == [first, second]
    assert store.devices(aid.id) == [first] and store.devices(food.id) == [second]
    assert store.device(first.id) == first
    assert store.device(first.id.upper()) == first
    touched = store.touch_device(first.id)
    assert touched.last_seen is not None and touched.last_seen >= first.created
    assert store.device(first.id).last_seen == touched.last_seen
    with pytest.raises(NotFoundError):
        store.device("nosuchdevice")
    with pytest.raises(NotFoundError):
        store.revoke_device("nosuchdevice")
    with pytest.raises(NotFoundError, match="not paired for board"):
        aid.as_device(second)
    with pytest.raises(NotFoundError):
        store.add_device(b"\x01" * 32, "phone")
    with pytest.raises(ValidationError):
        store.add_device(aid.id, "   ")
    with pytest.raises(ValidationError):
        store.add_device(aid.id, "x" * 61)
    assert len({d.id for d in (store.add_device(aid.id, "p") for _ in range(20))}) == 20


def test_device_keys_are_never_shown(store: Store) -> None:
    board = store.create_board("Aid")
    device = store.add_device(board.id, "phone")
    phone = board.as_device(device)
    with sqlite3.connect(store.data_dir / DB_FILENAME) as con:
        (secret,) = con.execute("SELECT author_key FROM devices").fetchone()
    shown = " ".join([repr(device), str(device), repr(phone), repr(store.devices()),
                      repr(phone._author_key)])
    assert secret.hex() not in shown and repr(secret) not in shown
    assert device.id in repr(device) and device.fingerprint in repr(device)


def test_devices_survive_a_restart(tmp_path: Path) -> None:
    with p2paid.open_store(tmp_path / "node") as s:
        board = s.create_board("Aid")
        device = s.add_device(board.id, "phone")
        phone = board.as_device(device)
        phone.post_need("first")
        board.post_offer("van")
        board.save_snapshot()
        phone.post_need("second")  # after the snapshot: applied from the tail on reopen
    for _ in range(2):
        with p2paid.open_store(tmp_path / "node") as s:
            assert s.devices() == [device]
            board = s.board()
            phone = board.as_device(device.id)
            assert phone.me().author == device.author.hex()
            phone.post_need("after restart")
            assert board.version_vector()[device.author] == len(
                [i for i in board.items() if i.author == device.author.hex()])
            assert_feeds_sound(board)
            assert_another_node_accepts(board, tmp_path)


def test_a_cli_posting_as_the_node_while_a_device_posts(tmp_path: Path) -> None:
    """Another process (the CLI) writes as the node's member while this one writes as a
    device and as the node's member: every write lands, every feed stays sound."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as s:
        board = s.create_board("Aid")
        phone = board.as_device(s.add_device(board.id, "phone"))
        cli = subprocess.Popen(
            [sys.executable, "-c", (
                "import subprocess, sys\n"
                "for i in range(15):\n"
                "    subprocess.run([sys.executable, '-m', 'p2paid', '--data-dir', sys.argv[1],"
                " 'need', 'add', f'cli {i}'], check=True, capture_output=True)\n"),
             str(data_dir)])
        posted: set[str] = set()
        while len(posted) < 200 and (cli.poll() is None or len(posted) < 20):
            posted.add(phone.post_need(f"phone {len(posted)}").id)
            if len(posted) % 5 == 0:
                posted.add(board.post_offer(f"node {len(posted)}").id)
            time.sleep(0.02)  # leave the CLI room to take the write lock
        assert cli.wait(timeout=120) == 0
        titles = {i.title for i in board.items()}
        assert {f"cli {i}" for i in range(15)} <= titles
        assert posted <= {i.id for i in board.items()}
        assert s._db.rejections(board.id) == []
        assert_feeds_sound(board)
        assert len(_feeds(board)[board.author]) == 15 + len(
            [t for t in titles if t.startswith("node ")])
    with p2paid.open_store(data_dir) as s:
        assert_feeds_sound(s.board())
        assert_another_node_accepts(s.board(), tmp_path)


def test_a_data_dir_from_before_devices_opens(tmp_path: Path) -> None:
    """A schema-2 data dir (p2paid before devices: no devices table) opens: it gains the
    table, keeps its snapshot (nothing else changed), and pairs devices."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as s:
        board = s.create_board("Aid", display_name="Ana")
        for i in range(3):
            board.post_need(f"need {i}")
        board.save_snapshot()
    with sqlite3.connect(data_dir / DB_FILENAME) as con:
        con.execute("DROP TABLE devices")
        con.execute("UPDATE meta SET value = 2 WHERE key = 'schema'")
    with p2paid.open_store(data_dir) as s:
        board = s.board()
        assert s._db.snapshot(board.id) is not None
        assert s.devices() == []
        phone = board.as_device(s.add_device(board.id, "phone"))
        phone.claim(board.items()[0].id)
        assert {i.title for i in board.items()} == {f"need {i}" for i in range(3)}
        assert_feeds_sound(board)
    with sqlite3.connect(data_dir / DB_FILENAME) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            SCHEMA_VERSION,)
