"""Where a node's relays come from: its configuration, invites, and members' hints."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import p2paid
from p2paid.errors import InviteError
from p2paid.relayaddr import RelayAddress

RELAY_1 = str(RelayAddress("relay-one.example", 7447, bytes(range(32))))
RELAY_2 = str(RelayAddress("10.0.0.9", 9000, bytes(range(1, 33))))


def test_relay_address_round_trip_and_errors() -> None:
    address = RelayAddress.parse(RELAY_1)
    assert str(address) == RELAY_1 and address.port == 7447
    v6 = RelayAddress("2001:db8::1", 7447, bytes(32))
    assert RelayAddress.parse(str(v6)) == v6
    for bad in ("p2paid:abc", "p2paid-relay://host:7447", "p2paid-relay://host/key",
                "p2paid-relay://host:notaport/" + "a" * 52, "p2paid-relay://host:7447/!!"):
        with pytest.raises(InviteError):
            RelayAddress.parse(bad)


def test_published_hint_reaches_other_members(tmp_path: Path) -> None:
    """A relay one member adds is published in their section: every replica that
    syncs the board sees it as a hint, and plans to use it."""
    with p2paid.open_store(tmp_path / "a") as a, p2paid.open_store(tmp_path / "b") as b:
        board_a = a.create_board("Camp")
        board_b = b.join(p2paid.Invite(board_a.keys.secret, "Camp"))  # an invite without hints
        assert board_b.relay_hints() == []
        board_a.add_relay(RELAY_1)
        board_b.receive(list(board_a.envelopes()))
        assert board_b.relay_hints() == [RELAY_1]
        assert RELAY_1 in p2paid.Invite.from_uri(board_a.invite()).relays  # new invites too


async def test_relay_plan_merges_config_invites_and_hints(tmp_path: Path) -> None:
    """Configured relays apply to every board (or one); hints apply to their board."""
    with p2paid.open_store(tmp_path / "n") as store:
        first = store.create_board("First", relays=[RELAY_1])
        second = store.create_board("Second")
        store.add_relay(RELAY_2, second.id)
    async with p2paid.open_node(tmp_path / "n", listen=None, mdns=False) as node:
        plan = node.relay_plan()
        assert plan == {RELAY_1: frozenset({first.id}), RELAY_2: frozenset({second.id})}
        with trio.fail_after(5):
            while len([t for t in node.dialer.targets.values() if t.source == "relay"]) < 2:
                await trio.sleep(0.05)
        target = node.dialer.get("10.0.0.9", 9000)
        assert target is not None and target.pinned and target.node_id == bytes(range(1, 33))
