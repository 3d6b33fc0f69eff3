"""Paired phones: pairing, posting, pledging, CSRF, revocation, leaving, limits.

Each phone is its own member of the board (its own author key, held by the node),
so its posts are attributable and it can be cut off alone."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from test_web import _board, csrf_of, pair_phone

from p2paid.board.store import open_store
from p2paid.node.node import Node, open_node
from p2paid.web import create_app
from p2paid.web.webstore import WebStore


@asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[Node, WebStore, httpx.ASGITransport]]:
    async with open_node(data_dir, listen=None, mdns=False) as node:
        web = WebStore(data_dir)
        yield node, web, httpx.ASGITransport(app=create_app(node, web=web))
        web.close()


def phone(transport: httpx.ASGITransport) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1")


async def post_need(client: httpx.AsyncClient, board_hex: str, title: str,
                    **fields: str) -> httpx.Response:
    page = await client.get(f"/b/{board_hex}")
    return await client.post(f"/b/{board_hex}/post", data={
        "csrf": csrf_of(page), "kind": "need", "title": title, **fields})


async def test_a_stranger_on_the_wifi_sees_no_board(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (_node, _web, transport), phone(transport) as stranger:
        home = await stranger.get("/")
        assert home.status_code == 200 and "scan the QR code" in home.text
        assert "Riverside" not in home.text
        assert (await stranger.get(f"/b/{board_hex}")).status_code == 404


async def test_a_phone_pairs_posts_and_is_its_own_member(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "Amal")
        done = await post_need(amal, board_hex, "Baby formula", quantity="6",
                               urgency="high", category="food")
        assert done.status_code == 303
        item_id = done.headers["location"].rsplit("/", 1)[-1]
        item = node.board().get(item_id)
        [device] = node.store.devices()
        assert item.author == device.author.hex() != node.board().author.hex()
        assert item.author_name == "Amal" and item.quantity == 6
        page = await amal.get(done.headers["location"])
        assert "Mark fulfilled" in page.text  # its own item
    with open_store(tmp_path) as store:  # durable, and still there after a restart
        assert store.board().get(item_id).title == "Baby formula"


async def test_phones_pledge_on_each_other_s_needs_and_cancel(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), \
            phone(transport) as amal, phone(transport) as bo:
        await pair_phone(amal, web, node.board().id, "Amal")
        await pair_phone(bo, web, node.board().id, "Bo")
        need = await node.board().post_need("Drinking water", quantity=40, unit="litres")
        page = await bo.get(f"/b/{board_hex}/i/{need.id}")
        pledged = await bo.post(f"/b/{board_hex}/i/{need.id}/pledge",
                                data={"csrf": csrf_of(page), "quantity": "10", "note": "noon"})
        assert pledged.status_code == 303
        [claim] = node.board().get(need.id).claims
        assert claim.author_name == "Bo" and claim.quantity == 10
        page = await bo.get(f"/b/{board_hex}/i/{need.id}")
        assert "30 of 40 litres" in page.text and "Cancel my pledge" in page.text
        await bo.post(f"/b/{board_hex}/i/{need.id}/unpledge", data={"csrf": csrf_of(page)})
        assert node.board().get(need.id).claims == ()
        amal_post = await post_need(amal, board_hex, "Tarpaulin")
        amal_item = amal_post.headers["location"].rsplit("/", 1)[-1]
        page = await bo.get(f"/b/{board_hex}/i/{amal_item}")
        done = await bo.post(f"/b/{board_hex}/i/{amal_item}/pledge",
                             data={"csrf": csrf_of(page)})
        assert done.status_code == 303 and len(node.board().get(amal_item).claims) == 1


async def test_a_form_without_the_session_s_csrf_token_changes_nothing(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), \
            phone(transport) as amal, phone(transport) as bo:
        await pair_phone(amal, web, node.board().id, "Amal")
        await pair_phone(bo, web, node.board().id, "Bo")
        bo_token = csrf_of(await bo.get(f"/b/{board_hex}"))
        for csrf in ("", "forged", bo_token):  # none, made up, another phone's
            refused = await amal.post(f"/b/{board_hex}/post",
                                      data={"csrf": csrf, "kind": "need", "title": "x"})
            assert refused.status_code == 403
        assert node.board().items() == []


async def test_an_invite_is_counted_and_pairing_needs_its_own_page(tmp_path: Path) -> None:
    _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), \
            phone(transport) as first, phone(transport) as second:
        token, _ = web.create_invite(node.board().id, uses=1)
        page = await first.get(f"/pair/{token}")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce
        # a cross-site form carries no nonce cookie: refused, and the use is kept
        forged = await second.post(f"/pair/{token}", data={"nonce": nonce.group(1)})
        assert forged.status_code == 403 and web.invites()[0].uses_left == 1
        done = await first.post(f"/pair/{token}", data={"nonce": nonce.group(1)})
        assert done.status_code == 303
        again = await second.get(f"/pair/{token}")
        assert again.status_code == 410 and "cannot be used" in again.text


async def test_a_revoked_phone_is_cut_off_at_once_and_the_others_stay(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), \
            phone(transport) as amal, phone(transport) as bo:
        await pair_phone(amal, web, node.board().id, "Amal")
        await pair_phone(bo, web, node.board().id, "Bo")
        await post_need(amal, board_hex, "Soap")
        amal_device = next(d for d in node.store.devices() if d.name == "Amal")
        node.store.revoke_device(amal_device.id)
        assert (await amal.get(f"/b/{board_hex}")).status_code == 404
        assert (await bo.get(f"/b/{board_hex}")).status_code == 200
        assert [i.title for i in node.board().items()] == ["Soap"]  # its posts stay


async def test_leaving_ends_the_session_and_clears_the_site(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "Amal")
        page = await amal.get(f"/b/{board_hex}")
        left = await amal.post("/leave", data={"csrf": csrf_of(page)})
        assert left.status_code == 200 and "cookies" in left.headers["clear-site-data"]
        assert (await amal.get(f"/b/{board_hex}")).status_code == 404


async def test_a_flood_of_posts_from_one_phone_is_slowed(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "Amal")
        codes = [(await post_need(amal, board_hex, f"need {i}")).status_code
                 for i in range(30)]
        assert 429 in codes and codes[:20] == [303] * 20
        assert len(node.board().items()) == codes.count(303)


async def test_hostile_text_posted_by_a_phone_is_shown_as_text(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "<b>Amal</b>")
        done = await post_need(amal, board_hex, "<script>alert(1)</script>",
                               details="<img src=x onerror=alert(1)>")
        page = await amal.get(done.headers["location"])
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;" in page.text and "&lt;b&gt;Amal&lt;/b&gt;" in page.text


async def test_the_coordinator_s_phone_posts_as_the_node_s_own_member(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as mine:
        token, _ = web.create_invite(node.board().id, as_me=True)
        page = await mine.get(f"/pair/{token}")
        nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
        assert nonce
        assert (await mine.post(f"/pair/{token}", data={"nonce": nonce.group(1)})
                ).status_code == 303
        done = await post_need(mine, board_hex, "Generator fuel")
        item = node.board().get(done.headers["location"].rsplit("/", 1)[-1])
        assert item.author == node.board().author.hex() and node.store.devices() == []


async def test_zawgyi_text_is_refused_with_a_hint(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    zawgyi = "လူတိုင္းသည္ တူညီ လြတ္လပ္ေသာ ဂုဏ္သိကၡာ"  # (Zawgyi-encoded Burmese)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "Amal")
        refused = await post_need(amal, board_hex, zawgyi)
        assert refused.status_code == 400 and "Zawgyi" in refused.text
        unicode = await post_need(amal, board_hex, "ရေသန့် လိုအပ်သည်")
        assert unicode.status_code == 303
        assert [i.title for i in node.board().items()] == ["ရေသန့် လိုအပ်သည်"]


async def test_a_phone_edits_its_own_need_and_not_another_s(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), \
            phone(transport) as amal, phone(transport) as bo:
        await pair_phone(amal, web, node.board().id, "Amal")
        await pair_phone(bo, web, node.board().id, "Bo")
        done = await post_need(amal, board_hex, "Rice", quantity="10", unit="kg")
        item_url = done.headers["location"]
        item_id = item_url.rsplit("/", 1)[-1]
        page = await amal.get(item_url)
        assert 'value="Rice"' in page.text  # the edit form, filled in
        edited = await amal.post(f"{item_url}/edit", data={
            "csrf": csrf_of(page), "title": "Rice, white", "details": "", "category": "food",
            "urgency": "critical", "quantity": "", "unit": "kg", "location": "school"})
        assert edited.status_code == 303
        item = node.board().get(item_id)
        assert (item.title, item.quantity, item.location) == ("Rice, white", None, "school")
        assert item.urgency.value == "critical"
        other = await bo.get(item_url)
        assert "Rice, white" in other.text and 'action="' + item_url + '/edit"' not in other.text
        refused = await bo.post(f"{item_url}/edit", data={
            "csrf": csrf_of(other), "title": "mine now"})
        assert refused.status_code == 400
        assert node.board().get(item_id).title == "Rice, white"


async def test_digits_a_form_cannot_convert_are_refused_not_a_crash(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, transport), phone(transport) as amal:
        await pair_phone(amal, web, node.board().id, "Amal")
        for quantity in ("²", "٣", "1e3", "-4"):  # superscript, Arabic-Indic, float, sign
            refused = await post_need(amal, board_hex, "Oil", quantity=quantity)
            assert refused.status_code == 400, quantity
        assert node.board().items() == []
