"""Relay figures for ``p2paid bench``: ingest rate, fan-out to 50 readers, idle memory.

The relay runs as its own process (``p2paid relay``); the writer is a real node
process posting through it (:mod:`p2paid.bench.sync_node`); the 50 readers are light
clients in one process (:mod:`p2paid.bench.relay_readers`: the library's connection
over a replica that keeps only arrival times), since 50 full nodes would measure the
readers' machine, not the relay. They connect from 127.0.N.1 addresses, four per
address, as clients on separate machines would.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2paid.bench.child import Child, rss_mib
from p2paid.bench.main import Figure, Report
from p2paid.board.store import open_store
from p2paid.core.envelope import Envelope
from p2paid.core.replication import DEFAULT_BATCH_BYTES
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.storage.sqlite import Database

__all__ = ["run_relay_benchmarks"]

perf = time.perf_counter

def _ingest(report: Report, single: list[Envelope], root: Path) -> None:
    db = Database(root / "relay-ingest")
    try:
        replica = RelayReplica.open(db, RelayLimits())
        batches: list[list[bytes]] = [[]]
        size = 0
        for env in single:
            if size + len(env.raw) > DEFAULT_BATCH_BYTES:
                batches.append([])
                size = 0
            batches[-1].append(env.raw)
            size += len(env.raw)
        board_id = single[0].board_id
        t0 = perf()
        stored = sum(replica.receive(board_id, batch).stored for batch in batches)
        elapsed = perf() - t0
    finally:
        db.close()
    assert stored == len(single)
    report.add(Figure(f"relay ingest of {len(single):,} envelopes of one author", stored / elapsed,
                      "env/s", ">= 20,000", f"{elapsed:.2f} s; signature + chain + store, "
                      "batches as a client sends them"))


def start_relay(root: Path, extra: list[str] | None = None
                ) -> tuple[subprocess.Popen[str], str]:
    """A ``p2paid relay`` process on 127.0.0.1 (port 0); ``(process, relay address)``."""
    proc = subprocess.Popen([sys.executable, "-m", "p2paid", "--data-dir", str(root / "relay"),
                             "relay", "--listen", "127.0.0.1:0", "--public", "127.0.0.1",
                             "--rate-kib", "1048576", *(extra or [])],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("relay address: "):
        raise RuntimeError("the relay did not start")
    return proc, line.split(": ", 1)[1].strip()


def _fan_out(report: Report, root: Path, readers: int, posts: int) -> None:
    relay, address = start_relay(root)
    try:
        fan_out(report, root, readers, posts, address, address, [relay.pid], "relay")
    finally:
        relay.terminate()
        relay.wait(timeout=30)


def fan_out(report: Report, root: Path, readers: int, posts: int, writer_address: str,
            reader_address: str, pids: list[int], label: str) -> None:
    """A node posts through ``writer_address``; ``readers`` light clients read through
    ``reader_address`` (another process of the same relay, or the same one)."""
    address = writer_address
    writer_dir = root / "writer"
    with open_store(writer_dir) as store:
        board = store.create_board("fan-out")
        board.post_need("first")  # the writer's feed exists before readers subscribe
        store.add_relay(address)
        board_id = board.id.hex()
    clients = Child("relay_readers", reader_address, board_id, str(readers))
    clients.read(lambda v: "ready" in v)
    writer = Child("sync_node", str(writer_dir), "-", "idle")
    writer.read()
    time.sleep(1.5)  # the writer dials the relay and syncs its first envelopes
    writer.send({"op": "post", "tag": "lat", "n": 100, "gap": 0.01, "concurrency": 1})
    lat_stamps = writer.read(lambda v: "posted" in v)["posted"]
    writer.send({"op": "post", "tag": "fan", "n": posts, "gap": 0, "concurrency": 32})
    fan_stamps = writer.read(lambda v: "posted" in v)["posted"]
    time.sleep(2.0)
    clients.send({"op": "arrivals"})
    arrivals = clients.read(lambda v: "arrivals" in v)["arrivals"]
    rss = max(rss_mib(pid) for pid in pids)
    writer.stop()
    clients.send({"op": "stop"})
    clients.proc.wait(timeout=30)
    _report_fan_out(report, readers, posts, lat_stamps, fan_stamps, arrivals, rss, label)


def _report_fan_out(report: Report, readers: int, posts: int, lat: dict[str, float],
                    fan: dict[str, float], arrivals: list[dict[str, float]], rss: float,
                    label: str) -> None:
    # Seqs: 1 = the section and "first", then the 100 latency posts, then the fan-out posts.
    lat_seqs = {2 + i: lat[f"live lat {i}"] for i in range(len(lat))}
    latencies = [float(a[str(seq)]) - t for a in arrivals for seq, t in lat_seqs.items()
                 if str(seq) in a]
    fan_first = 2 + len(lat)
    start = min(fan.values())
    rates = []
    complete = 0
    for a in arrivals:
        got = [float(t) for s, t in a.items() if int(s) >= fan_first]
        if len(got) == posts:
            complete += 1
            rates.append(posts / (max(got) - start))
    report.add(Figure(f"{label} fan-out: {posts:,} posts to each of {readers} readers",
                      statistics.median(rates) if rates else 0.0, "posts/s",
                      "", f"per reader (median); {complete}/{readers} readers got all"))
    report.add(Figure("  median latency writer -> reader through the relay",
                      statistics.median(latencies) * 1e3 if latencies else 0.0, "ms",
                      "" if label == "relay" else "< 20 ms",
                      f"{len(latencies):,} deliveries of 100 paced posts"))
    report.add(Figure(f"  relay memory after serving {readers} readers", rss, "MiB",
                      note="" if label == "relay" else "the larger process"))


def _idle_memory(report: Report, root: Path, connections: int) -> None:
    relay, address = start_relay(root / "idle")
    try:
        board_id = bytes(32).hex()
        clients = Child("relay_readers", address, board_id, str(connections))
        clients.read(lambda v: "ready" in v)
        time.sleep(2.0)
        rss = rss_mib(relay.pid)
        clients.send({"op": "arrivals"})
        clients.read(lambda v: "arrivals" in v)
        clients.send({"op": "stop"})
        clients.proc.wait(timeout=30)
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    report.add(Figure(f"relay memory with {connections} idle connections", rss, "MiB",
                      "< 150 MB"))


def run_relay_benchmarks(report: Report, single: list[Envelope], quick: bool,
                         selected: set[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="p2paid-bench-relay-") as tmp:
        root = Path(tmp)
        if "relay" in selected:
            _ingest(report, single, root)
        if "fanout" in selected:
            _fan_out(report, root, 50, 200 if quick else 1000)
        if "relaymem" in selected:
            _idle_memory(report, root, 200)
        if "relaypg" in selected:
            from p2paid.bench.relay_cluster import run_cluster_benchmarks

            run_cluster_benchmarks(report, root, quick)

