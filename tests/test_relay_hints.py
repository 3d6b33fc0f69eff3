"""Where a node's relays come from: its configuration, invites, and members' hints."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

import p2paid
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import InviteError

# Loopback addresses where nothing listens: the node under test dials some of them.
RELAY_1 = str(RelayAddress("127.0.0.1", 1, bytes(range(32))))
RELAY_2 = str(RelayAddress("127.0.0.2", 9000, bytes(range(1, 33))))
SUGGESTED = str(RelayAddress("127.0.0.3", 9001, bytes(32)))


def test_relay_address_round_trip_and_errors() -> None:
    named = str(RelayAddress("relay-one.example", 7447, bytes(range(32))))
    address = RelayAddress.parse(named)
    assert str(address) == named and address.port == 7447
    v6 = RelayAddress("2001:db8::1", 7447, bytes(32))
    assert RelayAddress.parse(str(v6)) == v6
    for bad in ("p2paid:abc", "p2paid-relay://host:7447", "p2paid-relay://host/key",
                "p2paid-relay://host:notaport/" + "a" * 52, "p2paid-relay://host:7447/!!"):
        with pytest.raises(InviteError):
            RelayAddress.parse(bad)


def test_published_hint_is_only_a_suggestion_for_other_members(tmp_path: Path) -> None:
    """A relay one member adds is published in their section and used by that member;
    every other replica sees it only as a suggestion (with who suggests it), does not use
    it until it is accepted, and then uses it without publishing it in turn."""
    with p2paid.open_store(tmp_path / "a") as a, p2paid.open_store(tmp_path / "b") as b:
        board_a = a.create_board("Camp", display_name="Ana")
        board_b = b.join(p2paid.Invite(board_a.keys.secret, "Camp"))  # an invite without hints
        assert board_b.relays_in_use() == [] and board_b.suggested_relays() == []
        board_a.add_relay(RELAY_1)
        assert board_a.relays_in_use() == [RELAY_1]
        board_b.receive(list(board_a.envelopes()))
        assert board_b.relays_in_use() == []
        [suggestion] = board_b.suggested_relays()
        assert (suggestion.address, suggestion.board_id) == (RELAY_1, board_b.id)
        [by] = suggestion.suggested_by
        assert (by.author, by.name, by.fingerprint) == (
            board_a.author.hex(), "Ana", board_a.author_fingerprint)
        assert RELAY_1 in p2paid.Invite.from_uri(board_a.invite()).relays  # new invites too

        assert board_b.accept_relay(RELAY_1) == RELAY_1
        assert board_b.relays_in_use() == [RELAY_1] and board_b.suggested_relays() == []
        board_a.receive(list(board_b.envelopes()))
        assert board_a.suggested_relays() == []  # B did not publish it back
        with pytest.raises(p2paid.NotFoundError):
            board_b.accept_relay(RELAY_2)  # nobody suggests it


async def test_relay_plan_merges_config_and_invites_not_suggestions(tmp_path: Path) -> None:
    """Configured relays apply to every board (or one); a board's own relays (from its
    invite) apply to that board; a relay another member publishes is not in the plan."""
    with p2paid.open_store(tmp_path / "n") as store, \
            p2paid.open_store(tmp_path / "other") as other:
        first = store.create_board("First", relays=[RELAY_1])
        second = store.create_board("Second")
        store.add_relay(RELAY_2, second.id)
        theirs = other.join(first.invite())
        theirs.publish_relays([SUGGESTED])
        first.receive(list(theirs.envelopes()))
        assert len(first.suggested_relays()) == 1
    async with p2paid.open_node(tmp_path / "n", listen=None, mdns=False) as node:
        plan = node.relay_plan()
        assert plan == {RELAY_1: frozenset({first.id}), RELAY_2: frozenset({second.id})}
        with trio.fail_after(5):
            while len([t for t in node.dialer.targets.values() if t.source == "relay"]) < 2:
                await trio.sleep(0.05)
        target = node.dialer.get("127.0.0.2", 9000)
        assert target is not None and target.pinned and target.node_id == bytes(range(1, 33))


def test_a_mistyped_relay_key_is_refused_by_the_cli_and_an_old_address_gets_a_note(
        tmp_path: Path) -> None:
    import base64
    import subprocess
    import sys

    key = bytes(range(32))
    good = str(RelayAddress("relay.example", 7447, key))
    key_text = good.rsplit("/", 1)[1]
    typo = good[:-len(key_text)] + key_text[:5] + ("b" if key_text[5] == "a" else "a") + \
        key_text[6:]
    old = "p2paid-relay://relay.example:7447/" + base64.b32encode(key).decode().rstrip(
        "=").lower()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "p2paid", "--data-dir",
                               str(tmp_path / "d"), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    assert cli("init").returncode == 0
    refused = cli("relay", "add", typo)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "checksum does not match" in refused.stderr and refused.stdout == ""
    noted = cli("relay", "add", old)
    assert noted.returncode == 0, noted.stderr
    assert "no checksum" in noted.stderr
    assert good in noted.stdout  # stored and shown in the checked form
