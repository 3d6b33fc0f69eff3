"""Finding 10: outsiders cannot fill a relay (SPEC 14.3).

Open mode: storage in boards a client introduced is capped per client key and per
address, so junk boards for invented ids stop at the quota and a real group's board
is still accepted afterwards (also across a restart). Token mode: a relay started
with ``require_token`` refuses clients without a valid access token, serves those
with one (exempt from the new-board quota), and refuses a token once revoked; a node
configured with ``relay add ADDRESS --token`` syncs through such a relay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from node_helpers import start_node, wait_until
from relay_helpers import RelayClient, open_client, poll, start_relay
from replication_helpers import FeedWriter, MemoryReplica

from p2paid.board.store import open_store
from p2paid.core.identity import NodeKey
from p2paid.core.invite import BoardKeys, derive_board_keys
from p2paid.core.relayaddr import RelayAddress, decode_token
from p2paid.relay.replica import RelayLimits
from p2paid.relay.server import TOKEN_INVALID, TOKEN_REQUIRED
from p2paid.relay.state import MIN_BOARD_CHARGE
from p2paid.storage.sqlite import Database

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

KIB = 1024
QUOTA_KEY = 5 * MIN_BOARD_CHARGE  # 320 KiB
QUOTA_ADDRESS = 12 * MIN_BOARD_CHARGE  # 768 KiB
LIMITS = RelayLimits(quota_per_key=QUOTA_KEY, quota_per_address=QUOTA_ADDRESS)
#: A change of about 4 KB: junk needs real bytes to fill anything.
JUNK = b"j" * 4000


def replica_of(boards: Sequence[tuple[BoardKeys, int]]) -> MemoryReplica:
    """A client holding ``count`` junk envelopes of one fresh author on each board."""
    replica = MemoryReplica("node")
    for keys, count in boards:
        replica.add_board(keys)
        replica.write(keys.board_id, FeedWriter(keys).many(count, change=JUNK))
    return replica


def stored_bytes(data_dir: Path) -> dict[bytes, int]:
    db = Database(data_dir)
    try:
        return db.board_sizes()
    finally:
        db.close()


async def upload(nursery: trio.Nursery, address: tuple[str, int], replica: MemoryReplica,
                 local: str, key: NodeKey | None = None, token: bytes | None = None
                 ) -> RelayClient:
    """Connect, upload everything the relay takes (in batches of 16 KiB, so that a
    quota is reached within a board), and return once every board is in sync or
    refused (a refused board stalls, which counts as done)."""
    client = await open_client(nursery, address, replica, key=key or NodeKey.generate(),
                               local_address=local, token=token, batch_bytes=16 * KIB)
    boards = [b.board_id for b in replica.boards()]
    await poll(lambda: client.is_closed or all(client.in_sync(b) for b in boards), 0.02)
    return client


def fresh_board() -> BoardKeys:
    """An invented board id (as an outsider would make up)."""
    return derive_board_keys(os.urandom(32))


def junk_boards(count: int, envelopes: int = 1) -> list[tuple[BoardKeys, int]]:
    return [(fresh_board(), envelopes) for _ in range(count)]


async def test_one_key_or_one_address_cannot_fill_the_relay_and_a_real_board_still_fits(
        tmp_path: Path) -> None:
    """A client key offers 20 invented boards, and then a board it fills with 4 KB
    envelopes: the relay stores what fits in the key's quota (each board counting at
    least MIN_BOARD_CHARGE) and answers Refused("quota") for the rest, without an
    Ack. Nine more keys from the same address stop at the address quota. A real
    group's board, from another address, is accepted, and so it is after a restart,
    while the attacker's key and address are still held to their quotas."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay", limits=LIMITS)
            one_key = NodeKey.generate()
            many = await upload(nursery, relay.hostport, replica_of(junk_boards(20)),
                                "127.0.0.2", one_key)
            refused = {r.board for r in many.refused if r.code == "quota"}
            held = stored_bytes(tmp_path / "relay")
            assert len(held) == QUOTA_KEY // MIN_BOARD_CHARGE == 5
            assert len(refused) == 15 and not refused & set(held)
            assert not [a for a in many.acked if a[0] in refused]  # never acknowledged

            big = fresh_board()
            await upload(nursery, relay.hostport, replica_of([(big, 200)]), "127.0.0.2",
                         NodeKey.generate())
            by_one_address = sum(stored_bytes(tmp_path / "relay").values())
            assert QUOTA_KEY < by_one_address <= QUOTA_ADDRESS
            for _ in range(8):  # more keys, same address: the address quota holds
                await upload(nursery, relay.hostport,
                             replica_of(junk_boards(3, envelopes=20)),
                             "127.0.0.2")
            assert sum(stored_bytes(tmp_path / "relay").values()) <= QUOTA_ADDRESS

            real = fresh_board()
            group = await upload(nursery, relay.hostport, replica_of([(real, 30)]),
                                 "127.0.0.5")
            assert not group.refused
            assert stored_bytes(tmp_path / "relay")[real.board_id] == sum(
                len(raw) for raw in group.holds(real.board_id))
            await relay.stop()

            relay = await start_relay(nursery, tmp_path / "relay", limits=LIMITS)
            again = await upload(nursery, relay.hostport, replica_of(junk_boards(2)),
                                 "127.0.0.2", one_key)
            assert {r.code for r in again.refused} == {"quota"}
            other = await upload(nursery, relay.hostport, replica_of([(fresh_board(), 3)]),
                                 "127.0.0.6")
            assert not other.refused
            nursery.cancel_scope.cancel()


def _relay_cli(data_dir: Path, *args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "p2paid", "--data-dir", str(data_dir),
                          "relay", "token", *args], capture_output=True, text=True, check=True)
    return out.stdout


async def test_token_mode_refuses_no_token_and_revoked_tokens_and_serves_valid_ones(
        tmp_path: Path) -> None:
    """``require_token``: a client without a token is told Close("token-required") and
    stores nothing; one with a token made by ``p2paid relay token create`` syncs, past
    the new-board quota; after ``relay token revoke`` (another process), a client with
    that token is told Close("token-invalid")."""
    relay_dir = tmp_path / "relay"
    limits = RelayLimits(require_token=True, quota_per_key=MIN_BOARD_CHARGE,
                         quota_per_address=MIN_BOARD_CHARGE)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, relay_dir, limits=limits)
            created = json.loads(_relay_cli(relay_dir, "create", "--note", "Riverside", "--json"))
            token = decode_token(created["token"])

            bare = await upload(nursery, relay.hostport, replica_of([(fresh_board(), 2)]),
                                "127.0.0.2")
            assert bare.is_closed and bare.close_reason == TOKEN_REQUIRED
            assert stored_bytes(relay_dir) == {}

            boards = junk_boards(3, envelopes=30)  # ~360 KB: far past the quota
            holder = await upload(nursery, relay.hostport, replica_of(boards), "127.0.0.2",
                                  token=token)
            assert not holder.is_closed and not holder.refused
            assert set(stored_bytes(relay_dir)) == {k.board_id for k, _ in boards}

            wrong = await upload(nursery, relay.hostport, replica_of([(fresh_board(), 1)]),
                                 "127.0.0.3", token=b"not a token")
            assert wrong.close_reason == TOKEN_INVALID

            listed = _relay_cli(relay_dir, "list")
            assert created["id"] in listed and "Riverside" in listed
            assert created["token"] not in listed and created["token"] not in (
                relay_dir / "p2paid.sqlite3").read_bytes().decode("latin-1")
            _relay_cli(relay_dir, "revoke", created["id"])
            revoked = await upload(nursery, relay.hostport, replica_of([(fresh_board(), 1)]),
                                   "127.0.0.2", token=token)
            assert revoked.close_reason == TOKEN_INVALID
            assert fresh_board().board_id not in stored_bytes(relay_dir)
            nursery.cancel_scope.cancel()


async def test_a_token_lifts_the_quota_of_a_board_and_a_revocation_restores_it(
        tmp_path: Path) -> None:
    """Open mode: a board introduced without a token stops at its introducer's quota;
    a member with a valid token uploads to it anyway (the board is then the token's);
    once the token is revoked, tokenless uploads count against the introducer again.
    An unknown token in open mode is reported (Refused "token-invalid") and ignored."""
    relay_dir = tmp_path / "relay"
    limits = RelayLimits(quota_per_key=2 * MIN_BOARD_CHARGE,
                         quota_per_address=4 * MIN_BOARD_CHARGE)
    keys = fresh_board()
    author = FeedWriter(keys)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, relay_dir, limits=limits)
            token, _ = relay.relay.replica.tokens.create("group")
            first = MemoryReplica("node")
            first.add_board(keys)
            first.write(keys.board_id, author.many(60, change=JUNK))
            capped = await upload(nursery, relay.hostport, first, "127.0.0.2")
            assert {r.code for r in capped.refused} == {"quota"}
            size = stored_bytes(relay_dir)[keys.board_id]
            assert size <= 2 * MIN_BOARD_CHARGE

            lifted = await upload(nursery, relay.hostport, first, "127.0.0.3", token=token)
            assert not lifted.refused
            assert stored_bytes(relay_dir)[keys.board_id] == sum(
                len(e.raw) for e in author.envelopes)

            relay.relay.replica.tokens.revoke(relay.relay.replica.tokens.list()[0].id)
            first.write(keys.board_id, author.many(2, change=JUNK))
            again = await upload(nursery, relay.hostport, first, "127.0.0.4",
                                 token=b"unknown")
            assert [r.code for r in again.refused] == [TOKEN_INVALID, "quota"]
            nursery.cancel_scope.cancel()


async def test_nodes_sync_through_a_token_relay_with_the_token_in_their_config(
        tmp_path: Path) -> None:
    """Two nodes that know only a relay requiring tokens: one configured with
    ``relay add ADDRESS --token`` semantics, one with ``?token=`` in the address;
    a post on one reaches the other. A node without the token does not get it."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay",
                                      limits=RelayLimits(require_token=True))
            token, _ = relay.relay.replica.tokens.create("camp")
            address = RelayAddress.parse(relay.address)
            with open_store(tmp_path / "a") as a:
                invite = a.create_board("Camp", display_name="A").invite()
                a.add_relay(str(address.with_token(token)))
            for name, relay_text in (("b", str(address.with_token(token))),
                                     ("c", str(address))):
                with open_store(tmp_path / name) as store:
                    store.join(invite, display_name=name)
                    store.add_relay(relay_text)
            node_a = await start_node(nursery, tmp_path / "a", listen=False)
            node_b = await start_node(nursery, tmp_path / "b", listen=False)
            node_c = await start_node(nursery, tmp_path / "c", listen=False)
            need = await node_a.node.board().post_need("through the token relay")
            await wait_until(lambda: need.id in {i.id for i in node_b.node.board().items()})
            await trio.sleep(0.5)
            assert need.id not in {i.id for i in node_c.node.board().items()}
            nursery.cancel_scope.cancel()
