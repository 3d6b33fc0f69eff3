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
from p2paid.board.store import open_store
from p2paid.core.identity import NodeKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.node.asyncboard import AsyncBoard

#: Board's domain API (the replica-engine methods stay the node's business).
DOMAIN = (
    "invite", "items", "needs", "offers", "get", "my_claims", "display_name", "members",
    "me", "relays_in_use", "suggested_relays", "export_automerge", "post", "post_need",
    "post_offer", "edit", "fulfil", "withdraw", "reopen", "claim", "unclaim",
    "set_display_name", "publish_relays", "add_relay", "accept_relay", "reject_relay",
    "remove_relay",
)
PROPERTIES = ("id", "name", "author", "author_fingerprint", "member_count")


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
        elif p.kind is p.KEYWORD_ONLY and function.__qualname__.startswith(
                ("Board.", "MemberBoard.")) and function.__name__ in ("post", "edit"):
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
