"""The owner's remote wipe (issue 13): only with --allow-remote-wipe, only from the phone
paired as the node's own member, only with the form's CSRF token and a ticked box; then
the data dir is unreadable and gone, and the node stops. The data dirs here are protected
by a passphrase, so that a wipe done too early (its key file gone) shows; ``p2paid web
revoke @me`` cuts the owner's phones off."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio
from atrest_helpers import FAST, PASSPHRASE, write_passphrase
from cli_helpers import in_process
from test_web import csrf_of, pair_phone

from p2paid.board.store import open_store
from p2paid.node.node import Node, open_node
from p2paid.storage.atrest import Credentials
from p2paid.storage.keystore import key_path
from p2paid.storage.protect import protect
from p2paid.web import create_app
from p2paid.web.webstore import WebStore

CREDS = Credentials(PASSPHRASE)


def _board(data_dir: Path) -> str:
    """A board in a data dir protected by a passphrase; its id."""
    with open_store(data_dir) as store:
        protect(store.database, CREDS, FAST)
        return store.create_board("Riverside", display_name="Amina").id.hex()


@asynccontextmanager
async def serving(data_dir: Path, *, allow: bool
                  ) -> AsyncIterator[tuple[Node, WebStore, httpx.ASGITransport]]:
    async with open_node(data_dir, listen=None, mdns=False, credentials=CREDS) as node:
        web = WebStore(data_dir, sealer=node.store.sealer)
        try:
            yield node, web, httpx.ASGITransport(app=create_app(node, web=web,
                                                                allow_remote_wipe=allow))
        finally:
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
            assert refused.status_code == 400 and key_path(tmp_path).exists()  # not ticked
            done = await mine.post(f"/b/{board_hex}/wipe",
                                   data={"csrf": csrf_of(page), "sure": "yes"})
            assert done.status_code == 200 and "wiped" in done.text
            assert not key_path(tmp_path).exists()  # (at once: before the node stops)
            await trio.sleep_forever()  # the node stops this block
    assert node.wiped and not key_path(tmp_path).exists()
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
            assert not node.wiped and key_path(tmp_path).exists()
    assert key_path(tmp_path).exists()  # (nothing was wiped)


async def test_a_wipe_form_without_the_session_s_token_changes_nothing(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    with trio.fail_after(30):
        async with serving(tmp_path, allow=True) as (node, web, transport), \
                phone(transport) as mine:
            await pair_as_me(mine, web, node)
            forged = await mine.post(f"/b/{board_hex}/wipe",
                                     data={"csrf": "x" * 40, "sure": "yes"})
            assert forged.status_code == 403 and not node.wiped
            assert key_path(tmp_path).exists()
            assert (await mine.get(f"/b/{board_hex}")).status_code == 200


async def test_web_revoke_at_me_cuts_the_owner_s_phones_off(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A lost owner's phone is disarmed without restarting the node: ``p2paid web revoke
    @me`` ends every session paired with ``--as-me``; that phone then gets 404s."""
    board_hex = _board(tmp_path)
    secret = write_passphrase(tmp_path.parent / "passphrase")
    with trio.fail_after(30):
        async with serving(tmp_path, allow=True) as (_node, web, transport), \
                phone(transport) as mine:
            await pair_as_me(mine, web, _node)
            page = await mine.get(f"/b/{board_hex}/wipe")
            assert page.status_code == 200
            code, out, err = await trio.to_thread.run_sync(in_process, capsys, [
                "--data-dir", str(tmp_path), "--passphrase-file", str(secret),
                "web", "revoke", "@me"])
            assert code == 0 and "1 session ended" in out, err
            assert (await mine.get(f"/b/{board_hex}/wipe")).status_code == 404
            assert (await mine.post(f"/b/{board_hex}/wipe", data={
                "csrf": csrf_of(page), "sure": "yes"})).status_code == 404
    assert key_path(tmp_path).exists()
