"""Network figures for ``p2paid bench``: initial sync, reconnect, live posts, idle memory.

Nodes run in separate processes on 127.0.0.1 (as two people's laptops would,
minus the radio): :mod:`p2paid.bench.sync_node` and :mod:`p2paid.bench.sync_receiver`.
Times are taken with ``time.perf_counter``, which on Linux is the system-wide
monotonic clock, so the parent can subtract a child's stamps.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.bench.child import Child
from p2paid.bench.main import Figure, Report, make_feed_and_document
from p2paid.board.checkpoint import seal_feed_checkpoint
from p2paid.board.store import open_store
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import Invite, derive_board_keys, new_board_secret
from p2paid.core.pair import ConnectionPair
from p2paid.node.replica import StoreReplica

__all__ = ["run_network_benchmarks"]

perf = time.perf_counter

def _populate(root: Path, n: int, authors: int, checkpoints: bool = True
              ) -> tuple[Invite, Path, str, str]:
    """A data dir holding ``n`` needs by ``authors`` authors, and (unless not
    ``checkpoints``) each author's checkpoint; returns invite, dir, last ids."""
    secret = new_board_secret()
    keys = derive_board_keys(secret)
    invite = Invite(secret, "bench")
    authors_keys = [AuthorKey.generate() for _ in range(authors)]
    made = [(key, *make_feed_and_document(keys, key, n // authors, a * n))
            for a, key in enumerate(authors_keys)]
    feeds = [feed for _, feed, _ in made]
    data_dir = root / "a"
    with open_store(data_dir) as store:
        board = store.join(invite)
        board.receive([e.raw for feed in feeds for e in feed])
        if checkpoints:  # as the authors' nodes seal them when idle (SPEC 8a)
            cipher = ChaCha20Poly1305(keys.content_key)
            board.receive([seal_feed_checkpoint(
                cipher=cipher, author_key=key, head=feed[-1], own=doc.automerge).raw
                for key, feed, doc in made])
        last = feeds[-1][-1]
        author = last.author.hex()
        item = next(i for i in board.items() if i.author == author and i.title.endswith(
            f"#{(len(feeds) - 1) * n + n // authors - 1}: warm winter coats for a family of four"))
        board.save_snapshot()
    return invite, data_dir, author, item.id


def _initial_sync(report: Report, root: Path, n: int, reps: int, stall: bool) -> Path:
    invite, a_dir, author, item_id = _populate(root, n, 1)
    sender = Child("sync_node", str(a_dir), "-", "idle")
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
                      "s", "<= 0.6 s", f"median of {reps} ({spread} s)"))
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
    receiver = Child("sync_receiver", str(b_dir), str(port), str(n), author, item_id, stall)
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
    steps = result.get("longest_steps_s") or []
    if steps:
        took = steps[0][1]
        report.add(Figure("  longest run of one task between checkpoints", took * 1e3, "ms", "",
                          ", ".join(f"{n} {t * 1e3:.0f} ms" for n, t in steps)))


def _in_sync(report: Report, root: Path, n: int) -> None:
    invite, a_dir, _, _ = _populate(root / "insync", n, 100)
    b_dir = root / "insync" / "b"
    with open_store(a_dir) as a, open_store(b_dir) as b:
        b.join(invite).receive(list(a.board().envelopes()))
        t0 = perf()
        pair = ConnectionPair(StoreReplica(a), StoreReplica(b))
        flights = pair.flights()
        total = pair.bytes_delivered
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
    a = Child("sync_node", str(a_dir), "-", "idle")
    port = a.read()["port"]
    b = Child("sync_node", str(b_dir), str(port), "live")
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


def _post_and_collect(a: Child, b: Child, cmd: dict[str, Any]) -> dict[str, Any]:
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
