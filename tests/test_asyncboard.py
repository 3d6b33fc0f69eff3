"""AsyncBoard: Board's API on a running node, typed alike, writes durable and pushed."""

from __future__ import annotations

import inspect
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import trio
from mypy import api as mypy_api
from node_helpers import make_member, start_node, wait_until

from p2paid.board.board import Board
from p2paid.board.deviceboard import DeviceBoard
from p2paid.board.store import open_store
from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.errors import RevokedDeviceError, UsageError
from p2paid.node.asyncboard import AsyncBoard, AsyncDeviceBoard

#: Board's domain API (the replica-engine methods stay the node's business).
DOMAIN = (
    "invite", "items", "needs", "offers", "get", "my_claims", "display_name", "members",
    "me", "relays_in_use", "suggested_relays", "export_automerge", "post", "post_need",
    "post_offer", "edit", "fulfil", "withdraw", "reopen", "claim", "unclaim",
    "set_display_name", "publish_relays", "add_relay", "accept_relay", "reject_relay",
    "remove_relay",
)
PROPERTIES = ("id", "name", "author", "author_fingerprint", "member_count")
#: What a paired device can do (replication, relays and invites stay the node's).
DEVICE_DOMAIN = (
    "items", "needs", "offers", "get", "my_claims", "display_name", "members", "me", "post",
    "post_need", "post_offer", "edit", "fulfil", "withdraw", "reopen", "claim", "unclaim",
    "set_display_name",
)


def _parameters(function: Callable[..., object]) -> list[tuple[str, object, object]]:
    """``(name, kind, default)`` of each parameter; typed keyword fields
    (``**fields: Unpack[SomeTypedDict]``) count as the keyword-only fields they stand for."""
    out: list[tuple[str, object, object]] = []
    hints = get_type_hints(function, include_extras=True)
    for name, p in inspect.signature(function).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            (fields,) = get_args(hints[name])
            keys = fields.__required_keys__ | fields.__optional_keys__
            out.extend((key, "keyword field", None) for key in sorted(keys))
        elif p.kind is p.KEYWORD_ONLY and function.__name__ in ("post", "edit") and (
                function.__qualname__.startswith(("Board.", "MemberBoard.", "DeviceBoard."))):
            out.append((name, "keyword field", None))
        else:
            out.append((name, p.kind, p.default))
    return sorted(out, key=lambda e: (e[1] == "keyword field", e[0] if e[1] == "keyword field"
                                      else ""))


@pytest.mark.parametrize("name", DOMAIN)
def test_every_method_of_board_has_an_async_mirror_with_its_arguments_and_docs(
        name: str) -> None:
    sync, mirror = getattr(Board, name), getattr(AsyncBoard, name)
    assert mirror.__doc__ == sync.__doc__ and sync.__doc__, name
    assert _parameters(mirror) == _parameters(sync), name
    writes = inspect.iscoroutinefunction(mirror)
    reads = name in ("invite", "items", "needs", "offers", "get", "my_claims", "display_name",
                     "members", "me", "relays_in_use", "suggested_relays", "export_automerge")
    assert writes != reads, f"{name}: writes are coroutines, reads are not"


def test_board_properties_are_mirrored() -> None:
    for name in PROPERTIES:
        assert hasattr(AsyncBoard, name), name


def test_a_misspelt_field_does_not_type_check(tmp_path: Path) -> None:
    """``quantiy=3`` is an error for mypy (the fields are a TypedDict, not ``Any``)."""
    source = tmp_path / "client.py"
    source.write_text(textwrap.dedent("""
        from p2paid.node.asyncboard import AsyncBoard

        async def main(board: AsyncBoard) -> None:
            await board.post_need("water", quantity=3, unit="l")
            await board.post_need("water", quantiy=3)
            await board.edit("abcd", urgency="high", titel="x")
    """))
    out, _err, status = mypy_api.run(
        ["--strict", "--no-incremental", "--follow-imports=silent", str(source)])
    assert status == 1, out
    errors = [line for line in out.splitlines() if ": error:" in line]
    assert len(errors) == 2, out
    assert '"quantiy"' in errors[0] and '"titel"' in errors[1], out


async def test_writes_reach_the_store_and_the_peer(tmp_path: Path) -> None:
    invite = make_member(tmp_path / "a", None, "Ana")
    make_member(tmp_path / "b", invite, "Ben")
    relay = str(RelayAddress("relay.example", 7447, NodeKey.generate().public))
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, tmp_path / "a")
        b = await start_node(nursery, tmp_path / "b", peers=[a.address])
        board = a.node.board()
        need = await board.post("need", "rice", quantity=5, unit="kg", urgency="high")
        assert (need.quantity, need.unit, need.urgency.value) == (5, "kg", "high")
        await board.fulfil(need.id)
        again = await board.reopen(need.id)
        assert again.status.value == "open"
        changed = await board.edit(need.id, title="rice and beans", quantity=None)
        assert (changed.title, changed.quantity) == ("rice and beans", None)
        await board.add_relay(relay)
        assert relay in board.relays_in_use() and relay in a.node.relay_plan()
        other = b.node.board()
        with trio.fail_after(10):
            await wait_until(lambda: any(i.title == "rice and beans" for i in other.items()))
        assert other.get(need.id[:8]).status.value == "open"
        assert [s.address for s in other.suggested_relays()] == [relay]
        assert await other.accept_relay(relay) == relay
        assert relay in b.node.relay_plan()
        assert await board.remove_relay(relay)
        assert relay not in a.node.relay_plan()
        await a.stop()
        await b.stop()
    with open_store(tmp_path / "a") as store:
        stored = store.board().get(need.id)
        assert (stored.title, stored.status.value) == ("rice and beans", "open")


def test_a_device_board_mirrors_the_domain_api() -> None:
    for name in DEVICE_DOMAIN:
        sync, mirror = getattr(DeviceBoard, name), getattr(AsyncDeviceBoard, name)
        assert mirror.__doc__ == sync.__doc__ and sync.__doc__, name
        assert _parameters(mirror) == _parameters(sync), name
    for name in PROPERTIES:
        assert hasattr(AsyncDeviceBoard, name), name


async def test_a_device_writes_through_the_nodes_writer(tmp_path: Path) -> None:
    """A running node posts as a paired phone through its board's writer task (durable
    when it returns); the node's member claims it, the phone claims back; the peer sees
    the phone as a member of its own; a revoked phone's writes are refused, alone."""
    invite = make_member(tmp_path / "a", None, "Ana")
    make_member(tmp_path / "b", invite, "Ben")
    with open_store(tmp_path / "a") as store:
        device = store.add_device(store.board().id, "Ana's phone")
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, tmp_path / "a")
        b = await start_node(nursery, tmp_path / "b", peers=[a.address])
        board = a.node.board()
        phone = board.as_device(device)
        assert phone.device == device and phone.author == device.author
        await phone.set_display_name("Ana (phone)")
        water = await phone.post_need("water", quantity=4)
        assert water.author == device.author.hex()
        async with trio.open_nursery() as writers:  # two members' writes at once
            writers.start_soon(lambda: board.claim(water.id, quantity=2))
            writers.start_soon(lambda: phone.post_offer("bread"))
        bread = next(i for i in phone.offers() if i.title == "bread")
        await board.claim(bread.id)
        with pytest.raises(UsageError, match="cannot claim your own"):
            await phone.claim(water.id)
        assert phone.me().name == "Ana (phone)" and board.me().name == "Ana"
        other = b.node.board()
        with trio.fail_after(10):
            await wait_until(lambda: len(other.members()) == 3 and len(other.items()) == 2)
        names = {m.author: m.name for m in other.members()}
        assert names[device.author.hex()] == "Ana (phone)"
        assert other.get(water.id).claims[0].author == board.author.hex()
        a.node.store.revoke_device(device.id)
        async with trio.open_nursery() as writers:
            async def refused() -> None:
                with pytest.raises(RevokedDeviceError):
                    await phone.post_need("more water")
            writers.start_soon(refused)
            writers.start_soon(lambda: board.post_need("soap"))
        await a.stop()
        await b.stop()
    with open_store(tmp_path / "a") as store:
        items = {i.title: i.author for i in store.board().items()}
        assert items == {"water": device.author.hex(), "bread": device.author.hex(),
                         "soap": store.board().author.hex()}
