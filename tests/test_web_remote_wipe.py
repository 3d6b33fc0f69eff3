"""The owner's remote wipe (issue 13): only with --allow-remote-wipe, only from the phone
paired as the node's own member, only with the form's CSRF token and a ticked box; then
the data dir is unreadable and gone, and the node stops."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import trio
from test_web import _board, csrf_of, pair_phone

from p2paid.node.node import Node, open_node
from p2paid.web import create_app
from p2paid.web.webstore import WebStore


@asynccontextmanager
async def serving(data_dir: Path, *, allow: bool
                  ) -> AsyncIterator[tuple[Node, WebStore, httpx.ASGITransport]]:
    async with open_node(data_dir, listen=None, mdns=False) as node:
        web = WebStore(data_dir)
        yield node, web, httpx.ASGITransport(app=create_app(node, web=web,
                                                            allow_remote_wipe=allow))
        web.close()


def phone(transport: httpx.ASGITransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def pair_as_me(client: httpx.AsyncClient, web: WebStore, node: Node) -> None:
    token, _ = web.create_invite(node.board().id, as_me=True)
    page = await client.get(f"/pair/{token}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce
    assert (await client.post(f"/pair/{token}", data={"nonce": nonce.group(1)})
            ).status_code == 303


def p2paid_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.rglob("*") if p.is_file()) if data_dir.exists() else []


async def test_the_owner_s_phone_wipes_the_node_and_the_node_stops(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with trio.fail_after(30):
        async with serving(tmp_path, allow=True) as (node, web, transport), \
                phone(transport) as mine:
            await pair_as_me(mine, web, node)
            board = await mine.get(f"/b/{board_hex}")
            assert f"/b/{board_hex}/wipe" in board.text
            page = await mine.get(f"/b/{board_hex}/wipe")
            assert page.status_code == 200
            refused = await mine.post(f"/b/{board_hex}/wipe", data={"csrf": csrf_of(page)})
            assert refused.status_code == 400 and p2paid_files(tmp_path)  # box not ticked
            done = await mine.post(f"/b/{board_hex}/wipe",
                                   data={"csrf": csrf_of(page), "sure": "yes"})
            assert done.status_code == 200 and "wiped" in done.text
            await trio.sleep_forever()  # the node stops this block
    assert node.wiped
    assert not [p for p in p2paid_files(tmp_path) if p.stat().st_size]


async def test_no_wipe_without_the_option_or_from_another_phone(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with trio.fail_after(30):
        async with serving(tmp_path, allow=False) as (node, web, transport), \
                phone(transport) as mine:
            await pair_as_me(mine, web, node)
            assert "/wipe" not in (await mine.get(f"/b/{board_hex}")).text
            assert (await mine.get(f"/b/{board_hex}/wipe")).status_code == 404
        async with serving(tmp_path, allow=True) as (node, web, transport), \
                phone(transport) as member, phone(transport) as stranger:
            await pair_phone(member, web, node.board().id, "Bashir")
            assert "/wipe" not in (await member.get(f"/b/{board_hex}")).text
            page = await member.get(f"/b/{board_hex}")
            for client in (member, stranger):
                assert (await client.get(f"/b/{board_hex}/wipe")).status_code == 404
                assert (await client.post(f"/b/{board_hex}/wipe", data={
                    "csrf": csrf_of(page), "sure": "yes"})).status_code == 404
            assert not node.wiped
    assert p2paid_files(tmp_path)  # (nothing was wiped)


async def test_a_wipe_form_without_the_session_s_token_changes_nothing(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with trio.fail_after(30):
        async with serving(tmp_path, allow=True) as (node, web, transport), \
                phone(transport) as mine:
            await pair_as_me(mine, web, node)
            forged = await mine.post(f"/b/{board_hex}/wipe",
                                     data={"csrf": "x" * 40, "sure": "yes"})
            assert forged.status_code == 403 and not node.wiped
            assert (await mine.get(f"/b/{board_hex}")).status_code == 200
