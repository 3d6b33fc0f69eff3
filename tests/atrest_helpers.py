"""Helpers for the encryption-at-rest tests: cheap Argon2id parameters, a session that
leaves every kind of secret in a data dir, and a byte search over every file of it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import trio
from node_helpers import start_node, titles, wait_until

from p2paid.board.store import open_store
from p2paid.core.identity import fingerprint
from p2paid.storage.atrest import Credentials, KdfParams
from p2paid.storage.protect import protect
from p2paid.web.webstore import WebStore

__all__ = ["FAST", "PASSPHRASE", "Needles", "found", "real_session", "write_passphrase"]

#: Argon2id at its cheapest, so that the suite does not spend seconds unlocking.
FAST = KdfParams(memory_kib=1024, iterations=1, lanes=4)
PASSPHRASE = b"correct horse battery staple"
RELAY = "p2paid-relay://192.0.2.1:7070/" + "a" * 52


@dataclass
class Needles:
    """What must not be readable in a protected data dir, by what it is."""

    items: dict[str, bytes] = field(default_factory=dict)

    def add(self, what: str, value: str | bytes) -> None:
        self.items[what] = value.encode() if isinstance(value, str) else value


def write_passphrase(path: Path, secret: bytes = PASSPHRASE) -> Path:
    path.write_bytes(secret + b"\n")
    return path


def found(data_dir: Path, needles: Needles) -> dict[str, list[str]]:
    """Every needle found in any file under ``data_dir`` (WAL, shm, journal included):
    ``what -> [file names]``."""
    blobs = {}
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            path = Path(root) / name
            blobs[str(path.relative_to(data_dir))] = path.read_bytes()
    out: dict[str, list[str]] = {}
    for what, needle in needles.items.items():
        where = [name for name, blob in blobs.items() if needle in blob]
        if where:
            out[what] = where
    return out


async def real_session(tmp_path: Path, *, protected: bool) -> tuple[Path, Needles]:
    """Two boards with needs and names, a paired phone with an invite and a session,
    a relay, and a sync with a second node on 127.0.0.1; returns the first node's data
    dir (its node stopped, its store closed) and what it must hide."""
    a, b = tmp_path / "a", tmp_path / "b"
    creds = Credentials(PASSPHRASE) if protected else None
    needles = Needles()
    with open_store(a, credentials=creds) as store:
        if creds is not None:
            unlocked = protect(store.database, creds, FAST)
            assert unlocked.data_key is not None
            needles.add("data-dir key", unlocked.data_key)
        one = store.create_board("Riverside Mutual Aid Board", display_name="Amina Zaw Oo")
        two = store.create_board("Hillside Kitchen Collective", display_name="Bashir Osman")
        one.post_need("Insulin pens for Daw Khin", details="third floor, room nine")
        two.post_need("Rice sacks for the Hillside camp", quantity=40, unit="sacks")
        device = store.add_device(one.id, "Phone of Ma Thida Htwe")
        one.as_device(device).post_need("Baby formula posted from the phone")
        store.add_relay(RELAY)
        for row in store.database.boards():
            needles.add(f"secret of {row.name}", row.secret)
            needles.add(f"secret of {row.name} (hex)", row.secret.hex())
            needles.add(f"author key on {row.name}", row.author_key)
            needles.add(f"board name {row.name}", row.name)
        needles.add("node key", store.node_key.private_bytes())
        needles.add("device key", store._devices.key(device.id).private_bytes())
        needles.add("device name", "Phone of Ma Thida Htwe")
        needles.add("relay", "192.0.2.1:7070")
        for name in ("Amina Zaw Oo", "Bashir Osman", "Insulin pens for Daw Khin",
                     "third floor, room nine", "Rice sacks for the Hillside camp",
                     "Baby formula posted from the phone", "Chit Su Wai",
                     "Water filters from the second node"):
            needles.add(name, name)
        needles.add("invite", one.invite())
        with WebStore(a, sealer=store.sealer) as web:
            token, _ = web.create_invite(one.id, label="Pairing for Ko Aung Min")
            session = web.create_session(device.id, one.id)
        needles.add("web invite token", token)
        needles.add("web invite label", "Pairing for Ko Aung Min")
        needles.add("web session token", session)
        invite = one.invite()
    with open_store(b) as other:
        joined = other.join(invite, display_name="Chit Su Wai")
        joined.post_need("Water filters from the second node")
        needles.add("peer's node id", other.node_key.public)
        needles.add("peer's fingerprint", fingerprint(other.node_key.public))
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            first = await start_node(nursery, a, credentials=creds)
            second = await start_node(nursery, b, peers=[first.address])
            want = {"Insulin pens for Daw Khin", "Water filters from the second node",
                    "Baby formula posted from the phone"}
            await wait_until(lambda: all(want <= titles(n.node.board(one.id).board)
                                         for n in (first, second)))
            await wait_until(lambda: len(first.node.peerbook) == 1, 0.05)
            await trio.sleep(2.5)  # (the running node's status, with its peer, is written)
            for board in first.node.boards():
                board.board.save_snapshot()
            await second.stop()
            await first.stop()
    return a, needles
