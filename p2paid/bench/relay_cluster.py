"""Relay-cluster figures for ``p2paid bench --only relaypg``: PostgreSQL relays, measured in
the same run as the SQLite relay's (``--only relay,fanout,relaymem,relaypg``).

A throwaway PostgreSQL server is started for the run (:mod:`p2paid.bench.pgserver`), or
``P2PAID_BENCH_PG`` names a database to use. Figures:

* ingest of one author's 10,000 envelopes by one process (a second relay process of the
  cluster listening), and the ingest rate of 1, 2 and 4 processes at once, each its own
  board (:mod:`p2paid.bench.relay_ingester`);
* fan-out from a writer on process 1 to 50 readers on process 2;
* 2,000 idle connections over two processes: memory of each.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

from p2paid.bench.child import Child, rss_mib
from p2paid.bench.main import Figure, Report
from p2paid.bench.relay import fan_out, start_relay

__all__ = ["run_cluster_benchmarks"]


def _database() -> tuple[str, object | None]:
    """A fresh, migrated database URL, and the server to destroy afterwards (or None)."""
    from p2paid.storage.pg.schema import migrate

    url = os.environ.get("P2PAID_BENCH_PG")
    server = None
    if url is None:
        from p2paid.bench.pgserver import PgCluster

        server = PgCluster()
        server.start()
        url = server.new_database()
    migrate(url)
    return url, server


def _key_file(root: Path) -> Path:
    from p2paid.core.identity import NodeKey
    from p2paid.relay.keyfile import encode_key

    root.mkdir(parents=True, exist_ok=True)
    path = root / "relay.key"
    path.write_text(encode_key(NodeKey.generate()) + "\n")
    os.chmod(path, 0o600)
    return path


def _processes(root: Path, url: str, count: int, extra: list[str] | None = None
               ) -> list[tuple[subprocess.Popen[str], str]]:
    key = _key_file(root)
    return [start_relay(root / f"p{i}", ["--store", url, "--key-file", str(key), *(extra or [])])
            for i in range(count)]


def _stop(procs: list[tuple[subprocess.Popen[str], str]]) -> None:
    for proc, _ in procs:
        proc.terminate()
    for proc, _ in procs:
        proc.wait(timeout=30)


def _ingest(url: str, processes: int, count: int) -> tuple[float, float]:
    """``processes`` ingesters at once, each ``count`` envelopes of its own board;
    (envelopes/s in all, seconds)."""
    children = [Child("relay_ingester", url, str(count)) for _ in range(processes)]
    for child in children:
        child.read(lambda v: "ready" in v)
    for child in children:
        child.send({"op": "go"})
    results = [child.read(lambda v: "end" in v) for child in children]
    for child in children:
        child.proc.wait(timeout=30)
    assert all(r["stored"] == count for r in results), results
    elapsed = max(r["end"] for r in results) - min(r["start"] for r in results)
    return processes * count / elapsed, elapsed


def run_cluster_benchmarks(report: Report, root: Path, quick: bool) -> None:
    try:
        url, server = _database()
    except Exception as exc:  # no PostgreSQL here: say so, measure the rest
        report.say(f"  relay on PostgreSQL: skipped ({exc})")
        return
    n = 1000 if quick else 10_000
    try:
        with tempfile.TemporaryDirectory(dir=root, prefix="pg-") as tmp:
            work = Path(tmp)
            listening = _processes(work / "listen", url, 1)
            try:
                rate, elapsed = _ingest(url, 1, n)
            finally:
                _stop(listening)
            report.add(Figure(f"PostgreSQL relay ingest of {n:,} envelopes of one author",
                              rate, "env/s", ">= 20,000", f"{elapsed:.2f} s; 1 writer process, "
                              "a 2nd relay process listening"))
            base = rate
            for count in (2, 4):
                rate, elapsed = _ingest(url, count, n)
                report.add(Figure(f"  ingest by {count} processes at once (a board each)",
                                  rate, "env/s", "", f"{rate / base:.2f} x 1 process; "
                                  f"{os.cpu_count()} cpu"))
            procs = _processes(work / "fan", url, 2, ["--max-connections", "2000"])
            try:
                fan_out(report, work / "fan", 50, 200 if quick else 1000, procs[0][1],
                        procs[1][1], [p.pid for p, _ in procs], "PostgreSQL relay (2 processes)")
            finally:
                _stop(procs)
            _idle(report, work / "idle", url, 200 if quick else 2000)
    finally:
        if server is not None:
            server.destroy()  # type: ignore[attr-defined]


#: Readers per child, started one child at a time (a relay takes at most 256 handshakes at
#: once, and a reader child does not retry).
_READERS_PER_CHILD = 200


def _idle(report: Report, root: Path, url: str, connections: int) -> None:
    procs = _processes(root, url, 2, ["--max-connections", str(connections)])
    clients: list[Child] = []
    try:
        board_id = bytes(32).hex()
        per_process = connections // 2
        for _, address in procs:
            for _ in range(max(1, per_process // _READERS_PER_CHILD)):
                child = Child("relay_readers", address, board_id,
                              str(min(per_process, _READERS_PER_CHILD)))
                child.read(lambda v: "ready" in v)
                clients.append(child)
        time.sleep(2.0)
        rss = [rss_mib(p.pid) for p, _ in procs]
    finally:
        for child in clients:
            child.send({"op": "arrivals"})
            child.read(lambda v: "arrivals" in v)
            child.send({"op": "stop"})
            child.proc.wait(timeout=60)
        _stop(procs)
    report.add(Figure(f"PostgreSQL relay memory, {connections:,} idle connections over 2 "
                      "processes", max(rss), "MiB", "", "per process: "
                      + ", ".join(f"{r:.0f}" for r in rss) + " MiB"))
