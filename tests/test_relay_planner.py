"""The pure relay planner: which relay endpoints to dial, and what to stop and start
when the plan changes."""

from __future__ import annotations

from p2paid.board.relayplan import RelayTarget, relay_changes, relay_targets
from p2paid.core.relayaddr import RelayAddress

KEY_A, KEY_B = b"\xaa" * 32, b"\xbb" * 32
B1, B2, B3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32


def addr(host: str = "relay.example", key: bytes = KEY_A, token: bytes | None = None) -> str:
    return str(RelayAddress(host, 7447, key, token))


def test_addresses_of_one_endpoint_merge_their_boards_and_keep_a_token() -> None:
    plan = {addr(): frozenset({B1}), addr(token=b"t0k"): frozenset({B2}),
            addr("other.example"): frozenset({B3}), "not an address": frozenset({B3})}
    wanted = relay_targets(plan)
    assert set(wanted) == {("relay.example", 7447), ("other.example", 7447)}
    merged = wanted["relay.example", 7447]
    assert merged.boards == {B1, B2} and merged.address.token == b"t0k"


def test_a_second_key_for_one_endpoint_replaces_the_first() -> None:
    wanted = relay_targets({addr(): frozenset({B1}), addr(key=KEY_B): frozenset({B2})})
    assert [(t.address.key, t.boards) for t in wanted.values()] == [(KEY_B, frozenset({B2}))]


def test_changes_stop_what_changed_and_start_what_is_new() -> None:
    old = relay_targets({addr(): frozenset({B1}), addr("gone.example"): frozenset({B1})})
    new = relay_targets({addr(): frozenset({B1, B2}), addr("new.example"): frozenset({B3})})
    stop, start = relay_changes(old, new)
    assert sorted(t.address.host for t in stop) == ["gone.example", "relay.example"]
    assert sorted(t.address.host for t in start) == ["new.example", "relay.example"]
    assert relay_changes(new, new) == ([], [])


def test_a_new_token_or_key_redials() -> None:
    old = {("relay.example", 7447): RelayTarget(RelayAddress.parse(addr()), frozenset({B1}))}
    for changed in (addr(token=b"new"), addr(key=KEY_B)):
        stop, start = relay_changes(old, relay_targets({changed: frozenset({B1})}))
        assert len(stop) == len(start) == 1 and str(start[0].address) == changed
