"""Network figures for ``p2paid bench``: initial sync, reconnect, live posts, idle memory.

Nodes run in separate processes on 127.0.0.1 (as two people's laptops would,
minus the radio). Times are taken with ``time.perf_counter``, which on Linux is
the system-wide monotonic clock, so the parent can subtract a child's stamps.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from p2paid.bench.main import Figure, Report, make_feed
from p2paid.board.store import open_store
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret
from p2paid.core.replication import SyncSession
from p2paid.core.wire import NEED_DATA, HandshakeComplete, MessageReceived, SecureChannel
from p2paid.node.replica import StoreReplica

__all__ = ["run_network_benchmarks"]

perf = time.perf_counter

# A node process: serves until stdin closes, then prints its stats as JSON.
_NODE = r"""
import json, sys, time, trio
from p2paid.node.node import open_node

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

async def main(data_dir, peer, live):
    peers = [("127.0.0.1", int(peer))] if peer != "-" else []
    async with open_node(data_dir, listen=("127.0.0.1", 0), mdns=False, peers=peers) as node:
        board = node.boards()[0]
        print(json.dumps({"port": node.listen_address[1], "rss_mib": rss_mib()}), flush=True)
        async with trio.open_nursery() as nursery:
            if live:
                async def events():
                    async for event in board.events():
                        if event.item is not None and not event.local:
                            print(json.dumps({"event": event.item.title, "t": time.perf_counter()}),
                                  flush=True)
                nursery.start_soon(events)
            async def commands():
                while True:
                    line = await trio.to_thread.run_sync(sys.stdin.readline)
                    if not line:
                        nursery.cancel_scope.cancel()
                        return
                    cmd = json.loads(line)
                    if cmd["op"] == "post":
                        stamps = await post(board, cmd)
                        print(json.dumps({"posted": stamps}), flush=True)
                    elif cmd["op"] == "rss":
                        await trio.sleep(cmd.get("idle", 0))
                        print(json.dumps({"rss_mib": rss_mib()}), flush=True)
            nursery.start_soon(commands)
        stats = {"stats": node.replica.stats, "peers": len(node.peers())}
        print(json.dumps(stats), flush=True)

async def post(board, cmd):
    stamps = {}
    async def one(i):
        title = f"live {cmd['tag']} {i}"
        stamps[title] = time.perf_counter()
        await board.post_need(title, category="water", quantity=5, unit="litres")
    if cmd["concurrency"] == 1:
        for i in range(cmd["n"]):
            await one(i)
            await trio.sleep(cmd["gap"])
    else:
        limit = trio.CapacityLimiter(cmd["concurrency"])
        async def limited(i):
            async with limit:
                await one(i)
        async with trio.open_nursery() as n:
            for i in range(cmd["n"]):
                n.start_soon(limited, i)
    return stamps

trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3] == "live")
"""

# The receiving side of the initial sync: times from dialling to data applied.
_RECEIVER = r"""
import json, sys, time, trio
from p2paid.node.node import open_node
from p2paid.board.readmodel import section_object_id

def timed(calls, fn):
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t)
    return wrapper

async def ticker(gaps):
    last = time.perf_counter()
    while True:
        await trio.sleep(0.001)
        now = time.perf_counter()
        gaps.append(now - last - 0.001)
        last = now

async def main(data_dir, port, total, author_hex, item_id, stall):
    async with open_node(data_dir, listen=None, mdns=False) as node, \
            trio.open_nursery() as nursery:
        board = node.boards()[0]
        doc = board.board.load()
        gaps, receives, flushes = [], [], []
        node.replica.receive = timed(receives, node.replica.receive)
        node.replica.flush = timed(flushes, node.replica.flush)
        sys.stdin.readline()
        t0 = time.perf_counter()
        if stall == "stall":
            nursery.start_soon(ticker, gaps)
        node.connect("127.0.0.1", int(port))
        first = None
        while board.board.applied_count < int(total):
            await node.wait_changed()
            if first is None and node.replica.stats["received"]:
                first = time.perf_counter() - t0
        applied = time.perf_counter() - t0
        nursery.cancel_scope.cancel()
        doc = board.board.load()
        am = doc.automerge
        author = bytes.fromhex(author_hex)
        section = section_object_id(author, doc.start_ops[author])
        needs = am.get(section, "needs")[1]
        title = am.get(am.get(needs, item_id)[1], "title")[0][1]
        readable = time.perf_counter() - t0
        print(json.dumps({"applied_s": applied, "readable_s": readable, "first_s": first,
                          "title": title, "stats": node.replica.stats,
                          "bytes_in": sum(p.bytes_in for p in node.peers()),
                          "stall_s": max(gaps, default=0.0),
                          "stalls_s": sorted(gaps)[-5:],
                          "receive_calls_s": receives, "flush_calls_s": flushes}), flush=True)

trio.run(main, *sys.argv[1:7])
"""


class _Child:
    def __init__(self, script: str, *args: str, quiet: bool = False) -> None:
        """``quiet``: discard the child's log (stderr), e.g. a victim of an attack."""
        self.proc = subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True,
                                     stderr=subprocess.DEVNULL if quiet else None)

    def send(self, value: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(value) + "\n")
        self.proc.stdin.flush()

    def read(self, until: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("benchmark child exited early")
            value: dict[str, Any] = json.loads(line)
            if until(value):
                return value

    def stop(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        result = self.read(lambda v: "stats" in v)
        self.proc.wait(timeout=30)
        return result


def _populate(root: Path, n: int, authors: int) -> tuple[Invite, Path, str, str]:
    """A data dir holding ``n`` needs by ``authors`` authors; returns invite, dir, last ids."""
    secret = new_board_secret()
    keys = derive_board_keys(secret)
    invite = Invite(secret, "bench")
    feeds = [make_feed(keys, AuthorKey.generate(), n // authors, a * n) for a in range(authors)]
    data_dir = root / "a"
    with open_store(data_dir) as store:
        board = store.join(invite)
        board.receive([e.raw for feed in feeds for e in feed])
        last = feeds[-1][-1]
        author = last.author.hex()
        item = next(i for i in board.items() if i.author == author and i.title.endswith(
            f"#{(len(feeds) - 1) * n + n // authors - 1}: warm winter coats for a family of four"))
        board.save_snapshot()
    return invite, data_dir, author, item.id


def _initial_sync(report: Report, root: Path, n: int, reps: int, stall: bool) -> Path:
    invite, a_dir, author, item_id = _populate(root, n, 1)
    sender = _Child(_NODE, str(a_dir), "-", "idle")
    port = sender.read()["port"]
    runs = []
    for rep in range(reps):  # a fresh, empty peer each time; the median is reported
        b_dir = root / f"b{rep}"
        with open_store(b_dir) as store:
            store.join(invite)
        runs.append(_receive_once(b_dir, port, n, author, item_id, "-"))
    stalls = []
    for rep in range(reps if stall else 0):  # the same, with a 1 ms ticker in the receiver
        b_dir = root / f"stall{rep}"
        with open_store(b_dir) as store:
            store.join(invite)
        stalls.append(_receive_once(b_dir, port, n, author, item_id, "stall"))
    sent = sender.stop()
    runs.sort(key=lambda r: float(r["applied_s"]))
    result = runs[len(runs) // 2]
    stats, sstats = result["stats"], sent["stats"]
    spread = ", ".join(f"{r['applied_s']:.2f}" for r in runs)
    report.add(Figure(f"initial sync of {n:,} needs to an empty peer: applied", result["applied_s"],
                      "s", "<= 0.6 s", f"median of {reps} ({spread} s); peers: JS automerge-repo "
                      "1.6-2.1 s, Python 0.64 s (../shared/bench)"))
    report.add(Figure("  ... and one need read back from the document", result["readable_s"], "s"))
    report.add(Figure("  stage: dial + handshake + hello until the first batch stored",
                      result["first_s"] or 0.0, "s"))
    report.add(Figure("  stage: receiver verify+decrypt+store+apply (CPU in receive)",
                      stats["receive_s"], "s", "", f"{stats['received']:,} envelopes"))
    report.add(Figure("  stage: sender reading feeds from the store (all runs)", sstats["read_s"],
                      "s"))
    report.add(Figure("  bytes on the wire to the receiver", result["bytes_in"] / 1e6, "MB",
                      "", f"{result['bytes_in'] / n:.0f} B per need (signed + encrypted)"))
    if stalls:
        _report_stall(report, n, stalls)
    return a_dir


def _receive_once(b_dir: Path, port: int, n: int, author: str, item_id: str,
                  stall: str) -> dict[str, Any]:
    receiver = _Child(_RECEIVER, str(b_dir), str(port), str(n), author, item_id, stall)
    receiver.send({"go": True})
    result = receiver.read()
    receiver.proc.wait(timeout=30)
    return result


def _report_stall(report: Report, n: int, runs: list[dict[str, Any]]) -> None:
    """The longest time the receiver's event loop could not run a 1 ms ticker."""
    runs.sort(key=lambda r: float(r["stall_s"]))
    result = runs[len(runs) // 2]
    spread = ", ".join(f"{r['stall_s'] * 1e3:.0f}" for r in runs)
    report.add(Figure(f"longest event-loop stall on the receiver, sync of {n:,}",
                      result["stall_s"] * 1e3, "ms", "< 50 ms",
                      f"median of {len(runs)} ({spread} ms); next longest "
                      + ", ".join(f"{s * 1e3:.0f}" for s in result["stalls_s"][-2::-1][:3])))
    receives = result["receive_calls_s"]
    flushes = result["flush_calls_s"]
    report.add(Figure("  longest replica.receive call (verify..store)",
                      max(receives, default=0.0) * 1e3, "ms", "",
                      f"{len(receives)} calls, {sum(receives):.2f} s in all"))
    report.add(Figure("  longest replica.flush call (Automerge, read model)",
                      max(flushes, default=0.0) * 1e3, "ms", "",
                      f"{len(flushes)} calls, {sum(flushes):.2f} s in all"))


def _flights(a: SecureChannel, b: SecureChannel, ra: StoreReplica,
             rb: StoreReplica) -> tuple[int, int]:
    """Deliver bytes between two sans-I/O endpoints until quiet; count flights and bytes."""
    flights = total = 0
    pending = {id(a): a.data_to_send(), id(b): b.data_to_send()}
    sessions: dict[int, SyncSession] = {}
    ends = [(a, b, rb), (b, a, ra)]
    while any(pending.values()):
        for src, dst, replica in ends:
            data = pending[id(src)]
            if not data:
                continue
            pending[id(src)] = b""
            flights += 1
            total += len(data)
            dst.receive_data(data)
            while True:
                event = dst.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, HandshakeComplete):
                    session = sessions[id(dst)] = SyncSession(
                        replica, initiator=dst.initiator, handshake_hash=event.handshake_hash)
                    for message in session.start():
                        dst.send(message)
                elif isinstance(event, MessageReceived):
                    for message in sessions[id(dst)].handle(event.message):
                        dst.send(message)
            pending[id(dst)] += dst.data_to_send()
    return flights, total


def _in_sync(report: Report, root: Path, n: int) -> None:
    invite, a_dir, _, _ = _populate(root / "insync", n, 100)
    b_dir = root / "insync" / "b"
    with open_store(a_dir) as a, open_store(b_dir) as b:
        b.join(invite).receive(list(a.board().envelopes()))
        ca = SecureChannel(True, X25519PrivateKey.generate())
        cb = SecureChannel(False, X25519PrivateKey.generate())
        t0 = perf()
        flights, total = _flights(ca, cb, StoreReplica(a), StoreReplica(b))
        elapsed = perf() - t0
    report.add(Figure(f"already in sync ({n:,} changes, 100 authors): bytes on the wire",
                      total, "B", "<= 1 KB", "handshake included, both directions"))
    report.add(Figure("  round trips until the link is quiet", (flights + 1) // 2, "",
                      "<= 3", f"{flights} flights; {elapsed * 1e3:.1f} ms in process"))


def _live(report: Report, a_dir: Path, root: Path) -> None:
    b_dir = root / "live-b"
    with open_store(a_dir) as store:
        invite = store.board().invite()
    with open_store(a_dir) as source, open_store(b_dir) as store:
        store.join(invite).receive(list(source.board().envelopes()))
    a = _Child(_NODE, str(a_dir), "-", "idle")
    port = a.read()["port"]
    b = _Child(_NODE, str(b_dir), str(port), "live")
    b.read()
    time.sleep(1.0)  # connected and in sync
    lat = _post_and_collect(a, b, {"tag": "lat", "n": 200, "gap": 0.01, "concurrency": 1})
    report.add(Figure("live: one post on A until the event on B, median", statistics.median(
        lat["latency"]) * 1e3, "ms", "< 10 ms", f"p90 {_p90(lat['latency']) * 1e3:.1f} ms, "
        "200 posts on a board of 10,000"))
    burst = _post_and_collect(a, b, {"tag": "burst", "n": 3000, "gap": 0, "concurrency": 64})
    report.add(Figure("live: sustained posts A -> B", burst["rate"], "posts/s", ">= 1,000",
                      "3,000 posts, 64 in flight, each durable on A and applied on B"))
    for name, child in (("A", a), ("B", b)):
        child.send({"op": "rss", "idle": 3})
        rss = child.read(lambda v: "rss_mib" in v)["rss_mib"]
        report.add(Figure(f"idle node {name} holding a 10,000+-item board: resident memory",
                          rss, "MiB", "< 100 MB"))
    a.stop()
    b.stop()


def _post_and_collect(a: _Child, b: _Child, cmd: dict[str, Any]) -> dict[str, Any]:
    a.send({"op": "post", **cmd})
    arrivals: dict[str, float] = {}
    stamps = a.read(lambda v: "posted" in v)["posted"]
    while len(arrivals) < cmd["n"]:
        event = b.read(lambda v: "event" in v)
        if event["event"].startswith(f"live {cmd['tag']} "):
            arrivals[event["event"]] = event["t"]
    latency = [arrivals[t] - stamps[t] for t in stamps]
    span = max(arrivals.values()) - min(stamps.values())
    return {"latency": latency, "rate": cmd["n"] / span}


def _p90(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.9)]


def run_network_benchmarks(report: Report, root: Path, n: int, selected: set[str]) -> None:
    """The live-sync figures (issue: live sync); each in its own processes."""
    a_dir = None
    if selected & {"sync", "live", "stall"}:
        a_dir = _initial_sync(report, root / "sync", n, 3, "stall" in selected)
    if "insync" in selected:
        _in_sync(report, root, n)
    if "live" in selected and a_dir is not None:
        _live(report, a_dir, root)
