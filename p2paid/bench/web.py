"""``p2paid bench --only web``: the web interface served by a node, as phones meet it.

A real ``p2paid run --web`` child on a board of N items, a phone paired through the
real pairing pages, then: response times of the board page (first page) and of an
item page over a real socket on this machine, their bytes, and the node's resident
memory with the web app.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from p2paid.bench.child import rss_mib
from p2paid.bench.main import Figure, Report, make_feed
from p2paid.board.store import open_store
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import derive_board_keys, new_board_secret
from p2paid.web.webstore import WebStore

__all__ = ["run_web_benchmarks"]

REQUESTS = 200


def _pair(client: httpx.Client, data_dir: Path, board_id: bytes) -> None:
    with WebStore(data_dir) as web:
        token, _ = web.create_invite(board_id)
    page = client.get(f"/pair/{token}")
    nonce = re.search(r'name="nonce" value="([^"]+)"', page.text)
    assert nonce, page.text[:300]
    done = client.post(f"/pair/{token}", data={"nonce": nonce.group(1), "name": "bench"})
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


def run_web_benchmarks(report: Report, root: Path, n: int) -> None:
    """Serve a board of ``n`` needs from a child node and time its pages."""
    data_dir = root / "web"
    secret = new_board_secret()
    keys = derive_board_keys(secret)
    from p2paid.core.invite import Invite

    with open_store(data_dir) as store:
        board = store.join(Invite(secret, "bench"))
        board.receive([e.raw for e in make_feed(keys, AuthorKey.generate(), n)])
        board.save_snapshot()
        item_id = board.items()[n // 2].id
        board_id = bytes(board.id)
    log = root / "web-node.log"
    with log.open("wb") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "run", "--no-mdns",
             "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        found = None
        while found is None and time.monotonic() < deadline and child.poll() is None:
            found = re.search(r"members' phones at (http://\S+) ", log.read_text())
            time.sleep(0.05)
        if found is None:
            raise RuntimeError(f"the node did not serve its web interface:\n{log.read_text()}")
        with httpx.Client(base_url=found.group(1), timeout=30) as phone:
            _pair(phone, data_dir, board_id)
            board_times, board_bytes = _timed(phone, f"/b/{board_id.hex()}")
            item_times, item_bytes = _timed(phone, f"/b/{board_id.hex()}/i/{item_id}")
        memory = rss_mib(child.pid)
    finally:
        child.terminate()
        child.wait(timeout=30)
    for what, times, size in (("board page (first of its pages)", board_times, board_bytes),
                              ("item page", item_times, item_bytes)):
        report.add(Figure(f"web: {what} on a {n:,}-item board, median", statistics.median(times)
                          * 1e3, "ms", "< 30 ms", f"p99 {times[int(len(times) * 0.99)] * 1e3:.1f}"
                          f" ms, {REQUESTS} requests over a real socket; {size:,} B"))
    report.add(Figure("web: node with the web app, resident memory", memory, "MiB",
                      "< 150 MB", f"after {2 * REQUESTS} pages of a {n:,}-item board"))
