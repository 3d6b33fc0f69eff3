"""``p2paid bench``: measure the figures the project promises, next to raw ceilings.

Every figure is measured in this run on this machine, with the ceiling it is
bounded by (Automerge's own bulk load, one Ed25519 verify) measured in the
same run, because shared machines drift by +-25% between runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

from automerge.core import Document
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.automerge.rules import check_change
from p2paid.board.document import BoardDocument, SectionWriter, new_item_id
from p2paid.board.model import ItemKind, item_fields, now_ms
from p2paid.board.store import open_store
from p2paid.core.envelope import ZERO_HASH, Envelope, open_envelope, seal_envelope
from p2paid.core.feed import EMPTY_HEAD, verify_run
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import BoardKeys, Invite, derive_board_keys, new_board_secret
from p2paid.errors import UsageError

__all__ = ["BENCHMARKS", "run_benchmarks"]

#: What ``--only`` may name, in the order they run.
BENCHMARKS = ("apply", "open", "post", "sync", "stall", "insync", "live", "peer", "checkpoint",
              "web", "relay", "fanout", "relaymem", "relaypg", "attacks", "atrest")

perf = time.perf_counter


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: str = ""
    note: str = ""

    def line(self) -> str:
        v = f"{self.value:,.0f}" if abs(self.value) >= 100 else f"{self.value:,.2f}"
        goal = f"goal {self.goal}" if self.goal else ""
        return f"  {self.name:<58} {v:>12} {self.unit:<10} {goal:<14} {self.note}"


class Report:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.figures: list[Figure] = []

    def say(self, text: str) -> None:
        if not self.as_json:
            print(text, flush=True)

    def add(self, fig: Figure) -> None:
        self.figures.append(fig)
        self.say(fig.line())


def _need_fields(i: int) -> dict[str, str | int | None]:
    """Exactly what ``Board.post_need`` stores for such a need."""
    return item_fields(ItemKind.NEED, f"Need #{i}: warm winter coats for a family of four",
                       now=now_ms(), category="shelter", quantity=i % 7 + 1, unit="coats",
                       location="north camp", expires_in_days=14)


def make_feed(keys: BoardKeys, author: AuthorKey, n: int, start: int = 0) -> list[Envelope]:
    """``n`` envelopes, one need each, in one author's feed (as a peer would send them)."""
    return make_feed_and_document(keys, author, n, start)[0]


def make_feed_and_document(keys: BoardKeys, author: AuthorKey, n: int, start: int = 0
                           ) -> tuple[list[Envelope], BoardDocument]:
    """:func:`make_feed`, and the author's document that made it (for its checkpoints)."""
    doc = BoardDocument(author.public)
    cipher = ChaCha20Poly1305(keys.content_key)
    prev = ZERO_HASH
    out = []
    for i in range(n):
        fields = _need_fields(start + i)

        def edit(w: SectionWriter, f: dict[str, str | int | None] = fields) -> None:
            w.put_item(ItemKind.NEED, new_item_id(), f)

        written = doc.write(edit)
        assert written is not None
        _, change = written
        env = seal_envelope(board_id=keys.board_id, cipher=cipher, author_key=author,
                            seq=i + 1, prev=prev, change=change)
        prev = env.hash
        out.append(env)
    return out, doc


def _best(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = perf()
        fn()
        times.append(perf() - t0)
    return min(times)


def _ceilings(report: Report, single: list[Envelope], keys: BoardKeys) -> float:
    cipher = ChaCha20Poly1305(keys.content_key)
    changes = [open_envelope(e, cipher) for e in single]
    concat = b"".join(changes)
    t = _best(lambda: Document.load(concat), 3)
    load_rate = len(changes) / t
    report.add(Figure(f"ceiling: automerge Document.load of {len(changes):,} raw changes",
                      load_rate, "changes/s"))
    sample = single[: min(500, len(single))]
    def verify_each() -> None:
        for e in sample:
            e.verify_signature()

    t = _best(verify_each, 3)
    report.add(Figure("ceiling: Ed25519 verify (cryptography)", len(sample) / t, "verifies/s"))
    # Stage costs of the receive pipeline on the same envelopes.
    raws = [e.raw for e in single]
    n = len(raws)
    t = _best(lambda: [Envelope.decode(r) for r in raws], 3)
    report.add(Figure("stage: decode + hash", t / n * 1e6, "us/change"))
    t = _best(lambda: verify_run(EMPTY_HEAD, single), 3)
    report.add(Figure("stage: chain check + 1 signature per run", t / n * 1e6, "us/change"))
    t = _best(lambda: [check_change(e, open_envelope(e, cipher)) for e in single], 3)
    report.add(Figure("stage: decrypt + parse header + ownership check", t / n * 1e6,
                      "us/change"))
    return load_rate


def _apply(report: Report, root: Path, label: str, invite: Invite,
           envelopes: list[Envelope], goal: float, load_rate: float | None) -> Path:
    data_dir = root / label
    with open_store(data_dir) as store:
        board = store.join(invite)
        board.refresh()  # load the (empty) document before timing
        raws = [e.raw for e in envelopes]
        t0 = perf()
        result = board.receive(raws)
        elapsed = perf() - t0
        assert result.accepted == len(raws) and not result.rejected, result
        assert len(board.document.items()) == len(raws), "not all items readable"
    rate = len(raws) / elapsed
    note = f"{elapsed:.2f} s" + (f"; {rate / load_rate:.2f} x Document.load" if load_rate else "")
    report.add(Figure(f"apply {len(raws):,} envelopes ({label}) to an empty board",
                      rate, "changes/s", f">= {goal:,.0f}", note))
    return data_dir


_OPEN_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import p2paid
t1 = time.perf_counter()
with p2paid.open_store(sys.argv[1], create=False) as store:
    board = store.board()
    board.document
    t2 = time.perf_counter()
    rss = [l for l in open("/proc/self/status") if l.startswith("VmRSS:")][0].split()[1]
    items = board.items()
    t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "rss_kib": int(rss),
                  "list_s": t3 - t2, "items": len(items)}))
"""


def _open(report: Report, data_dir: Path) -> None:
    runs = []
    for _ in range(3):
        out = subprocess.run([sys.executable, "-c", _OPEN_PROBE, str(data_dir)],
                             capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out))
    best = min(runs, key=lambda r: r["open_s"])
    report.add(Figure(f"open a {best['items']:,}-item board from the store", best["open_s"],
                      "s", "< 0.5 s", f"(import p2paid {best['import_s']:.2f} s, not included)"))
    report.add(Figure("  resident memory of that process after open", best["rss_kib"] / 1024,
                      "MiB", "< 100 MB"))
    report.add(Figure(f"  list all {best['items']:,} items after open", best["list_s"], "s"))


def _post(report: Report, data_dir: Path, posts: int) -> None:
    with open_store(data_dir) as store:
        board = store.board()
        board.refresh()
        lat = []
        for i in range(posts):
            t0 = perf()
            board.post_need(f"Bench need {i}", category="water", quantity=5, unit="litres")
            lat.append(perf() - t0)
    lat.sort()
    report.add(Figure("post one need, durable commit included: median", statistics.median(lat)
                      * 1e3, "ms", "< 10 ms", f"p90 {lat[int(len(lat) * 0.9)] * 1e3:.1f} ms, "
                      f"{posts} posts"))


def run_benchmarks(*, quick: bool = False, as_json: bool = False, only: str | None = None) -> int:
    """Run the benchmarks and print figures (or JSON). Returns an exit status.

    Raises:
        UsageError: ``only`` names a benchmark that does not exist (nothing runs).
    """
    selected = {name.strip() for name in (only or ",".join(BENCHMARKS)).split(",")} - {""}
    unknown = sorted(selected - set(BENCHMARKS))
    if unknown or not selected:
        raise UsageError(f"no benchmark called {', '.join(map(repr, unknown)) or 'that'}; "
                         f"choose from: {', '.join(BENCHMARKS)}")
    n = 1000 if quick else 10_000
    authors = 100 if quick else 1000
    report = Report(as_json)
    meta: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpu",
        "python": platform.python_version(), "automerge": version("automerge"),
        "cryptography": version("cryptography"), "n": n,
    }
    report.say(f"p2paid bench: {meta['machine']}, Python {meta['python']}, automerge "
               f"{meta['automerge']}, N={n:,}")
    secret = new_board_secret()
    keys = derive_board_keys(secret)
    invite = Invite(secret, "bench")
    t0 = perf()
    single = make_feed(keys, AuthorKey.generate(), n)
    many = [e for a in range(authors)
            for e in make_feed(keys, AuthorKey.generate(), n // authors, a * n)]
    report.say(f"  (workload: {n:,} envelopes by 1 author and {len(many):,} by {authors:,} "
               f"authors, made in {perf() - t0:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="p2paid-bench-") as tmp:
        root = Path(tmp)
        load_rate = _ceilings(report, single, keys)
        if selected & {"apply", "open", "post"}:
            one = _apply(report, root, "1 author", invite, single, 10_000, load_rate)
            if "apply" in selected:
                _apply(report, root, f"{authors:,} authors", invite, many, 5_000, None)
            if "open" in selected:
                _open(report, one)
            if "post" in selected:
                _post(report, one, 50 if quick else 200)
        if selected & {"sync", "stall", "insync", "live"}:
            from p2paid.bench.net import run_network_benchmarks

            run_network_benchmarks(report, root, n, selected)
        if "peer" in selected:  # (after sync: the ratios are taken against its figures)
            from p2paid.bench.peer import run_peer_benchmark

            run_peer_benchmark(report, n)
        if "checkpoint" in selected:  # (after peer: its ratio is taken against the peer's)
            from p2paid.bench.checkpoint import run_checkpoint_benchmarks

            run_checkpoint_benchmarks(report, quick)
        if "web" in selected:
            from p2paid.bench.web import run_web_benchmarks

            run_web_benchmarks(report, root, n)
        if selected & {"relay", "fanout", "relaymem", "relaypg"}:
            from p2paid.bench.relay import run_relay_benchmarks

            run_relay_benchmarks(report, single, quick, selected)
        if "attacks" in selected:
            from p2paid.bench.attacks import run_attack_benchmarks

            run_attack_benchmarks(report, root)
        if "atrest" in selected:
            from p2paid.bench.atrest import run_atrest_benchmarks

            run_atrest_benchmarks(report, root, invite, single, 50 if quick else 200)
    if as_json:
        print(json.dumps({"meta": meta, "figures": [f.__dict__ for f in report.figures]},
                         indent=2))
    return 0
