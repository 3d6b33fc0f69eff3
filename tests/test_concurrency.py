"""Several processes on one data dir: no lost write, no fork, every reader catches up.

All processes share one store, so they write as the SAME author (the board's
author key lives in the store). The store's write lock plus "catch up by arrival
id before writing" must turn their interleaved posts into one contiguous feed.
Also covered: simultaneous first opens of a new data dir, a writer waiting for a
held lock, and a board joined while another process is importing it blind.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import p2paid
from p2paid.core.envelope import Envelope

#: A worker on a shared data dir. argv: data_dir, role, tag, arg where role/arg is
#: writer/count, importer/bundle path, exporter/output prefix, reader/expected item count.
#: Loads the board, prints "ready", waits for a line on stdin, works, prints one JSON line.
WORKER = textwrap.dedent(
    """
    import json, pathlib, sys, time, traceback
    import p2paid

    data_dir, role, tag, arg = sys.argv[1:5]
    #: imp0 creates it after its first import; writers wait for it halfway, so that
    #: the import surely runs among their posts, however the machine schedules us
    first_import = pathlib.Path(data_dir).parent / "imp0-first-import-done"
    #: a writer creates it after its first post; the importers start after it
    first_post = pathlib.Path(data_dir).parent / "first-post-done"

    def wait_for(path):
        deadline = time.monotonic() + 30
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    store = p2paid.open_store(data_dir, create=False)
    board = store.board()
    board.items()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    sys.stdin.readline()
    out = {"tag": tag, "ids": [], "times": [], "errors": [], "reports": [], "counts": []}
    try:
        if role == "writer":
            for i in range(int(arg)):
                item = board.post_need(f"{tag} {i}", category="food", quantity=i + 1)
                out["ids"].append(item.id)
                out["times"].append(time.time_ns())
                time.sleep(0.002)  # let the others take the write lock (SQLite is not fair)
                if i % 10 == 9:
                    board.save_snapshot()  # later opens start from a snapshot + tail
                if i == 0:
                    first_post.touch()
                if i == int(arg) // 2:
                    wait_for(first_import)
        elif role == "importer":
            wait_for(first_post)  # start while the writers are busy
            for _ in range(2):
                r = store.import_bundle(arg)
                out["reports"].append([r.accepted, r.duplicates, r.rejected])
                out["times"].append(time.time_ns())
                if tag == "imp0":
                    first_import.touch()
        elif role == "exporter":
            for k in range(5):
                time.sleep(0.03)
                out["counts"].append(store.export_bundle(f"{arg}.{k}"))
                out["times"].append(time.time_ns())
        elif role == "reader":
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                n = len(board.items())
                out["counts"].append(n)
                if n >= int(arg):
                    break
                time.sleep(0.005)
    except Exception:
        out["errors"].append(traceback.format_exc())
    try:
        store.close()
    except Exception:
        out["errors"].append(traceback.format_exc())
    sys.stdout.write(json.dumps(out) + "\\n")
    """
)


def _author_seqs(board: p2paid.Board, author: bytes) -> list[int]:
    return [
        env.seq for env in (Envelope.decode(raw) for raw in board.envelopes())
        if env.author == author
    ]


def _assert_feed_sound(store: p2paid.Store, board: p2paid.Board, author: bytes) -> int:
    """The author's feed is 1..n with no gap or duplicate, and the vector says n."""
    seqs = _author_seqs(board, author)
    n = len(seqs)
    assert sorted(seqs) == list(range(1, n + 1)), f"feed not contiguous: {sorted(seqs)}"
    assert board.version_vector().get(author, 0) == n
    assert store._db.rejections(board.id) == []
    assert store._db.integrity_check() == []
    return n


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, timeout=60,
    )


def _peer_bundle(tmp_path: Path, invite: str, count: int) -> tuple[Path, set[str]]:
    """A second member (own data dir, own author) posts ``count`` needs and exports them."""
    bundle = tmp_path / "peer.p2paid"
    with p2paid.open_store(tmp_path / "peer") as peer:
        board = peer.join(invite, display_name="Peer")
        ids = {board.post_need(f"peer need {i}", category="water").id for i in range(count)}
        peer.export_bundle(bundle)
    return bundle, ids


def test_concurrent_writers_and_importer_share_one_feed(tmp_path: Path) -> None:
    """Four processes post 30 needs each as the same author (saving snapshots now and
    then) while two more import a peer's bundle (twice each), a seventh exports bundles
    and an eighth keeps reading, all at once on one data dir. Afterwards: every post is
    there, the shared author's feed is contiguous (no fork, nothing rejected), no process
    saw an error, the import counts add up (each envelope accepted exactly once), every
    bundle exported mid-storm imports cleanly elsewhere (no gap, nothing held), the
    reader's view only grew and reached the end, and a fresh process sees everything."""
    writers, per_writer, peer_count = 4, 30, 60
    total = writers * per_writer + peer_count
    data_dir = tmp_path / "shared"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Shared board", display_name="Shared device")
        invite = board.invite()
        author = bytes(board.author)
    bundle, peer_ids = _peer_bundle(tmp_path, invite, peer_count)
    peer_envelopes = peer_count + 1  # + the peer's display name

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    argvs = [[str(data_dir), "writer", f"w{k}", str(per_writer)] for k in range(writers)]
    argvs += [[str(data_dir), "importer", f"imp{k}", str(bundle)] for k in range(2)]
    argvs.append([str(data_dir), "exporter", "exp", str(tmp_path / "mid-storm")])
    argvs.append([str(data_dir), "reader", "reader", str(total)])
    procs = [
        subprocess.Popen([sys.executable, str(script), *argv], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for argv in argvs
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line == "ready\n", f"worker failed to start: {line!r} {p.stderr}"
        for p in procs:  # release them together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
            assert "Traceback" not in err and "out of step" not in err, err
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    by_tag = {r["tag"]: r for r in results}
    for r in results:
        assert r["errors"] == [], f"{r['tag']} saw errors:\n" + "\n".join(r["errors"])

    posted = [i for k in range(writers) for i in by_tag[f"w{k}"]["ids"]]
    assert len(posted) == writers * per_writer == len(set(posted))
    # The writers really interleaved (otherwise this test proves little).
    order = sorted((t, f"w{k}") for k in range(writers) for t in by_tag[f"w{k}"]["times"])
    switches = sum(a[1] != b[1] for a, b in itertools.pairwise(order))
    assert switches > writers - 1, f"writers did not interleave ({switches} switches)"
    # (imp0 starts after a first post and the writers wait halfway for its first
    # import: it runs among their posts)
    assert order[0][0] < by_tag["imp0"]["times"][0] < order[-1][0], "the import ran alone"

    # The importers: together, each envelope accepted exactly once; the rest duplicates.
    reports = by_tag["imp0"]["reports"] + by_tag["imp1"]["reports"]
    assert sum(r[0] for r in reports) == peer_envelopes, reports
    assert sum(r[1] for r in reports) == 3 * peer_envelopes, reports
    assert all(r[2] == 0 for r in reports), reports

    # The reader only ever saw the board grow, and saw all of it in the end.
    counts = by_tag["reader"]["counts"]
    assert counts == sorted(counts) and counts[-1] == total, counts

    # Bundles exported mid-storm are consistent cuts: they import without gaps.
    exported = by_tag["exp"]["counts"]
    assert exported == sorted(exported) and len(exported) == 5
    for k, count in enumerate(exported):
        with p2paid.open_store(tmp_path / f"check{k}") as check:
            check.join(invite)
            report = check.import_bundle(tmp_path / f"mid-storm.{k}")
            assert (report.accepted, report.rejected) == (count, 0), k
            assert all(b.held == 0 for b in report.boards.values()), k

    with p2paid.open_store(data_dir, create=False) as store:
        board = store.board()
        items = board.items()
        ids = {i.id for i in items}
        assert len(items) == len(ids) == total
        assert ids == set(posted) | peer_ids
        # +1: the display name set when the board was created.
        assert _assert_feed_sound(store, board, author) == writers * per_writer + 1
        peer_authors = [a for a in board.version_vector() if a != author]
        assert len(peer_authors) == 1
        assert _assert_feed_sound(store, board, peer_authors[0]) == peer_envelopes
        # Still writable afterwards, continuing the feed.
        final_ids = ids | {board.post_need("after the storm").id}
        assert board.version_vector()[author] == writers * per_writer + 2

    # A fresh process sees every item.
    done = _cli(data_dir, "list", "--json")
    assert done.returncode == 0, done.stderr
    assert {i["id"] for i in json.loads(done.stdout)} == final_ids


def test_concurrent_cli_posts(tmp_path: Path) -> None:
    """Three concurrent loops of ``p2paid need add`` (a fresh store per call, the CLI's
    pattern) on one data dir: every call succeeds and the feed stays contiguous."""
    data_dir = tmp_path / "shared"
    with p2paid.open_store(data_dir) as store:
        author = bytes(store.create_board("CLI board").author)
    loop = (
        "import subprocess, sys\n"
        "for i in range(4):\n"
        "    r = subprocess.run([sys.executable, '-m', 'p2paid', '--data-dir', sys.argv[1],\n"
        "                        'need', 'add', f'{sys.argv[2]} {i}'],\n"
        "                       capture_output=True, text=True)\n"
        "    if r.returncode:\n"
        "        sys.exit(r.stderr)\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", loop, str(data_dir), f"loop{k}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(3)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    with p2paid.open_store(data_dir, create=False) as store:
        board = store.board()
        titles = sorted(i.title for i in board.items())
        assert titles == sorted(f"loop{k} {i}" for k in range(3) for i in range(4))
        assert _assert_feed_sound(store, board, author) == 12


def test_board_catches_up_with_another_process(tmp_path: Path) -> None:
    """A loaded Board sees what another process wrote: refresh() applies exactly the new
    changes (by arrival id), items() and get() show them, and an edit made elsewhere to
    an item this Board already read (cached) is visible too."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Catch-up board")
        mine = board.post_need("posted here", category="medical")
        assert [i.id for i in board.items()] == [mine.id]  # loaded and cached

        for title in ("from elsewhere 1", "from elsewhere 2", "from elsewhere 3"):
            done = _cli(data_dir, "need", "add", title)
            assert done.returncode == 0, done.stderr
        applied = board.refresh()
        assert len(applied) == 3
        assert board.refresh() == []  # nothing new: nothing applied twice
        assert sorted(i.title for i in board.items()) == [
            "from elsewhere 1", "from elsewhere 2", "from elsewhere 3", "posted here"]

        # Another process changes an item this Board already read.
        done = _cli(data_dir, "fulfil", mine.id[:10])
        assert done.returncode == 0, done.stderr
        assert board.get(mine.id).status is p2paid.Status.FULFILLED  # items() path, no refresh()

        # More writes elsewhere, then read through items() alone.
        assert _cli(data_dir, "offer", "add", "late offer").returncode == 0
        assert "late offer" in {i.title for i in board.offers()}
        assert board.version_vector()[board.author] == 6


def test_out_of_date_board_catches_up_before_writing(tmp_path: Path) -> None:
    """A Board that has not looked at the store since another process extended its own
    author's feed still writes the right next envelope: it catches up first, so its
    envelope continues the feed (seq n+1, linked), with no fork and no "out of step"
    error. The same holds for receive() (bundle import) from an out-of-date Board."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Stale board")
        invite = board.invite()
        board.post_need("first")
        author = bytes(board.author)
        board.items()
        assert board.version_vector()[author] == 1

        # Another process writes three changes as the same author; this Board is not told.
        for title in ("other 1", "other 2"):
            assert _cli(data_dir, "need", "add", title).returncode == 0
        assert _cli(data_dir, "name", "Shared laptop").returncode == 0

        item = board.post_need("written while stale")  # no refresh() beforehand
        seqs = _author_seqs(board, author)
        assert sorted(seqs) == [1, 2, 3, 4, 5]
        envs = {e.seq: e for e in (Envelope.decode(r) for r in board.envelopes())}
        assert envs[5].prev == envs[4].hash  # linked to the other process's head
        assert board.version_vector()[author] == 5
        assert item.author_name == "Shared laptop"  # the catch-up was applied before the write

        # Another process writes again; then this (stale) Board imports a peer's bundle.
        assert _cli(data_dir, "need", "add", "other 3").returncode == 0
        bundle, peer_ids = _peer_bundle(tmp_path, invite, 3)
        report = store.import_bundle(bundle)
        assert (report.accepted, report.duplicates, report.rejected) == (4, 0, 0)
        assert peer_ids <= {i.id for i in board.items()}
        board.post_need("after import")
        assert _assert_feed_sound(store, board, author) == 7
    with p2paid.open_store(data_dir, create=False) as store:
        board = store.board()
        assert len(board.items()) == 6 + 3
        assert _assert_feed_sound(store, board, author) == 7


def test_two_stores_in_one_process_alternate_writes(tmp_path: Path) -> None:
    """Two Store objects (two connections) on one data dir, writing alternately without
    refreshing, build one contiguous feed and each ends up seeing every item."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as s1, p2paid.open_store(data_dir) as s2:
        b1 = s1.create_board("Two handles")
        b2 = s2.board()
        b1.items()
        b2.items()
        ids = []
        for i in range(10):
            ids.append((b1 if i % 2 == 0 else b2).post_need(f"alt {i}").id)
        assert {i.id for i in b1.items()} == set(ids) == {i.id for i in b2.items()}
        assert _assert_feed_sound(s1, b1, bytes(b1.author)) == 10
        assert b1.author == b2.author


def test_writer_blocked_by_a_held_lock_waits_then_succeeds(tmp_path: Path) -> None:
    """A process holding the store's write lock (a long import, say) makes another
    writer wait, not fail, and the waiting write lands once the lock is released."""
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        board = store.create_board("Lock board")
        board.items()
        with store._db.write():  # hold the write lock
            proc = subprocess.Popen(
                [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "need", "add",
                 "waited"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            time.sleep(1.0)
            assert proc.poll() is None, "the writer did not wait for the lock"
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert [i.title for i in board.items()] == ["waited"]


def test_open_waits_for_a_writer_on_a_fresh_store(tmp_path: Path) -> None:
    """Opening a data dir whose database file another process is still setting up (it
    holds SQLite's write lock before WAL mode is on) waits, like every other store
    operation, up to the busy timeout, instead of failing at once with "database is
    locked". This is the window two p2paid processes hit when they open a new data dir
    at the same moment (see the next test)."""
    data_dir = tmp_path / "fresh"
    data_dir.mkdir(mode=0o700)
    raw = sqlite3.connect(data_dir / "p2paid.sqlite3", isolation_level=None)
    try:
        raw.execute("BEGIN IMMEDIATE")  # what a concurrent first open holds for a moment
        proc = subprocess.Popen(
            [sys.executable, "-c",
             "import sys, p2paid; p2paid.open_store(sys.argv[1]).close(); print('opened')",
             str(data_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)
        waited = proc.poll() is None
        raw.execute("COMMIT")
    finally:
        raw.close()
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip()) == (0, "opened"), err.strip().splitlines()[-1:]
    assert waited


def test_simultaneous_first_opens_of_a_new_data_dir(tmp_path: Path) -> None:
    """Eight connections opening the same NEW data dir at the same instant all succeed
    and agree on one node key (100 rounds). Threads stand in for processes: each has
    its own SQLite connection and SQLite's locking is the same either way. Fails
    intermittently (about 0.5% of opens) while ``PRAGMA journal_mode = WAL`` in
    ``Database._configure`` is not retried."""
    failures: list[str] = []
    for round_ in range(100):
        data_dir = tmp_path / f"n{round_}"
        barrier = threading.Barrier(8)
        keys: list[str] = []

        def open_it(data_dir: Path = data_dir, barrier: threading.Barrier = barrier,
                    keys: list[str] = keys, round_: int = round_) -> None:
            barrier.wait()
            try:
                with p2paid.open_store(data_dir) as store:
                    keys.append(store.node_fingerprint)
            except p2paid.P2paidError as exc:
                failures.append(f"round {round_}: {exc}")

        threads = [threading.Thread(target=open_it) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(keys)) <= 1, keys
    assert failures == [], f"{len(failures)} of 800 opens failed: {failures[:3]}"


#: Imports a bundle, pausing (as a scheduler might) after deciding which boards are
#: joined and before storing envelopes of boards that are not: it prints "carrying"
#: and waits for a line on stdin. argv: data_dir, bundle.
PAUSED_CARRIER = textwrap.dedent(
    """
    import json, sys
    import p2paid
    import p2paid.board.store

    original = p2paid.board.store.Store._carry

    def paused(self, board_id, envelopes):
        sys.stdout.write("carrying\\n")
        sys.stdout.flush()
        sys.stdin.readline()
        return original(self, board_id, envelopes)

    p2paid.board.store.Store._carry = paused
    with p2paid.open_store(sys.argv[1], create=False) as store:
        report = store.import_bundle(sys.argv[2])
    sys.stdout.write(json.dumps([report.accepted, report.rejected]) + "\\n")
    """
)


def test_join_while_another_process_imports_that_board(tmp_path: Path) -> None:
    """Process P imports a bundle for board X, not yet joined, so it decides to carry X
    blind; before P takes the write lock, another process joins X. P's envelopes then
    land in a JOINED board without being opened (no change hash recorded, no decrypt or
    ownership check). Afterwards every item must still be readable, also once a snapshot
    covers those envelopes and later changes that depend on them arrive."""
    author_dir, node_dir = tmp_path / "author", tmp_path / "node"
    first, second = tmp_path / "first.p2paid", tmp_path / "second.p2paid"
    with p2paid.open_store(author_dir) as author:
        board = author.create_board("Race board")
        invite = board.invite()
        need = board.post_need("first need")
        board.post_need("second need")
        author.export_bundle(first)
        board.edit(need.id, title="first need, edited")  # depends on the two above
        board.post_need("third need")
        author.export_bundle(second)
    with p2paid.open_store(node_dir):
        pass
    script = tmp_path / "carrier.py"
    script.write_text(PAUSED_CARRIER)
    proc = subprocess.Popen([sys.executable, str(script), str(node_dir), str(first)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == "carrying\n", proc.stderr
        with p2paid.open_store(node_dir, create=False) as node:
            node.join(invite)  # joins while P is about to carry X blind
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1]) == [2, 0]

    with p2paid.open_store(node_dir, create=False) as node:
        board = node.board()
        assert sorted(i.title for i in board.items()) == ["first need", "second need"]
        board.save_snapshot()  # covers the two envelopes P stored
    with p2paid.open_store(node_dir, create=False) as node:
        report = node.import_bundle(second)
        assert (report.accepted, report.rejected) == (2, 0)
        assert sorted(i.title for i in node.board().items()) == [
            "first need, edited", "second need", "third need"]
    with p2paid.open_store(node_dir, create=False) as node:
        assert sorted(i.title for i in node.board().items()) == [
            "first need, edited", "second need", "third need"]
