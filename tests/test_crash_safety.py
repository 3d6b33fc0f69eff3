"""Crash safety: a writer killed with SIGKILL at a random moment loses nothing it reported.

A child process posts needs in a loop and prints each item id (flushed) only
after the post call returned, i.e. after the change was committed. The test
kills it (SIGKILL, so no ``finally``, no ``close``, no snapshot on close) after
a random number of printed ids plus a random delay, so it often dies inside a
write transaction or an fsync. Then it reopens the store and checks:

* every printed id is on the board (a returned write is durable);
* SQLite's integrity check is clean;
* the local author's feed is contiguous: seqs are exactly ``1..n`` and the
  version vector says ``n``;
* nothing was recorded as rejected (no fork of our own feed);
* a new post still works and continues the feed at ``n + 1``.

A third test kills a process in the middle of bundle imports (the receive path), a
fourth one posting as a paired device (two local feeds, one process).
The data dir is reused across kills, so the state (and any damage) accumulates.
Seeds are printed in assertion messages; set ``P2PAID_CRASH_SEED`` to replay one.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import p2paid
from p2paid.core.envelope import Envelope

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

BOARD_NAME = "Crash test board"

#: The library writer. argv: data_dir, title prefix, snapshot_every (0 = never).
#: Prints "ready" once the board is loaded, then one item id per committed post.
LIBRARY_WRITER = textwrap.dedent(
    """
    import sys
    import p2paid

    data_dir, prefix, snapshot_every = sys.argv[1], sys.argv[2], int(sys.argv[3])
    store = p2paid.open_store(data_dir, create=False)
    board = store.board()
    board.items()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    i = 0
    while True:
        item = board.post_need(f"{prefix} {i}", category="water", quantity=i + 1,
                               unit="litres", location="north camp")
        sys.stdout.write(item.id + "\\n")
        sys.stdout.flush()
        i += 1
        if snapshot_every and i % snapshot_every == 0:
            board.save_snapshot()
    """
)

#: The device writer. argv: data_dir, device id, title prefix. Posts as the paired
#: device, every third post as the node's own member, a snapshot every seventh; prints
#: "ready", then one item id per committed post.
DEVICE_WRITER = textwrap.dedent(
    """
    import sys
    import p2paid

    data_dir, device_id, prefix = sys.argv[1:4]
    store = p2paid.open_store(data_dir, create=False)
    board = store.board()
    phone = board.as_device(device_id)
    board.items()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    i = 0
    while True:
        member = board if i % 3 == 2 else phone
        item = member.post_need(f"{prefix} {i}", category="water", quantity=i + 1)
        sys.stdout.write(item.id + "\\n")
        sys.stdout.flush()
        i += 1
        if i % 7 == 0:
            board.save_snapshot()
    """
)

#: The CLI driver: runs ``python -m p2paid need add ... --json`` in a loop and
#: prints the id of each need once the command has exited with status 0.
CLI_DRIVER = textwrap.dedent(
    """
    import json, subprocess, sys

    data_dir, prefix = sys.argv[1], sys.argv[2]
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    i = 0
    while True:
        done = subprocess.run(
            [sys.executable, "-m", "p2paid", "--data-dir", data_dir, "need", "add",
             f"{prefix} {i}", "--category", "food", "--quantity", str(i + 1), "--json"],
            capture_output=True, text=True,
        )
        if done.returncode != 0:
            sys.stderr.write(f"need add failed ({done.returncode}): {done.stderr}")
            sys.exit(3)
        sys.stdout.write(json.loads(done.stdout)["id"] + "\\n")
        sys.stdout.flush()
        i += 1
    """
)


#: The importer: imports the given bundles in order, printing each path once imported.
IMPORTER = textwrap.dedent(
    """
    import sys
    import p2paid

    store = p2paid.open_store(sys.argv[1], create=False)
    store.board().items()
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    while True:
        for path in sys.argv[2:]:
            report = store.import_bundle(path)
            if report.rejected:
                sys.exit(f"{path}: {report.rejected} rejected")
            sys.stdout.write(path + "\\n")
            sys.stdout.flush()
    """
)


@dataclass
class CrashLog:
    """What the test knows across kills of one data dir."""

    printed: set[str] = field(default_factory=set)
    after_kill_posts: set[str] = field(default_factory=set)
    kills: int = 0
    died_early: list[str] = field(default_factory=list)


def _seed() -> int:
    env = os.environ.get("P2PAID_CRASH_SEED")
    return int(env) if env else int.from_bytes(os.urandom(4), "big")


def _make_board(data_dir: Path) -> None:
    with p2paid.open_store(data_dir) as store:
        store.create_board(BOARD_NAME)


def _author_seqs(board: p2paid.Board) -> list[int]:
    """Seqs of the local author's stored envelopes, in store order."""
    return [
        env.seq
        for env in (Envelope.decode(raw) for raw in board.envelopes())
        if env.author == board.author
    ]


def _author_seqs_of(board: p2paid.Board, author: bytes) -> list[int]:
    return [e.seq for e in (Envelope.decode(r) for r in board.envelopes()) if e.author == author]


def _check_store(data_dir: Path, log: CrashLog, context: str) -> None:
    """Reopen the store and check durability, integrity and feed contiguity; then post."""
    with p2paid.open_store(data_dir, create=False) as store:
        assert store._db.integrity_check() == [], context
        board = store.board()
        ids = {item.id for item in board.items()}
        missing = (log.printed | log.after_kill_posts) - ids
        assert not missing, f"{context}: {len(missing)} reported posts lost: {sorted(missing)[:5]}"
        # At most one post per kill can be committed without having been reported.
        unreported = ids - log.printed - log.after_kill_posts
        assert len(unreported) <= log.kills, f"{context}: unexpected items {unreported}"
        seqs = _author_seqs(board)
        n = len(seqs)
        assert sorted(seqs) == list(range(1, n + 1)), f"{context}: feed not contiguous: {seqs}"
        assert n == len(ids), f"{context}: {n} envelopes of ours but {len(ids)} items"
        assert board.version_vector().get(board.author, 0) == n, context
        assert store._db.rejections(board.id) == [], context
        # A new post works and continues the feed (no "out of step", no fork).
        item = board.post_need(f"after kill {log.kills}", category="water")
        log.after_kill_posts.add(item.id)
        assert board.version_vector()[board.author] == n + 1, context
        author = board.author
    # The post is durable and visible to a fresh store.
    with p2paid.open_store(data_dir, create=False) as store:
        board = store.board()
        assert item.id in {i.id for i in board.items()}, context
        assert board.version_vector()[author] == n + 1, context
        assert sorted(_author_seqs(board)) == list(range(1, n + 2)), context
        assert store._db.rejections(board.id) == [], context
        assert store._db.integrity_check() == [], context


def _run_and_kill(
    argv: list[str], log: CrashLog, rng: random.Random, *, min_ids: int, max_ids: int,
    max_delay: float, context: str, timeout: float = 30.0,
) -> None:
    """Start a writer, wait for a random number of ids, sleep a random delay, SIGKILL it."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
        start_new_session=True,  # so killpg reaches a CLI child too
    )
    assert proc.stdout is not None and proc.stderr is not None
    target = rng.randint(min_ids, max_ids)
    delay = rng.uniform(0.0005, max_delay)
    deadline = time.monotonic() + timeout
    seen = 0
    try:
        first = proc.stdout.readline()
        assert first == "ready\n", f"{context}: writer did not start: {first!r} " \
                                   f"{proc.stderr.read() if proc.poll() is not None else ''}"
        while seen < target:
            line = proc.stdout.readline()
            if not line:
                proc.wait(timeout=5)
                raise AssertionError(
                    f"{context}: writer exited early (rc {proc.returncode}): {proc.stderr.read()}"
                )
            log.printed.add(line.strip())
            seen += 1
            assert time.monotonic() < deadline, f"{context}: writer too slow"
        time.sleep(delay)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Whatever the writer printed before it died was printed after a post returned.
    rest = proc.stdout.read()
    log.printed.update(line.strip() for line in rest.splitlines() if line.strip())
    err = proc.stderr.read()
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, (
        f"{context}: writer ended by itself (rc {proc.returncode}) before the kill: {err}"
    )
    assert "Traceback" not in err, f"{context}: writer failed before the kill: {err}"
    log.kills += 1


@pytest.mark.parametrize("snapshot_every", [0, 7], ids=["no-snapshots", "snapshots"])
def test_library_writer_survives_sigkill(tmp_path: Path, snapshot_every: int) -> None:
    """Five SIGKILLs of a library writer (optionally saving snapshots as it goes, so some
    kills land in a snapshot write and reopening uses snapshot + tail) lose no returned
    post, leave a sound file and a contiguous feed, and the store stays writable."""
    seed = _seed()
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    _make_board(data_dir)
    script = tmp_path / "writer.py"
    script.write_text(LIBRARY_WRITER)
    log = CrashLog()
    for round_ in range(5):
        context = f"seed={seed} round={round_} snapshot_every={snapshot_every}"
        _run_and_kill(
            [sys.executable, str(script), str(data_dir), f"need r{round_}", str(snapshot_every)],
            log, rng, min_ids=3, max_ids=30, max_delay=0.05, context=context,
        )
        _check_store(data_dir, log, context)
    assert len(log.printed) >= 15


def test_cli_writer_survives_sigkill(tmp_path: Path) -> None:
    """SIGKILL of a shell-style driver running ``p2paid need add`` in a loop, together with
    the ``p2paid`` child it is running (killed as a process group, at a random point of
    its start-up or its write), loses no reported need and leaves the store usable."""
    seed = _seed()
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    _make_board(data_dir)
    script = tmp_path / "driver.py"
    script.write_text(CLI_DRIVER)
    log = CrashLog()
    for round_ in range(3):
        context = f"seed={seed} round={round_} (CLI)"
        # A CLI call takes a few hundred ms; a delay up to 0.4 s lands anywhere in the next one.
        _run_and_kill(
            [sys.executable, str(script), str(data_dir), f"cli need r{round_}"],
            log, rng, min_ids=1, max_ids=4, max_delay=0.4, context=context,
        )
        _check_store(data_dir, log, context)
    # The CLI itself still works on the store afterwards.
    done = subprocess.run(
        [sys.executable, "-m", "p2paid", "--data-dir", str(data_dir), "list", "--json"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert "cli need r0 0" in done.stdout


def test_bundle_import_survives_sigkill(tmp_path: Path) -> None:
    """An importer killed at random moments while it applies ever larger bundles of a
    peer's feed (150, 300, 450, 600 envelopes) keeps every
    bundle it reported as imported, never holds a gap or a fork in the peer's feed, and
    a later import completes the feed."""
    seed = _seed()
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        invite = store.create_board(BOARD_NAME).invite()
    bundles: list[Path] = []
    sizes: dict[str, int] = {}
    with p2paid.open_store(tmp_path / "peer") as peer:
        board = peer.join(invite)
        for step in range(4):
            for i in range(150):
                board.post_offer(f"peer offer {step}.{i}")
            path = tmp_path / f"peer-{step}.p2paid"
            sizes[str(path)] = peer.export_bundle(path)
            bundles.append(path)
        peer_author = bytes(board.author)
    script = tmp_path / "importer.py"
    script.write_text(IMPORTER)
    log = CrashLog()
    for round_ in range(4):
        context = f"seed={seed} round={round_} (import)"
        _run_and_kill(
            [sys.executable, str(script), str(data_dir), *map(str, bundles)],
            log, rng, min_ids=0, max_ids=3, max_delay=0.3, context=context,
        )
        with p2paid.open_store(data_dir, create=False) as store:
            assert store._db.integrity_check() == [], context
            board = store.board()
            seqs = _author_seqs_of(board, peer_author)
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), context
            assert len(seqs) >= max((sizes[p] for p in log.printed), default=0), context
            assert board.version_vector().get(peer_author, 0) == len(seqs), context
            assert len(board.items()) == len(seqs), context
            assert store._db.rejections(board.id) == [], context
    with p2paid.open_store(data_dir, create=False) as store:
        report = store.import_bundle(bundles[-1])
        assert report.rejected == 0
        board = store.board()
        assert len(board.items()) == 600
        assert board.version_vector()[peer_author] == 600
        board.post_need("still writable")
        assert board.version_vector()[board.author] == 1


def test_a_store_of_schema_1_is_upgraded_and_checked_again(tmp_path: Path) -> None:
    """A data dir written by p2paid 0.1 (schema 1) opens: its snapshots are dropped, so
    every stored change is applied and checked again under the own-feed rule; a change
    that depends on another member's (as 0.1 made them) is refused then, not applied."""
    import sqlite3

    import p2paid
    from p2paid.storage.sqlite import DB_FILENAME, SCHEMA_VERSION

    with p2paid.open_store(tmp_path / "d") as store:
        board = store.create_board("Aid", display_name="Ana")
        for i in range(5):
            board.post_need(f"need {i}")
        board.save_snapshot()
    with sqlite3.connect(tmp_path / "d" / DB_FILENAME) as con:
        con.execute("UPDATE meta SET value = 1 WHERE key = 'schema'")
        assert con.execute("SELECT COUNT(*) FROM snapshots").fetchone() == (1,)
    with p2paid.open_store(tmp_path / "d") as store:
        assert {i.title for i in store.board().items()} == {f"need {i}" for i in range(5)}
        assert store._db.snapshot(store.board().id) is None
    with sqlite3.connect(tmp_path / "d" / DB_FILENAME) as con:
        assert con.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
            SCHEMA_VERSION,)


def test_device_writer_survives_sigkill(tmp_path: Path) -> None:
    """SIGKILLs of a process posting as a paired device (and now and then as the node's
    own member, saving snapshots as it goes) lose no returned post, and leave both
    feeds contiguous; both continue after each kill."""
    seed = _seed()
    rng = random.Random(seed)
    data_dir = tmp_path / "node"
    with p2paid.open_store(data_dir) as store:
        device = store.add_device(store.create_board(BOARD_NAME).id, "phone")
    script = tmp_path / "device_writer.py"
    script.write_text(DEVICE_WRITER)
    log = CrashLog()
    for round_ in range(4):
        context = f"seed={seed} round={round_} (device)"
        _run_and_kill([sys.executable, str(script), str(data_dir), device.id, f"r{round_}"],
                      log, rng, min_ids=3, max_ids=30, max_delay=0.05, context=context)
        with p2paid.open_store(data_dir, create=False) as store:
            assert store._db.integrity_check() == [], context
            board = store.board()
            ids = {item.id for item in board.items()}
            assert not (log.printed | log.after_kill_posts) - ids, context
            assert len(ids - log.printed - log.after_kill_posts) <= log.kills, context
            for author in (board.author, device.author):
                seqs = _author_seqs_of(board, author)
                assert sorted(seqs) == list(range(1, len(seqs) + 1)), context
                assert board.version_vector().get(author, 0) == len(seqs), context
            assert store._db.rejections(board.id) == [], context
            n = len(_author_seqs_of(board, device.author))
            log.after_kill_posts.add(board.as_device(device).post_need("after kill").id)
            assert board.version_vector()[device.author] == n + 1, context
    assert len(log.printed) >= 12
