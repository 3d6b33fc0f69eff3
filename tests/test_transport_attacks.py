"""Transport attacks of issue 7 against running nodes and relays on 127.0.0.1.

* Finding 4: relay hints (and dial targets) whose host trio cannot even encode,
  and dial targets whose connection fails in unexpected ways, never stop a node.
* Finding 6: authenticated connections that never send a Hello are closed after
  HELLO_TIMEOUT; a flood from one address holds at most its per-address share;
  a peer the node synced with before (a relay client whose uploads are stored)
  gets in while strangers hold every slot, by evicting one.

Attackers are real Noise clients (``tests/attack_helpers.py``) dialling from
127.x.y.z addresses, so that per-address caps see different machines.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import trio
from attack_helpers import NoiseClient, open_noise_clients, spread_addresses
from node_helpers import RunningNode, make_member, start_node, wait_until
from relay_helpers import open_client, poll, start_relay
from replication_helpers import FeedWriter, MemoryReplica, board_keys

import p2paid.core.connection
import p2paid.net.connection
import p2paid.net.peers
import p2paid.node.node
import p2paid.node.relays
from p2paid.board.store import open_store
from p2paid.core.codes import CloseReason, DialSource
from p2paid.core.envelope import Envelope
from p2paid.core.identity import NodeKey
from p2paid.core.invite import BoardKeys
from p2paid.core.replication import SyncSession
from p2paid.core.wire import Hello, HelloBoard, Ping
from p2paid.net.admission import ADDRESS_FULL, EVICTED, FULL
from p2paid.net.peers import DialTarget
from p2paid.relay.replica import RelayLimits

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

#: Long enough for a known peer to come back while the flood is connected, short
#: enough to see every silent connection closed within the test.
TEST_HELLO_TIMEOUT = 6.0


def member(keys: BoardKeys, *envelopes: Envelope) -> MemoryReplica:
    """A relay client's in-memory replica of one board, holding ``envelopes``."""
    replica = MemoryReplica("node")
    replica.add_board(keys)
    if envelopes:
        replica.write(keys.board_id, envelopes)
    return replica


@pytest.fixture
def hello_timeout(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(p2paid.core.connection, "HELLO_TIMEOUT", TEST_HELLO_TIMEOUT)
    return TEST_HELLO_TIMEOUT


# ---------------------------------------------------------------------- finding 4


BAD_HOSTS = ["a..b", "a" * 64 + ".example", "bad host", "-x.example"]


async def test_relay_hints_with_bad_hosts_and_failing_dials_do_not_stop_the_node(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Mallory, a member, publishes relay hints whose hosts are not valid IDNA
    (``a..b``, a 64-character label) straight into her section, bypassing every
    check, and they reach the victim's running node. On top, dial targets with such
    hosts, and one whose connection task raises an unexpected error, are handed to
    the node's dialer directly. The node keeps running, keeps syncing with an honest
    peer, and logs each failure once, not on every retry."""
    monkeypatch.setattr(p2paid.node.relays, "RELAY_REFRESH_INTERVAL", 0.1)
    monkeypatch.setattr(p2paid.net.peers, "BACKOFF_START", 0.05)
    monkeypatch.setattr(p2paid.net.peers, "BACKOFF_MAX", 0.1)
    invite = make_member(tmp_path / "victim", None, "victim")
    make_member(tmp_path / "honest", invite, "honest")
    make_member(tmp_path / "mallory", invite, "mallory")
    key_text = "a" * 52
    with open_store(tmp_path / "mallory") as store:
        store.board().publish_relays([f"p2paid-relay://{h}:7447/{key_text}" for h in BAD_HOSTS])
        poison = list(store.board().envelopes())
        mallory = store.board().author

    listener = trio.socket.socket()
    await listener.bind(("127.0.0.2", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    real_run = p2paid.net.connection.run_connection

    async def exploding_run(host: Any, stream: trio.SocketStream, *, address: str,
                            **kwargs: Any) -> Any:
        if address.endswith(f":{port}"):
            await stream.aclose()
            raise ValueError("a bug in one connection")
        return await real_run(host, stream, address=address, **kwargs)

    monkeypatch.setattr(p2paid.net.peers, "run_connection", exploding_run)
    caplog.set_level(logging.DEBUG, logger="p2paid")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            victim = await start_node(nursery, tmp_path / "victim")
            honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
            # The poison arrives as another process on the victim's data dir would store
            # it (the CLI importing a bundle): the running node picks it up.
            with open_store(tmp_path / "victim") as other:
                assert other.board().receive(poison).accepted == len(poison)
            await wait_until(lambda: mallory in victim.node.board().board.version_vector())
            dialer = victim.node.dialer
            for host in BAD_HOSTS:
                dialer.add(DialTarget(host, 7447, source=DialSource.RELAY, node_id=bytes(32),
                                      pinned=True, to_relay=True))
            dialer.add(DialTarget("127.0.0.2", port, source=DialSource.CONFIGURED))
            await trio.sleep(1.0)  # dozens of retries of every target
            for round_ in range(3):
                need = await victim.node.board().post_need(f"still serving {round_}")
                await wait_until(lambda n=need: n.id in {  # type: ignore[misc]
                    i.id for i in honest.node.board().items()})
            assert not any(h in t.host for t in dialer.targets.values() if t.source == "relay"
                           for h in ("..", "a" * 64))  # the hints never became targets
            nursery.cancel_scope.cancel()
    listener.close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    for host in BAD_HOSTS[:2]:
        assert sum(host in w for w in warnings) == 1, warnings
    assert sum("a bug in one connection" in w for w in warnings) == 1, warnings


# ---------------------------------------------------------------------- finding 6: nodes


async def _known_peer_scene(tmp_path: Path, nursery: trio.Nursery) -> RunningNode:
    invite = make_member(tmp_path / "victim", None, "victim")
    make_member(tmp_path / "honest", invite, "honest")
    victim = await start_node(nursery, tmp_path / "victim")
    honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
    need = await victim.node.board().post_need("before the flood")
    await wait_until(lambda: need.id in {i.id for i in honest.node.board().items()})
    honest_id = honest.node.node_id
    await honest.stop()
    assert honest_id in victim.node.peerbook
    return victim


async def test_silent_authenticated_connections_at_the_cap_do_not_lock_out_a_known_peer(
        tmp_path: Path, hello_timeout: float) -> None:
    """64 throw-away identities (8 addresses x 8) complete the Noise handshake and
    never send a Hello, taking every connection slot of a node. A stranger is told
    Close("full"); the honest peer the node synced with before comes back, evicts
    one stranger and syncs while the others are still connected; every silent
    connection is closed at the hello timeout."""
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            victim = await _known_peer_scene(tmp_path, nursery)
            node = victim.node
            flood = await open_noise_clients(nursery, victim.address, spread_addresses(64, 8))
            assert len(flood) == 64
            await wait_until(lambda: node.admission.connections == 64)
            stranger = await NoiseClient.connect(victim.address, "127.0.1.250")
            assert stranger is not None
            await stranger.run()
            assert stranger.close_reason == FULL

            honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
            need = await node.board().post_need("during the flood")
            await wait_until(lambda: need.id in {i.id for i in honest.node.board().items()})
            offer = await honest.node.board().post_offer("back from the honest peer")
            await wait_until(lambda: offer.id in {i.id for i in node.board().items()})
            evicted = [c for c in flood if c.close_reason == EVICTED]
            assert len(evicted) == 1, [c.close_reason for c in flood if c.is_closed]

            await wait_until(lambda: all(c.is_closed for c in flood))
            assert {c.close_reason for c in flood} == {EVICTED, CloseReason.NO_HELLO}
            assert [p.node_id for p in node.peers()] == [honest.node.node_id.hex()]
            nursery.cancel_scope.cancel()


async def test_keys_a_hostile_member_made_known_in_bulk_do_not_keep_an_older_member_out(
        tmp_path: Path) -> None:
    """A member fills every slot of a node (max_connections 6) with fresh node keys that
    each send a valid Hello for the board, so each becomes known, and keep pinging. The
    honest peer, known from before, comes back and evicts the most recently known of
    them; a stranger is refused (there is no stranger left to evict)."""
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            invite = make_member(tmp_path / "victim", None, "victim")
            make_member(tmp_path / "honest", invite, "honest")
            victim = await start_node(nursery, tmp_path / "victim", max_connections=6)
            honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
            await wait_until(lambda: len(victim.node.peers()) == 1)
            await honest.stop()
            keys = victim.node.board().board.keys
            await trio.sleep(0.01)  # the hostile keys become known strictly later
            flood = await open_noise_clients(nursery, victim.address,
                                             spread_addresses(6, 2), parallel=1)
            for client in flood:
                replica = MemoryReplica("node")
                replica.add_board(keys)
                assert client.channel.handshake_hash is not None
                session = SyncSession(replica, initiator=True,
                                      handshake_hash=client.channel.handshake_hash)
                await client.send(*session.start(), Ping(1))
            await wait_until(lambda: len(victim.node.peerbook) == 7
                             and all(c.known for c in victim.node.admission._conns))
            honest = await start_node(nursery, tmp_path / "honest", peers=[victim.address])
            need = await victim.node.board().post_need("the honest member is back")
            await wait_until(lambda: need.id in {i.id for i in honest.node.board().items()})
            (evicted,) = [c for c in flood if c.is_closed]
            assert evicted.close_reason == EVICTED

            def since(c: NoiseClient) -> int:
                return victim.node.peerbook.first_seen(c.channel.remote_static or b"") or 0

            assert since(evicted) == max(since(c) for c in flood)  # the most recently known
            stranger = await NoiseClient.connect(victim.address, "127.0.1.251")
            assert stranger is not None
            await stranger.run()
            assert stranger.close_reason == FULL
            nursery.cancel_scope.cancel()


async def test_a_flood_from_one_address_does_not_stop_a_newcomer_from_another(
        tmp_path: Path, hello_timeout: float) -> None:
    """60 authenticated connections from 127.0.0.2: the node keeps at most
    max_per_address of them (the rest hear why), and a member it never met, on
    another address, joins and syncs."""
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            invite = make_member(tmp_path / "victim", None, "victim")
            victim = await start_node(nursery, tmp_path / "victim")
            flood = await open_noise_clients(nursery, victim.address, ["127.0.0.2"] * 60)
            await wait_until(lambda: sum(c.is_closed for c in flood) >= len(flood) - 8)
            assert victim.node.admission.connections == 8
            assert {c.close_reason for c in flood if c.is_closed} == {ADDRESS_FULL}
            make_member(tmp_path / "newcomer", invite, "newcomer")
            newcomer = await start_node(nursery, tmp_path / "newcomer",
                                        peers=[victim.address])
            need = await victim.node.board().post_need("welcome")
            await wait_until(lambda: need.id in {i.id for i in newcomer.node.board().items()})
            assert sum(not c.is_closed for c in flood) == 8  # the newcomer evicted nobody
            nursery.cancel_scope.cancel()


async def test_handshakes_in_progress_are_capped_per_address(tmp_path: Path) -> None:
    """Sockets from one address that never finish the handshake hold at most
    MAX_HANDSHAKES_PER_ADDRESS slots; another address still completes handshakes."""
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            make_member(tmp_path / "victim", None, "victim")
            victim = await start_node(nursery, tmp_path / "victim")
            sockets = []
            for _ in range(30):
                sockets.append(await trio.open_tcp_stream(*victim.address,
                                                          local_address="127.0.0.3"))
            await wait_until(lambda: victim.node.admission.handshaking
                             == p2paid.node.node.MAX_HANDSHAKES_PER_ADDRESS)
            other = await NoiseClient.connect(victim.address, "127.0.0.4")
            assert other is not None
            for s in sockets:
                await s.aclose()
            await other.aclose()
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------- finding 6: relays


async def test_528_silent_connections_on_a_relay_do_not_lock_out_a_client_holding_data(
        tmp_path: Path, hello_timeout: float) -> None:
    """528 throw-away identities (17 addresses x 32, in-process Noise clients)
    complete the handshake with a relay (default limits: 512 connections, 32 per
    address) and never send a Hello. 512 are admitted and 16 told Close("full"); a
    client whose uploads the relay stored before comes back, evicts one stranger and
    syncs both ways; every silent connection is closed at the hello timeout."""
    keys = board_keys(60)
    writer = FeedWriter(keys)
    client_key = NodeKey.generate()
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay")
            first = await open_client(nursery, relay.hostport, member(keys, *writer.many(3)),
                                      key=client_key)
            await poll(lambda: first.in_sync(keys.board_id))
            await first.aclose()
            await poll(lambda: relay.relay.admission.connections == 0)

            flood = await open_noise_clients(nursery, relay.hostport,
                                             spread_addresses(528, 32), parallel=17,
                                             expected_remote=relay.key)
            await poll(lambda: relay.relay.admission.connections == 512
                       and sum(c.is_closed for c in flood) >= 16)
            assert {c.close_reason for c in flood if c.is_closed} == {FULL}

            reader = await open_client(nursery, relay.hostport, member(keys),
                                       key=client_key, local_address="127.0.2.1")
            await poll(lambda: len(reader.holds(keys.board_id)) == 3)
            reader.replica.write(keys.board_id, [writer.next()])
            await reader.push(keys.board_id)
            await poll(lambda: reader.in_sync(keys.board_id) and len(reader.acked) == 1)
            assert sum(c.close_reason == EVICTED for c in flood) == 1

            await poll(lambda: all(c.is_closed for c in flood), 0.05)
            assert {c.close_reason for c in flood} == {FULL, EVICTED, CloseReason.NO_HELLO}
            assert not reader.is_closed
            nursery.cancel_scope.cancel()


async def test_strangers_that_say_hello_hold_a_relay_full_but_a_known_client_evicts_one(
        tmp_path: Path) -> None:
    """Strangers that do send a Hello (naming an invented board) and keep pinging are
    not closed by the hello timeout; with them holding every slot, a new stranger is
    refused, and a client that holds data there still gets in, by evicting the
    youngest of them."""
    keys = board_keys(61)
    client_key = NodeKey.generate()
    limits = RelayLimits(max_connections=20, max_per_address=10)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay", limits=limits)
            first = await open_client(nursery, relay.hostport,
                                      member(keys, *FeedWriter(keys).many(2)), key=client_key)
            await poll(lambda: first.in_sync(keys.board_id))
            await first.aclose()
            flood = await open_noise_clients(nursery, relay.hostport, spread_addresses(19, 10),
                                             expected_remote=relay.key)
            await poll(lambda: relay.relay.admission.connections == 19)
            flood += await open_noise_clients(nursery, relay.hostport, ["127.0.12.1"],
                                              expected_remote=relay.key)  # the youngest
            hello = Hello(1, "node", True, (HelloBoard(bytes(32), bytes(16)),))
            for client in flood:
                await client.send(hello, Ping(1))
            await poll(lambda: relay.relay.admission.connections == 20
                       and all(any(isinstance(m, Hello) for m in c.received) for c in flood))
            newcomer = await NoiseClient.connect(relay.hostport, "127.0.3.1")
            assert newcomer is not None
            await newcomer.run()
            assert newcomer.close_reason == FULL
            back = await open_client(nursery, relay.hostport, member(keys), key=client_key,
                                     local_address="127.0.3.2")
            await poll(lambda: len(back.holds(keys.board_id)) == 2)
            evicted = [c for c in flood if c.is_closed]
            assert [c.close_reason for c in evicted] == [EVICTED]
            assert evicted[0] is flood[-1]  # the youngest
            nursery.cancel_scope.cancel()


async def test_a_flood_from_one_address_does_not_stop_another_address_on_a_relay(
        tmp_path: Path, hello_timeout: float) -> None:
    keys = board_keys(62)
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            relay = await start_relay(nursery, tmp_path / "relay")
            flood = await open_noise_clients(nursery, relay.hostport, ["127.0.0.2"] * 80,
                                             expected_remote=relay.key)
            await poll(lambda: sum(c.is_closed for c in flood) >= len(flood) - 32)
            assert relay.relay.admission.connections == 32
            newcomer = await open_client(nursery, relay.hostport,
                                         member(keys, *FeedWriter(keys).many(4)))
            await poll(lambda: newcomer.in_sync(keys.board_id) and len(newcomer.acked) >= 1)
            nursery.cancel_scope.cancel()
