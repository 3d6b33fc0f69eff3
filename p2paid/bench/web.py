"""``p2paid bench --only web``: the web interface served by a node, as phones meet it.

A node child (:mod:`p2paid.bench.web_node`: ``open_node`` and ``serve_web``, as
``p2paid run --web`` does) on a board of N items, phones paired through the real
pairing pages, then:

- response times of the board page (first page) and of an item page over a real
  socket on this machine, their bytes, and the node's resident memory;
- live updates: 50 phones hold ``/b/{board}/live`` streams (httpx under trio, in this
  process) while another node (:mod:`p2paid.bench.sync_node`, connected over
  127.0.0.1) posts 10 needs a second for ~10 s; the time from each post returning
  there to its event at each phone (matched by item id, wall clock: one machine), the
  web node's memory with the streams open, and its longest event-loop stall meanwhile
  (a 1 ms trio ticker in the web node).
"""

from __future__ import annotations

import re
import statistics
import time
from collections import defaultdict
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import trio

from p2paid.bench.child import Child, rss_mib
from p2paid.bench.main import Figure, Report, make_feed
from p2paid.board.store import open_store
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret
from p2paid.web.webstore import WebStore

__all__ = ["run_web_benchmarks"]

REQUESTS = 200
PHONES = 50
POSTS = 100
GAP = 0.1
#: A hang guard, not a timing assertion.
TIMEOUT = 60


def _pair(client: httpx.Client, data_dir: Path, board_id: bytes) -> None:
    with WebStore(data_dir) as web:
        token, _ = web.create_invite(board_id)
    page = client.get(f"/pair/{token}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce, page.text[:300]
    done = client.post(f"/pair/{token}", data={"nonce": nonce.group(1), "name": "bench"})
    assert done.status_code == 303, done.text[:300]


async def _pair_async(client: httpx.AsyncClient, token: str, name: str) -> None:
    page = await client.get(f"/pair/{token}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce, page.text[:300]
    done = await client.post(f"/pair/{token}", data={"nonce": nonce.group(1), "name": name})
    assert done.status_code == 303, done.text[:300]


def _timed(client: httpx.Client, path: str) -> tuple[list[float], int]:
    times = []
    size = 0
    for _ in range(REQUESTS):
        t0 = time.perf_counter()
        response = client.get(path)
        times.append(time.perf_counter() - t0)
        assert response.status_code == 200, response.status_code
        size = len(response.content) + sum(len(k) + len(v) + 4
                                           for k, v in response.headers.raw)
    return sorted(times), size


async def _listen(client: httpx.AsyncClient, board_hex: str, arrivals: dict[str, list[float]],
                  opened: list[int], task_status: trio.TaskStatus[None]) -> None:
    """Hold one phone's live stream; when each item's event came (``time.time()``)."""
    async with client.stream("GET", f"/b/{board_hex}/live") as response:
        assert response.status_code == 200, response.status_code
        opened.append(1)
        task_status.started()
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                t = time.time()
                item = re.search(r'"item": "([^"]*)"', line)
                if item:
                    arrivals[item.group(1)].append(t)


async def _until(arrivals: dict[str, list[float]], ids: list[str]) -> None:
    with trio.fail_after(TIMEOUT):
        while any(len(arrivals[i]) < PHONES for i in ids):
            await trio.sleep(0.01)


async def _live(url: str, data_dir: Path, board_id: bytes, node: Child, poster: Child
                ) -> dict[str, Any]:
    with WebStore(data_dir) as web:
        token, _ = web.create_invite(board_id, uses=PHONES)
    arrivals: dict[str, list[float]] = defaultdict(list)
    opened: list[int] = []
    async with AsyncExitStack() as stack:
        phones = [await stack.enter_async_context(httpx.AsyncClient(
            base_url=url, timeout=TIMEOUT)) for _ in range(PHONES)]
        for i, phone in enumerate(phones):
            await _pair_async(phone, token, f"phone {i}")
        async with trio.open_nursery() as nursery:
            for phone in phones:
                await nursery.start(_listen, phone, board_id.hex(), arrivals, opened)
            with trio.fail_after(TIMEOUT):  # the poster connected to the web node
                while True:
                    node.send({"op": "peers"})
                    peers = await trio.to_thread.run_sync(
                        lambda: node.read(lambda v: "peers" in v))
                    if peers["peers"]:
                        break
                    await trio.sleep(0.1)
            async def post(n: int, tag: str) -> list[tuple[str, float]]:
                poster.send({"op": "post_ids", "n": n, "gap": GAP, "tag": tag})
                done = await trio.to_thread.run_sync(
                    lambda: poster.read(lambda v: "posted_ids" in v))
                return [(i, t) for i, t in done["posted_ids"]]

            warm = await post(1, "warm")  # connected and in sync, end to end
            await _until(arrivals, [i for i, _ in warm])
            node.send({"op": "stall", "on": True})
            t0 = time.perf_counter()
            posted = await post(POSTS, "timed")
            await _until(arrivals, [i for i, _ in posted])
            span = time.perf_counter() - t0
            node.send({"op": "stall", "on": False})
            stall = await trio.to_thread.run_sync(lambda: node.read(lambda v: "stall_s" in v))
            memory = rss_mib(node.proc.pid)
            nursery.cancel_scope.cancel()
    latency = sorted(t - at for i, at in posted for t in arrivals[i])
    last = sorted(max(arrivals[i]) - at for i, at in posted)
    return {"latency": latency, "last": last, "rss": memory, "stall": stall, "span": span,
            "streams": len(opened)}


def _q(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def run_web_benchmarks(report: Report, root: Path, n: int) -> None:
    """Serve a board of ``n`` needs from a child node: time its pages and live updates."""
    data_dir = root / "web"
    poster_dir = root / "web-poster"
    secret = new_board_secret()
    keys = derive_board_keys(secret)
    raws = [e.raw for e in make_feed(keys, AuthorKey.generate(), n)]
    with open_store(data_dir) as store:
        board = store.join(Invite(secret, "bench"))
        board.receive(raws)
        board.save_snapshot()
        item_id = board.items()[n // 2].id
        board_id = bytes(board.id)
    with open_store(poster_dir) as store:  # (in sync already: no initial sync to wait for)
        store.join(Invite(secret, "bench")).receive(raws)
    node = Child("web_node", str(data_dir))
    poster = None
    try:
        started = node.read()
        with httpx.Client(base_url=started["web"], timeout=TIMEOUT) as phone:
            _pair(phone, data_dir, board_id)
            board_times, board_bytes = _timed(phone, f"/b/{board_id.hex()}")
            item_times, item_bytes = _timed(phone, f"/b/{board_id.hex()}/i/{item_id}")
        memory = rss_mib(node.proc.pid)
        poster = Child("sync_node", str(poster_dir), str(started["port"]), "idle")
        poster.read()
        live = trio.run(_live, started["web"], data_dir, board_id, node, poster)
    finally:
        for child in (poster, node):
            if child is not None and child.proc.poll() is None:
                child.stop()
    for what, times, size in (("board page (first of its pages)", board_times, board_bytes),
                              ("item page", item_times, item_bytes)):
        report.add(Figure(f"web: {what} on a {n:,}-item board, median", statistics.median(times)
                          * 1e3, "ms", "< 30 ms", f"p99 {times[int(len(times) * 0.99)] * 1e3:.1f}"
                          f" ms, {REQUESTS} requests over a real socket; {size:,} B"))
    report.add(Figure("web: node with the web app, resident memory", memory, "MiB",
                      "< 150 MB", f"after {2 * REQUESTS} pages of a {n:,}-item board"))
    lat, last = live["latency"], live["last"]
    report.add(Figure(f"web live: post on another node to event at {PHONES} phones, median",
                      statistics.median(lat) * 1e3, "ms", "< 100 ms",
                      f"p90 {_q(lat, 0.9) * 1e3:.1f} ms, p99 {_q(lat, 0.99) * 1e3:.1f} ms; "
                      f"last phone: median {statistics.median(last) * 1e3:.1f} ms, "
                      f"p99 {_q(last, 0.99) * 1e3:.1f} ms; {POSTS} posts in "
                      f"{live['span']:.1f} s, {len(lat):,} events"))
    report.add(Figure(f"web live: node with {live['streams']} streams open, resident memory",
                      live["rss"], "MiB", "< 150 MB", f"{n:,}-item board, after the posts"))
    steps = ", ".join(f"{name} {s * 1e3:.1f} ms" for name, s in live["stall"]["longest_steps_s"])
    report.add(Figure("web live: web node's longest event-loop stall meanwhile",
                      live["stall"]["stall_s"] * 1e3, "ms", "",
                      f"1 ms ticker, {live['stall']['ticks']:,} ticks; longest steps: {steps}"))
