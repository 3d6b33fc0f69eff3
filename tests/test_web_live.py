"""Live updates: ``GET /b/{board}/live`` as server-sent events, over a real socket (the
node's own Hypercorn trio worker): an event for every change wherever it came from,
only for the board's paired phones, ended by revocation or leaving, and capped."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import httpx
import trio
from test_web import _board, csrf_of, pair_phone
from test_web_members import post_need

from p2paid.node.node import Node, open_node
from p2paid.web import serve_web
from p2paid.web.limits import WebLimits
from p2paid.web.webstore import WebStore

#: A hang guard, not a timing assertion.
TIMEOUT = 20
LIMITS = WebLimits(live_keepalive=0.2, live_per_device=2, live_total=5)


@asynccontextmanager
async def serving(data_dir: Path) -> AsyncIterator[tuple[Node, WebStore, str]]:
    async with open_node(data_dir, listen=None, mdns=False) as node, \
            trio.open_nursery() as nursery:
        web = WebStore(data_dir)
        host, port = await nursery.start(partial(serve_web, node, "127.0.0.1", 0, web=web,
                                                 limits=LIMITS))
        yield node, web, f"http://{host}:{port}"
        nursery.cancel_scope.cancel()
        web.close()


@asynccontextmanager
async def paired(url: str, web: WebStore, node: Node, name: str
                 ) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as client:
        await pair_phone(client, web, node.board().id, name)
        yield client


class Events:
    """The events of one open stream, read a line at a time."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> tuple[str, str]:
        """The next event's name and data (comments and keep-alives skipped)."""
        name, data = "", ""
        with trio.fail_after(TIMEOUT):
            async for line in self._lines:
                if line.startswith("event: "):
                    name = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    data = line.removeprefix("data: ")
                elif not line and name:
                    return name, data
        return "", ""  # the stream ended

    async def change(self) -> dict[str, str]:
        name, data = await self.next()
        assert name == "change", (name, data)
        change: dict[str, str] = json.loads(data)
        return change


@asynccontextmanager
async def live(client: httpx.AsyncClient, board_hex: str) -> AsyncIterator[Events]:
    async with client.stream("GET", f"/b/{board_hex}/live") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Events(response)


async def until_no_subscribers(node: Node) -> None:
    with trio.fail_after(TIMEOUT):
        while node.board().subscribers:
            await trio.sleep(0.01)


async def test_every_change_reaches_an_open_stream_wherever_it_came_from(
        tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, url), \
            paired(url, web, node, "Amal") as amal, paired(url, web, node, "Bo") as bo, \
            live(amal, board_hex) as events:
        need = await node.board().post_need("Drinking water")  # the node's API
        assert await events.change() == {"kind": "item-added", "item": need.id}
        posted = await post_need(bo, board_hex, "Tarpaulin")  # another phone
        bo_item = posted.headers["location"].rsplit("/", 1)[-1]
        assert await events.change() == {"kind": "item-added", "item": bo_item}
        page = await bo.get(f"/b/{board_hex}/i/{need.id}")
        await bo.post(f"/b/{board_hex}/i/{need.id}/pledge", data={"csrf": csrf_of(page)})
        assert await events.change() == {"kind": "claim-added", "item": need.id}
        cli = await trio.run_process(  # another process on the same data dir
            [sys.executable, "-m", "p2paid", "--data-dir", str(tmp_path), "need", "add",
             "Candles"], capture_stdout=True, capture_stderr=True)
        assert cli.returncode == 0, cli.stderr
        change = await events.change()
        assert change["kind"] == "item-added"
        assert node.board().get(change["item"]).title == "Candles"


async def test_no_stream_for_a_stranger_or_another_board(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, url), \
            httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as stranger, \
            paired(url, web, node, "Amal") as amal:
        assert (await stranger.get(f"/b/{board_hex}/live")).status_code == 404
        assert (await amal.get(f"/b/{'0' * 64}/live")).status_code == 404


async def test_revoking_the_phone_or_leaving_ends_its_stream(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, url), \
            paired(url, web, node, "Amal") as amal, paired(url, web, node, "Bo") as bo, \
            live(amal, board_hex) as amal_events, live(bo, board_hex) as bo_events:
        [device] = [d for d in node.store.devices() if d.name == "Amal"]
        node.store.revoke_device(device.id)  # no board event: the keep-alive notices
        assert await amal_events.next() == ("end", "")
        assert await amal_events.next() == ("", "")  # and the stream is closed
        page = await bo.get(f"/b/{board_hex}")
        await bo.post("/leave", data={"csrf": csrf_of(page)})
        assert await bo_events.next() == ("end", "")
        assert await bo_events.next() == ("", "")


async def test_streams_are_capped_per_phone_and_freed_when_the_phone_goes(
        tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, url), \
            paired(url, web, node, "Amal") as amal, paired(url, web, node, "Bo") as bo:
        board = node.board()
        async with live(amal, board_hex), live(amal, board_hex):  # LIMITS: 2 a phone
            refused = await amal.get(f"/b/{board_hex}/live")
            assert refused.status_code == 429
            async with live(bo, board_hex):  # another phone still may
                assert board.subscribers == 3
        # the phone hung up: its subscriptions end and its slots are free again
        await until_no_subscribers(node)
        async with live(amal, board_hex), live(amal, board_hex):
            assert board.subscribers == 2


async def test_the_global_cap_holds_whatever_the_phones(tmp_path: Path) -> None:
    board_hex = _board(tmp_path)
    async with serving(tmp_path) as (node, web, url), \
            paired(url, web, node, "a") as a, paired(url, web, node, "b") as b, \
            paired(url, web, node, "c") as c, paired(url, web, node, "d") as d, \
            live(a, board_hex), live(a, board_hex), live(b, board_hex), \
            live(b, board_hex), live(c, board_hex):  # LIMITS: 5 in all
        assert (await d.get(f"/b/{board_hex}/live")).status_code == 429
