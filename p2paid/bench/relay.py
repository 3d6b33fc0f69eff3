"""Relay figures for ``p2paid bench``: ingest rate, fan-out to 50 readers, idle memory.

The relay runs as its own process (``p2paid relay``); the writer is a real node
process posting through it; the 50 readers are light clients in one process
(a Noise channel and a sync session each, holding envelopes in memory), since
50 full nodes would measure the readers' machine, not the relay. They connect from
127.0.N.1 addresses, four per address, as clients on separate machines would.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from p2paid.bench.main import Figure, Report
from p2paid.bench.net import _NODE, _Child
from p2paid.board.store import open_store
from p2paid.core.envelope import Envelope
from p2paid.core.replication import DEFAULT_BATCH_BYTES
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.storage.sqlite import Database

__all__ = ["run_relay_benchmarks"]

perf = time.perf_counter

# Light clients: N connections to a relay for one board; record when each envelope arrives.
_READERS = r"""
import json, sys, time, trio
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.feed import FeedHead
from p2paid.core.replication import BoardAccess, Received, SyncSession
from p2paid.core.wire import NEED_DATA, HandshakeComplete, MessageReceived, SecureChannel

class Reader:
    role = "node"
    def __init__(self, board): self.board, self.feed, self.arrivals = board, {}, {}
    def boards(self): return [BoardAccess(self.board, None)]
    def accepts(self, b): return None
    def vector(self, b):
        return {a: max(s) for a, s in self.feed.items()}
    def heads(self, b):  # (a reader keeps no hashes: its vector never proves a fork)
        return {a: FeedHead(max(s), bytes(32)) for a, s in self.feed.items()}
    def hash_at(self, b, author, seq): return None
    def forked(self, b): return {}
    def fork_evidence(self, b, author): return None
    def record_fork(self, b, first, second): return False
    def read(self, b, author, after, max_bytes): return []
    def receive(self, b, envelopes):
        now = time.perf_counter()
        for raw in envelopes:
            author, seq = raw[33:65], int.from_bytes(raw[65:73], "big")
            self.feed.setdefault(author, set()).add(seq)
            self.arrivals[seq] = now
        return Received(len(envelopes))

async def client(address, reader, ready, local):
    # Four readers per local address, as members on their own machines (a relay caps
    # connections and handshakes per address).
    stream = await trio.open_tcp_stream(address.host, address.port, local_address=local)
    channel = SecureChannel(True, X25519PrivateKey.generate(), expected_remote=address.key)
    session = None
    await stream.send_all(channel.data_to_send())
    while True:
        data = await stream.receive_some(1 << 16)
        if not data:
            return
        channel.receive_data(data)
        while True:
            event = channel.next_event()
            if event is NEED_DATA:
                break
            if isinstance(event, HandshakeComplete):
                session = SyncSession(reader, initiator=True, to_relay=True,
                                      handshake_hash=channel.handshake_hash)
                for m in session.start():
                    channel.send(m)
                ready.append(1)
            elif isinstance(event, MessageReceived):
                for m in session.handle(event.message):
                    channel.send(m)
        out = channel.data_to_send()
        if out:
            await stream.send_all(out)

async def main(address, board_hex, count):
    address = RelayAddress.parse(address)
    readers = [Reader(bytes.fromhex(board_hex)) for _ in range(int(count))]
    ready = []
    async with trio.open_nursery() as nursery:
        for i, r in enumerate(readers):
            nursery.start_soon(client, address, r, ready, f"127.0.{10 + i // 4}.1")
        while len(ready) < len(readers):
            await trio.sleep(0.05)
        print(json.dumps({"ready": len(ready)}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        print(json.dumps({"arrivals": [r.arrivals for r in readers]}), flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
        nursery.cancel_scope.cancel()

trio.run(main, *sys.argv[1:4])
"""


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


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


def _start_relay(root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "p2paid", "--data-dir", str(root / "relay"),
                             "relay", "--listen", "127.0.0.1:0", "--public", "127.0.0.1",
                             "--rate-kib", "1048576"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("relay address: "):
        raise RuntimeError("the relay did not start")
    return proc, line.split(": ", 1)[1].strip()


def _fan_out(report: Report, root: Path, readers: int, posts: int) -> None:
    relay, address = _start_relay(root)
    writer_dir = root / "writer"
    try:
        with open_store(writer_dir) as store:
            board = store.create_board("fan-out")
            board.post_need("first")  # the writer's feed exists before readers subscribe
            store.add_relay(address)
            board_id = board.id.hex()
        clients = _Child(_READERS, address, board_id, str(readers))
        clients.read(lambda v: "ready" in v)
        writer = _Child(_NODE, str(writer_dir), "-", "idle")
        writer.read()
        time.sleep(1.5)  # the writer dials the relay and syncs its first envelopes
        writer.send({"op": "post", "tag": "lat", "n": 100, "gap": 0.01, "concurrency": 1})
        lat_stamps = writer.read(lambda v: "posted" in v)["posted"]
        writer.send({"op": "post", "tag": "fan", "n": posts, "gap": 0, "concurrency": 32})
        fan_stamps = writer.read(lambda v: "posted" in v)["posted"]
        time.sleep(2.0)
        clients.send({"op": "arrivals"})
        arrivals = clients.read(lambda v: "arrivals" in v)["arrivals"]
        rss = _rss_mib(relay.pid)
        writer.stop()
        clients.send({"op": "stop"})
        clients.proc.wait(timeout=30)
    finally:
        relay.terminate()
        relay.wait(timeout=30)
    _report_fan_out(report, readers, posts, lat_stamps, fan_stamps, arrivals, rss)


def _report_fan_out(report: Report, readers: int, posts: int, lat: dict[str, float],
                    fan: dict[str, float], arrivals: list[dict[str, float]], rss: float) -> None:
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
    report.add(Figure(f"relay fan-out: {posts:,} posts to each of {readers} readers",
                      statistics.median(rates) if rates else 0.0, "posts/s",
                      "", f"per reader (median); {complete}/{readers} readers got all"))
    report.add(Figure("  median latency writer -> reader through the relay",
                      statistics.median(latencies) * 1e3 if latencies else 0.0, "ms", "",
                      f"{len(latencies):,} deliveries of 100 paced posts"))
    report.add(Figure(f"  relay memory after serving {readers} readers", rss, "MiB"))


def _idle_memory(report: Report, root: Path, connections: int) -> None:
    relay, address = _start_relay(root / "idle")
    try:
        board_id = bytes(32).hex()
        clients = _Child(_READERS, address, board_id, str(connections))
        clients.read(lambda v: "ready" in v)
        time.sleep(2.0)
        rss = _rss_mib(relay.pid)
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

