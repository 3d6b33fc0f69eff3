"""Checkpoint figures for ``p2paid bench``: bytes, sealing, what each checker spends, and
initial syncs between two stores with and without checkpoints.

For 1,000, 10,000 and 50,000 needs of one author, and 10,000 needs of 1,000 authors:
the feed as envelopes against the same feed as checkpoints (``protocol/SPEC.md`` 8a);
the author's time to seal; a relay's time to verify (no secret); a member's time to
check (decrypt, the chunk's header, the rules read from its columns, Automerge's load)
and for an empty board to take the document as its own. When ``peer`` ran in the same
run, the bytes are also given as a ratio to the Python automerge-repo peer's.

A feed too large for one checkpoint (MAX_CHECKPOINT_BYTES) is checkpointed as far as
fits; the rest stays envelopes, and is counted as such.

The initial syncs run in one process: two real stores (SQLite files, durable commits)
joined by an in-memory link carrying the real Noise frames (:class:`ConnectionPair`), so
they show what checkpoints change without the scheduling of two processes; ``sync``
measures the same over TCP between two processes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from p2paid.bench.main import Figure, Report, make_feed_and_document
from p2paid.board.checkpoint import check_checkpoint, seal_feed_checkpoint
from p2paid.board.document import BoardDocument
from p2paid.board.store import open_store
from p2paid.core.checkpoint import Checkpoint, verify_checkpoint
from p2paid.core.envelope import Envelope
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import BoardKeys, Invite, derive_board_keys, new_board_secret
from p2paid.core.pair import ConnectionPair
from p2paid.errors import LocalProtocolError
from p2paid.node.replica import StoreReplica

__all__ = ["run_checkpoint_benchmarks"]

perf = time.perf_counter
PEER_BYTES = "  peer: bytes on the wire to the receiver"


def _seal_fitting(keys: BoardKeys, key: AuthorKey, feed: list[Envelope], doc: BoardDocument
                  ) -> tuple[Checkpoint, float]:
    """The checkpoint of the longest prefix of ``feed`` that fits; seconds to seal it.

    Raises:
        LocalProtocolError: the feed is too short to checkpoint (one change).
    """
    cipher = ChaCha20Poly1305(keys.content_key)
    upto = len(feed)
    while True:
        if upto < 2:
            raise LocalProtocolError("a feed of one change has no checkpoint")
        t0 = perf()
        try:
            cp = seal_feed_checkpoint(cipher=cipher, author_key=key, head=feed[upto - 1],
                                      own=doc.automerge)
            return cp, perf() - t0
        except LocalProtocolError:
            upto = int(upto * 0.9)


def _one_author(report: Report, n: int) -> float:
    keys = derive_board_keys(new_board_secret())
    key = AuthorKey.generate()
    feed, doc = make_feed_and_document(keys, key, n)
    cipher = ChaCha20Poly1305(keys.content_key)
    cp, seal_s = _seal_fitting(keys, key, feed, doc)
    rest = feed[cp.seq:]
    as_envelopes = sum(len(e.raw) for e in feed)
    sent = len(cp.raw) + sum(len(e.raw) for e in rest)
    t0 = perf()
    verify_checkpoint(Checkpoint.decode(cp.raw))
    relay_s = perf() - t0
    t0 = perf()
    checked = check_checkpoint(Checkpoint.decode(cp.raw), cipher)
    check_s = perf() - t0
    t0 = perf()
    member = BoardDocument(AuthorKey.generate().public)
    assert member.adopt(checked.document, [(cp.author, cp.seq - 1, checked.head[0].deps[0],
                                            checked.max_op)])
    applied = member.add_changes([checked.head])
    apply_s = perf() - t0
    assert len(applied) == 1 and member.applied_seq[cp.author] == cp.seq
    note = (f"{sent / n:.0f} B per need; envelopes: {as_envelopes / 1e6:.2f} MB "
            f"({as_envelopes / sent:.1f}x)")
    if rest:
        note += f"; {cp.seq:,} in the checkpoint, {len(rest):,} after it as envelopes"
    report.add(Figure(f"checkpoint of {n:,} needs (1 author): bytes", sent / 1e6, "MB",
                      "bundle < 0.4 MB" if n == 10_000 else "", note))
    report.add(Figure("  author: seal (save own feed, encrypt, sign)", seal_s * 1e3, "ms"))
    report.add(Figure("  relay: decode + verify both signatures", relay_s * 1e3, "ms"))
    report.add(Figure("  member: decrypt + check + load + rules on every change", check_s, "s",
                      "", f"{check_s / cp.seq * 1e6:.1f} us per change (the rules read "
                      "from the columns)"))
    report.add(Figure("  member: an empty board takes the document, applies the head",
                      apply_s, "s"))
    return sent


def _many_authors(report: Report, n: int, authors: int) -> None:
    keys = derive_board_keys(new_board_secret())
    cipher = ChaCha20Poly1305(keys.content_key)
    total = envelopes = 0
    check_s = 0.0
    for a in range(authors):
        key = AuthorKey.generate()
        feed, doc = make_feed_and_document(keys, key, n // authors, a * n)
        cp = seal_feed_checkpoint(cipher=cipher, author_key=key, head=feed[-1],
                                  own=doc.automerge)
        total += len(cp.raw)
        envelopes += sum(len(e.raw) for e in feed)
        t0 = perf()
        check_checkpoint(Checkpoint.decode(cp.raw), cipher)
        check_s += perf() - t0
    report.add(Figure(f"checkpoints of {n:,} needs by {authors:,} authors: bytes", total / 1e6,
                      "MB", "", f"{total / n:.0f} B per need, {total / authors:.0f} B per "
                      f"author; envelopes: {envelopes / 1e6:.2f} MB ({envelopes / total:.1f}x)"))
    report.add(Figure("  member: check them all", check_s, "s"))


def _sync_once(root: Path, invite: Invite, records: list[bytes], n: int) -> tuple[
        int, float, int, float]:
    """An initial sync from a store holding ``records`` to an empty one: bytes, seconds
    until all ``n`` needs are applied, bytes of the sender's bundle, seconds to open the
    receiver's board again (a fresh process's open, less the import)."""
    with open_store(root / "a") as a, open_store(root / "b") as b:
        a.join(invite).receive(records)
        a.board().save_snapshot()
        b.join(invite)
        t0 = perf()
        pair = ConnectionPair(StoreReplica(a), StoreReplica(b))
        pair.flights()
        b.board().flush()
        took = perf() - t0
        assert b.board().applied_count == n, (b.board().applied_count, n)
        b.board().save_snapshot()
        bundle = root / "a.p2paid"
        a.export_bundle(bundle)
        size = bundle.stat().st_size
    t0 = perf()
    with open_store(root / "b") as again:
        again.board().load()
        opened = perf() - t0
    return pair.bytes_delivered, took, size, opened


def _syncs(report: Report, sizes: tuple[int, ...], authors: int) -> None:
    for n in sizes:
        for count in (1, authors) if n >= 2 * authors else (1,):
            invite = Invite(new_board_secret(), "bench")
            keys = derive_board_keys(invite.secret)
            envelopes: list[bytes] = []
            checkpoints: list[bytes] = []
            for a in range(count):
                key = AuthorKey.generate()
                feed, doc = make_feed_and_document(keys, key, n // count, a * n)
                envelopes.extend(e.raw for e in feed)
                if len(feed) >= 2:
                    checkpoints.append(_seal_fitting(keys, key, feed, doc)[0].raw)
            with tempfile.TemporaryDirectory(prefix="p2paid-bench-") as tmp:
                plain = _sync_once(Path(tmp) / "plain", invite, envelopes, n)
                with_cp = _sync_once(Path(tmp) / "cp", invite, envelopes + checkpoints, n)
            who = f"{count:,} author" + ("s" if count > 1 else "")
            report.add(Figure(f"sync of {n:,} needs ({who}) with checkpoints: bytes",
                              with_cp[0] / 1e6, "MB", "", f"without: {plain[0] / 1e6:.2f} MB "
                              f"({plain[0] / with_cp[0]:.1f}x); in one process, real stores"))
            report.add(Figure("  time until applied", with_cp[1], "s", "",
                              f"without: {plain[1]:.2f} s"))
            report.add(Figure("  bundle of the sender's board", with_cp[2] / 1e6, "MB",
                              "< 0.4 MB" if n == 10_000 and count == 1 else "",
                              f"without checkpoints: {plain[2] / 1e6:.2f} MB"))
            report.add(Figure("  open the receiver's board again", with_cp[3], "s", "",
                              f"without: {plain[3]:.2f} s"))


def run_checkpoint_benchmarks(report: Report, quick: bool) -> None:
    """Print the checkpoint figures (1,000 and 10,000 needs only when ``quick``)."""
    sizes = (1_000, 10_000) if quick else (1_000, 10_000, 50_000)
    ten = 0.0
    for n in sizes:
        sent = _one_author(report, n)
        if n == 10_000:
            ten = sent
    _many_authors(report, 1_000 if quick else 10_000, 100 if quick else 1_000)
    _syncs(report, sizes, 100 if quick else 1_000)
    peer = next((f for f in report.figures if f.name == PEER_BYTES), None)
    if peer is not None and ten:
        report.add(Figure("ratio checkpoint/peer: bytes of 10,000 needs", ten / (peer.value * 1e6),
                          "x", "<= 1.0x", f"{ten / 1e6:.2f} MB / {peer.value:.2f} MB"))
