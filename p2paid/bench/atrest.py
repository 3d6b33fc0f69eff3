"""``p2paid bench --only atrest``: what encryption at rest costs, next to the same
figures without it, in one run.

The unlock is timed with the default Argon2id parameters on a real key file. The
apply, open and post figures of the protected data dir use the cheapest parameters,
so that they show the cost of sealing alone (the unlock is its own figure). The
wipe is timed on the protected 10,000-item data dir: the crypto-erase, and all of it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from p2paid.bench.main import Figure, Report
from p2paid.board.store import open_store
from p2paid.core.envelope import Envelope
from p2paid.core.invite import Invite
from p2paid.storage import keystore
from p2paid.storage.atrest import DEFAULT_PARAMS, Credentials, KdfParams, unlock_record
from p2paid.storage.protect import protect
from p2paid.storage.wipe import wipe

__all__ = ["run_atrest_benchmarks"]

perf = time.perf_counter
_PASSPHRASE = b"bench passphrase words"
_CHEAP = KdfParams(memory_kib=1024, iterations=1, lanes=4)

_OPEN_PROBE = r"""
import json, sys, time
import p2paid
from p2paid.storage.atrest import Credentials
creds = Credentials(sys.argv[2].encode()) if len(sys.argv) > 2 else None
t0 = time.perf_counter()
with p2paid.open_store(sys.argv[1], create=False, credentials=creds) as store:
    board = store.board()
    board.document
    t1 = time.perf_counter()
    items = len(board.items())
print(json.dumps({"open_s": t1 - t0, "items": items}))
"""


def _unlock(report: Report, root: Path) -> None:
    data_dir = root / "unlock"
    creds = Credentials(_PASSPHRASE)
    with open_store(data_dir) as store:
        protect(store.database, creds, DEFAULT_PARAMS)
    record = keystore.read_record(data_dir)
    assert record is not None
    times = []
    for _ in range(5):
        t0 = perf()
        unlock_record(record, creds)
        times.append(perf() - t0)
    p = DEFAULT_PARAMS
    report.add(Figure(f"unlock: Argon2id m={p.memory_kib // 1024} MiB, t={p.iterations}, "
                      f"p={p.lanes}: median", statistics.median(times), "s",
                      "0.5-1 s on a Pi 4", f"min {min(times):.3f} s, max {max(times):.3f} s"))


def _apply(root: Path, label: str, invite: Invite, envelopes: list[Envelope],
           creds: Credentials | None) -> tuple[Path, float]:
    data_dir = root / f"atrest-{label}"
    with open_store(data_dir) as store:
        if creds is not None:
            protect(store.database, creds, _CHEAP)
        board = store.join(invite)
        board.refresh()
        raws = [e.raw for e in envelopes]
        t0 = perf()
        result = board.receive(raws)
        elapsed = perf() - t0
        assert result.accepted == len(raws) and not result.rejected, result
    return data_dir, len(raws) / elapsed


def _open(data_dir: Path, creds: Credentials | None) -> float:
    argv = [sys.executable, "-c", _OPEN_PROBE, str(data_dir)]
    if creds is not None:
        argv.append(creds.passphrase.decode())
    runs = [json.loads(subprocess.run(argv, capture_output=True, text=True,
                                      check=True).stdout)["open_s"] for _ in range(3)]
    return float(min(runs))


def _post(data_dir: Path, creds: Credentials | None, posts: int) -> float:
    with open_store(data_dir, credentials=creds) as store:
        board = store.board()
        board.refresh()
        lat = []
        for i in range(posts):
            t0 = perf()
            board.post_need(f"Bench need {i}", category="water", quantity=5, unit="litres")
            lat.append(perf() - t0)
    return statistics.median(lat)


def run_atrest_benchmarks(report: Report, root: Path, invite: Invite,
                          envelopes: list[Envelope], posts: int) -> None:
    """Unlock time; apply, open and post with and without encryption at rest; wipe."""
    report.say("encryption at rest (plain | protected, in this run):")
    _unlock(report, root)
    creds = Credentials(_PASSPHRASE)
    n = len(envelopes)
    plain_dir, plain_rate = _apply(root, "plain", invite, envelopes, None)
    sealed_dir, sealed_rate = _apply(root, "protected", invite, envelopes, creds)
    for label, rate in (("without", plain_rate), ("with", sealed_rate)):
        report.add(Figure(f"apply {n:,} envelopes, {label} encryption at rest", rate,
                          "changes/s", note=f"{n / rate:.2f} s"))
    plain_open, sealed_open = _open(plain_dir, None), _open(sealed_dir, creds)
    report.add(Figure(f"open a {n:,}-item board, without encryption at rest", plain_open, "s"))
    report.add(Figure(f"open a {n:,}-item board, with it (cheap KDF)", sealed_open, "s",
                      note=f"{sealed_open / plain_open:.2f} x without"))
    plain_post, sealed_post = _post(plain_dir, None, posts), _post(sealed_dir, creds, posts)
    report.add(Figure("post one need: median, without encryption at rest", plain_post * 1e3,
                      "ms"))
    report.add(Figure("post one need: median, with it", sealed_post * 1e3, "ms",
                      note=f"{posts} posts each"))
    erased_at: list[float] = []
    t0 = perf()
    result = wipe(sealed_dir, on_erased=lambda: erased_at.append(perf()))
    total = perf() - t0
    assert result.key_erased
    report.add(Figure(f"wipe a protected {n:,}-item data dir: key erased after",
                      (erased_at[0] - t0) * 1e3, "ms"))
    report.add(Figure("  ... and every file overwritten and deleted after", total, "s",
                      "< 1 s"))
