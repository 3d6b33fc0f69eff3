"""The peer figures of ``p2paid bench``: automerge-repo's initial sync, measured in this run.

Two Python automerge-repo ``Repo``s (``automerge.repo``, shipped in the automerge package
p2paid already depends on) in two processes, over TCP on 127.0.0.1
(:mod:`p2paid.bench.peer_repo`): the sender holds a document of ``n`` needs shaped like
p2paid's, one change per need; an empty receiver dials it, finds the document and reads
one need back. When ``sync`` ran in the same run, the ratios p2paid / peer are printed
from the same report: the machines drift too much between runs to compare across them.
"""

from __future__ import annotations

from typing import Any

from p2paid.bench.child import Child
from p2paid.bench.main import Figure, Report

__all__ = ["run_peer_benchmark"]

#: The names of the sync figures (p2paid.bench.net) the ratios are taken against.
SYNC_APPLIED = "initial sync of {n:,} needs to an empty peer: applied"
SYNC_READABLE = "  ... and one need read back from the document"
SYNC_BYTES = "  bytes on the wire to the receiver"


def _find(report: Report, name: str) -> Figure | None:
    return next((f for f in report.figures if f.name == name), None)


def run_peer_benchmark(report: Report, n: int, reps: int = 3) -> None:
    """Initial sync of ``n`` needs between two automerge-repo peers; median of ``reps``."""
    sender = Child("peer_repo", "send", str(n), quiet=True)  # (it logs every disconnect)
    info = sender.read()
    runs: list[dict[str, Any]] = []
    for _ in range(reps):  # a fresh, empty receiver each time
        receiver = Child("peer_repo", "recv", str(info["port"]), info["url"], info["item_id"],
                         str(n))
        receiver.send({"go": True})
        result = receiver.read()
        receiver.proc.wait(timeout=30)
        assert result["complete"], f"the peer received {result['needs']} of {n} needs"
        runs.append(result)
    sender.stop()
    runs.sort(key=lambda r: float(r["readable_s"]))
    peer = runs[len(runs) // 2]
    spread = ", ".join(f"{r['readable_s']:.2f}" for r in runs)
    report.add(Figure(f"peer automerge-repo: initial sync of {n:,} needs: loaded",
                      peer["loaded_s"], "s", "", f"median of {reps} ({spread} s readable); "
                      f"1 change per need, unsigned; sender built it in {info['build_s']:.1f} s"))
    report.add(Figure("  peer: ... and one need read back from the document", peer["readable_s"],
                      "s"))
    report.add(Figure("  peer: bytes on the wire to the receiver", peer["bytes_in"] / 1e6, "MB",
                      "", f"{peer['bytes_in'] / n:.0f} B per need, {peer['messages_in']} "
                      "messages (whole compressed document)"))
    ours_time = _find(report, SYNC_READABLE)
    ours_bytes = _find(report, SYNC_BYTES)
    if _find(report, SYNC_APPLIED.format(n=n)) and ours_time and ours_bytes:
        report.add(Figure("ratio p2paid/peer: time until applied and one need read",
                          ours_time.value / peer["readable_s"], "x", "",
                          f"{ours_time.value:.2f} s / {peer['readable_s']:.2f} s"))
        report.add(Figure("ratio p2paid/peer: bytes on the wire to the receiver",
                          ours_bytes.value * 1e6 / peer["bytes_in"], "x", "",
                          f"{ours_bytes.value:.2f} MB / {peer['bytes_in'] / 1e6:.2f} MB"))
