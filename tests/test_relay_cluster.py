"""A relay made of several ``p2paid relay --store postgresql://...`` processes on one real
PostgreSQL server (a throwaway cluster the tests start: ``tests/pg_helpers.py``).

Every process presents one key (``--key-file``). What one process stores reaches the
clients of the others as a live push (LISTEN/NOTIFY with ids only); one author's feed
uploaded to two processes at once is stored once, never forked and never refused;
forgeries and forks are refused whichever process sees them; the caps hold for the
cluster; nothing acknowledged is lost when a process is SIGKILLed or PostgreSQL restarts,
and clients resume through the other process. Every test is bounded by ``trio.fail_after``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
import trio
from cluster_helpers import ClusterProcesses, db_envelopes, db_forks, db_positions
from node_helpers import start_node, titles, wait_until
from pg_helpers import PgCluster
from relay_helpers import LOCALHOST, RelayProcess, free_port, open_client, poll
from replication_helpers import FeedWriter, MemoryReplica, board_keys

from p2paid.board.store import open_store
from p2paid.core.codes import RefusedCode
from p2paid.core.envelope import HEADER_BYTES, Envelope
from p2paid.core.invite import BoardKeys
from p2paid.core.relayaddr import RelayAddress
from p2paid.core.wire import Ack

pytestmark = [pytest.mark.filterwarnings("ignore::ResourceWarning"), pytest.mark.slow]


def member(keys: BoardKeys, *envelopes: object, name: str = "") -> MemoryReplica:
    replica = MemoryReplica("node", name=name)
    replica.add_board(keys)
    if envelopes:
        replica.write(keys.board_id, envelopes)  # type: ignore[arg-type]
    return replica


def raws(envelopes: Sequence[object]) -> set[bytes]:
    return {e.raw for e in envelopes}  # type: ignore[attr-defined]


def _flip(raw: bytes, offset: int) -> bytes:
    return raw[:offset] + bytes([raw[offset] ^ 0x01]) + raw[offset + 1:]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2paid", *args], capture_output=True,
                          text=True, timeout=60)


# ---------------------------------------------------------------------- live, blind, one key


async def test_live_push_across_processes_one_key_and_nothing_readable(
        tmp_path: Path, pg_url: str) -> None:
    """Two processes present the same key. A reader connected to process 2 gets what a
    writer uploads to process 1 as live pushes (it never reconnects), and the reverse;
    the database holds only ciphertext (no post title in any table)."""
    with open_store(tmp_path / "member") as store:
        board = store.create_board("Aid", display_name="writer")
        board.post_need("Warm blankets for the north camp")
        keys = board.keys
        first = list(store._db.envelopes(board.id))
    cluster = ClusterProcesses(pg_url, tmp_path)
    try:
        with trio.fail_after(60):
            await cluster.wait()
            p1, p2 = cluster.procs
            assert p1.address is not None and p2.address is not None
            assert p1.address.key == p2.address.key
            feed = FeedWriter(keys)
            async with trio.open_nursery() as nursery:
                reader = await open_client(nursery, p2.hostport, member(keys, name="reader"))
                await poll(lambda: reader.in_sync(keys.board_id))
                writer = await open_client(nursery, p1.hostport, member(keys, name="writer"))
                writer.replica.write(keys.board_id, [Envelope.decode(r) for r in first])
                await writer.push(keys.board_id)
                await poll(lambda: set(first) <= reader.holds(keys.board_id))
                for _ in range(5):  # one at a time: each is a live push
                    env = feed.next()
                    writer.replica.write(keys.board_id, [env])
                    await writer.push(keys.board_id)
                    await poll(lambda e=env: e.raw in reader.holds(keys.board_id))  # type: ignore[misc]
                back = FeedWriter(keys).next()
                reader.replica.write(keys.board_id, [back])
                await reader.push(keys.board_id)
                await poll(lambda: back.raw in writer.holds(keys.board_id))
                assert not reader.is_closed and not writer.is_closed
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()
    with psycopg.connect(pg_url) as con:
        tables = [r[0] for r in con.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()]
        for table in tables:
            dump = b"".join(str(row).encode() for row in
                            con.execute(f'SELECT * FROM "{table}"').fetchall())
            assert b"blankets" not in dump.lower() and b"north camp" not in dump.lower()
    assert len(db_envelopes(pg_url, keys.board_id)) == len(first) + 6


# ---------------------------------------------------------------------- concurrency


async def test_one_feed_uploaded_to_two_processes_at_once_is_stored_once(
        tmp_path: Path, pg_url: str) -> None:
    """Two members forward the same author's 3,000-envelope feed, in small batches, to
    process 1 and process 2 at the same moment. Every batch of both is acknowledged
    (no valid extension refused), every position is stored once, no fork or refusal is
    recorded, and both end in sync with the cluster."""
    keys = board_keys(21)
    envelopes = FeedWriter(keys).many(3000)
    cluster = ClusterProcesses(pg_url, tmp_path)
    try:
        with trio.fail_after(120):
            await cluster.wait()
            p1, p2 = cluster.procs
            async with trio.open_nursery() as nursery:
                one = await open_client(nursery, p1.hostport, member(keys, *envelopes),
                                        batch_bytes=4096)
                two = await open_client(nursery, p2.hostport, member(keys, *envelopes),
                                        batch_bytes=4096)
                await poll(lambda: one.in_sync(keys.board_id) and two.in_sync(keys.board_id),
                           0.05)
                await poll(lambda: len(one.acked) == len(one.sent_batches)
                           and len(two.acked) == len(two.sent_batches), 0.05)
                assert not one.refused and not two.refused
                assert not one.is_closed and not two.is_closed
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()
    positions = db_positions(pg_url, keys.board_id)
    assert len(positions) == len(set(positions)) == 3000
    assert db_envelopes(pg_url, keys.board_id) == raws(envelopes)
    assert db_forks(pg_url, keys.board_id) == []
    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT COUNT(*) FROM rejections").fetchone() == (0,)


async def test_forgeries_refused_and_a_fork_recorded_once_across_processes(
        tmp_path: Path, pg_url: str) -> None:
    """A holder on process 1 has version 1 of an author's feed (1-3); two uploaders on
    process 2 and process 1 send version 2 (another seq 2) at once: the fork proof is
    recorded once, the feed is cut back to seq 1 in the database, and the watcher on
    process 1 learns the fork. A forgery sent to process 2 is refused and its sender
    dropped; nothing of it is stored."""
    keys = board_keys(22)
    good = FeedWriter(keys)
    good.many(3)
    twin = FeedWriter(keys, good.author_key)
    twin.envelopes = good.envelopes[:1]
    twin.many(2, b"another history")
    cluster = ClusterProcesses(pg_url, tmp_path)
    try:
        with trio.fail_after(60):
            await cluster.wait()
            p1, p2 = cluster.procs
            async with trio.open_nursery() as nursery:
                holder = await open_client(nursery, p1.hostport, member(keys, *good.envelopes))
                await poll(lambda: holder.in_sync(keys.board_id))
                watcher = await open_client(nursery, p1.hostport, member(keys))
                await poll(lambda: len(watcher.holds(keys.board_id)) == 3)
                forger = await open_client(nursery, p2.hostport, member(keys))
                await poll(lambda: len(forger.holds(keys.board_id)) == 3)
                forged = _flip(good.next().raw, HEADER_BYTES + 2)
                await forger.inject(keys.board_id, [forged])
                await forger.closed.wait()
                assert forger.close_reason == "bad-signature"
                ups = [await open_client(nursery, p.hostport, member(keys, *twin.envelopes))
                       for p in (p2, p1)]
                for client in (watcher, *ups):
                    await poll(lambda c=client: c.replica.forked(keys.board_id)  # type: ignore[misc]
                               == {good.author: 2})
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()
    assert db_forks(pg_url, keys.board_id) == [(good.author, 2)]
    assert db_envelopes(pg_url, keys.board_id) == {good.envelopes[0].raw}


# ---------------------------------------------------------------------- limits


async def test_board_cap_holds_for_the_cluster(tmp_path: Path, pg_url: str) -> None:
    """With a 40 KiB per-board cap, two clients on two processes upload 30 KiB each to
    one board at once: the cluster stores at most 40 KiB of it, one is told board-full,
    and neither is dropped."""
    keys = board_keys(23)
    feeds = [FeedWriter(keys).many(60, b"x" * 400) for _ in range(2)]
    cluster = ClusterProcesses(pg_url, tmp_path, extra=["--max-board-mib", str(40 / 1024)])
    try:
        with trio.fail_after(60):
            await cluster.wait()
            async with trio.open_nursery() as nursery:
                clients = [await open_client(nursery, p.hostport, member(keys, *f),
                                             batch_bytes=64 * 1024)
                           for p, f in zip(cluster.procs, feeds, strict=True)]
                await poll(lambda: sum(len(c.refused) for c in clients) >= 1
                           and all(c.acked or c.refused for c in clients), 0.05)
                await trio.sleep(0.5)
                codes = {r.code for c in clients for r in c.refused}
                assert codes == {RefusedCode.BOARD_FULL}
                assert not any(c.is_closed for c in clients)
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()
    stored = db_envelopes(pg_url, keys.board_id)
    assert 0 < sum(len(r) for r in stored) <= 40 * 1024
    with psycopg.connect(pg_url) as con:
        row = con.execute("SELECT bytes FROM board_bytes WHERE board_id = %s",
                          (keys.board_id,)).fetchone()
        assert row == (sum(len(r) for r in stored),)


# ---------------------------------------------------------------------- crashes


async def test_sigkilled_process_loses_nothing_acknowledged_and_the_client_resumes_via_the_other(
        tmp_path: Path, pg_url: str) -> None:
    """Process 1 is SIGKILLed right after its 60th Ack of a 4,000-envelope upload in
    small batches: the database holds every acknowledged envelope; the client resumes
    through process 2 and the cluster ends up with the whole upload."""
    keys = board_keys(24)
    envelopes = [e for _ in range(4) for e in FeedWriter(keys).many(1000)]
    replica = member(keys, *envelopes)
    cluster = ClusterProcesses(pg_url, tmp_path)
    try:
        with trio.fail_after(90):
            await cluster.wait()
            p1, p2 = cluster.procs
            acks = 0

            def kill_at_60th_ack(message: object) -> None:
                nonlocal acks
                if isinstance(message, Ack):
                    acks += 1
                    if acks == 60:
                        p1.kill()

            async with trio.open_nursery() as nursery:
                client = await open_client(nursery, p1.hostport, replica, batch_bytes=2048)
                client.on_message = kill_at_60th_ack
                await client.closed.wait()
            assert await p1.wait() == -9
            acked = client.acked_envelopes()
            assert len(acked) >= 300 and len(acked) < len(envelopes), "not mid-upload"
            missing = acked - db_envelopes(pg_url, keys.board_id)
            assert not missing, f"{len(missing)} acknowledged envelopes lost"
            async with trio.open_nursery() as nursery:
                resumed = await open_client(nursery, p2.hostport, replica)
                await poll(lambda: resumed.in_sync(keys.board_id), 0.05)
                await resumed.aclose()
    finally:
        await cluster.stop()
    assert db_envelopes(pg_url, keys.board_id) == raws(envelopes)


async def test_postgresql_restart_during_uploads(tmp_path: Path, pg_cluster: PgCluster,
                                                 new_pg_url: object) -> None:
    """PostgreSQL restarts (fast shutdown: every connection cut) while a client uploads
    4,000 envelopes to process 1. Nothing acknowledged is lost; the processes stay up and
    reconnect by themselves; the client reconnects and finishes; and afterwards a live
    push still crosses from process 1 to a reader on process 2 (LISTEN is back)."""
    url = new_pg_url()  # type: ignore[operator]
    keys = board_keys(25)
    envelopes = [e for _ in range(4) for e in FeedWriter(keys).many(1000)]
    replica = member(keys, *envelopes)
    cluster = ClusterProcesses(url, tmp_path)
    try:
        with trio.fail_after(120):
            await cluster.wait()
            p1, p2 = cluster.procs
            acks = 0
            restarted = trio.Event()

            def count(message: object) -> None:
                nonlocal acks
                if isinstance(message, Ack):
                    acks += 1

            async with trio.open_nursery() as nursery:
                client = await open_client(nursery, p1.hostport, replica, batch_bytes=2048)
                client.on_message = count
                await poll(lambda: acks >= 40)
                await trio.to_thread.run_sync(pg_cluster.restart)
                restarted.set()
                with trio.move_on_after(20):
                    await poll(lambda: client.is_closed or client.in_sync(keys.board_id))
                acked = client.acked_envelopes()
                nursery.cancel_scope.cancel()
            assert not acked - db_envelopes(url, keys.board_id), "acknowledged envelopes lost"
            async with trio.open_nursery() as nursery:
                resumed = None
                while resumed is None:  # the client's backoff
                    try:
                        resumed = await open_client(nursery, p1.hostport, replica)
                    except Exception:  # the relay is still reconnecting
                        await trio.sleep(0.5)
                await poll(lambda: resumed.in_sync(keys.board_id), 0.05)
                reader = await open_client(nursery, p2.hostport, member(keys))
                await poll(lambda: len(reader.holds(keys.board_id)) == 4000, 0.05)
                late = FeedWriter(keys).next()
                resumed.replica.write(keys.board_id, [late])
                await resumed.push(keys.board_id)
                await poll(lambda: late.raw in reader.holds(keys.board_id))
                nursery.cancel_scope.cancel()
            assert p1.proc.poll() is None and p2.proc.poll() is None
    finally:
        await cluster.stop()
    assert db_envelopes(url, keys.board_id) >= raws(envelopes)


# ---------------------------------------------------------------------- failover


async def test_nodes_keep_syncing_through_the_other_process_when_one_is_killed(
        tmp_path: Path, pg_url: str) -> None:
    """Two nodes know both addresses of a two-process relay (one key: a node keeps one
    connection to it). Both sync through process 1 while process 2 is still starting;
    process 1 is SIGKILLed: the nodes reconnect to process 2 within their backoff and
    posts still arrive, both ways."""
    cluster = ClusterProcesses(pg_url, tmp_path, count=1)
    port2 = free_port()
    try:
        with trio.fail_after(90):
            await cluster.wait()
            p1 = cluster.procs[0]
            assert p1.address is not None
            second = RelayAddress(LOCALHOST, port2, p1.address.key)
            both = [str(p1.address), str(second)]
            with open_store(tmp_path / "a") as store:
                invite = store.create_board("Camp", display_name="alice").invite(relays=[])
                for address in both:
                    store.add_relay(address)
            with open_store(tmp_path / "b") as store:
                store.join(invite, display_name="bob")
                for address in both:
                    store.add_relay(address)
            async with trio.open_nursery() as nursery:
                a = await start_node(nursery, tmp_path / "a", listen=False)
                b = await start_node(nursery, tmp_path / "b", listen=False)
                ab, bb = a.node.board(), b.node.board()
                await wait_until(lambda: len(a.node.peers()) == len(b.node.peers()) == 1)
                await ab.post_need("Tents")
                await wait_until(lambda: "Tents" in titles(bb))
                cluster.procs.append(cluster.spawn(1, port=port2))
                await cluster.procs[1].wait_address()
                p1.kill()
                await ab.post_need("Blankets")
                await wait_until(lambda: "Blankets" in titles(bb))
                await bb.post_offer("Truck")
                await wait_until(lambda: titles(ab) == {"Tents", "Blankets", "Truck"})
                await a.stop()
                await b.stop()
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()


# ---------------------------------------------------------------------- operations


async def test_migrate_status_and_schema_versions(tmp_path: Path, pg_cluster: PgCluster) -> None:
    """``relay migrate`` creates the tables (and is a no-op the second time); a process
    refuses an unmigrated database and a newer schema, naming what to do; ``relay status
    --store`` shows both processes and their connections, boards, envelopes and bytes."""
    url = pg_cluster.new_database()
    key = tmp_path / "k"
    done = cli("--data-dir", str(tmp_path / "keysrc"), "relay", "key", "export")
    assert done.returncode == 0, done.stderr
    key.write_text(done.stdout)
    key.chmod(0o600)
    with trio.fail_after(60):
        early = RelayProcess(tmp_path / "d", tmp_path / "logs",
                             extra=["--store", url, "--key-file", str(key)])
        assert await early.wait() != 0
        assert "relay migrate" in early.stderr()
        first = cli("relay", "migrate", "--store", url)
        assert first.returncode == 0 and "version 1" in first.stdout, first.stderr
        again = cli("relay", "migrate", "--store", url)
        assert "nothing to do" in again.stdout
        cluster = ClusterProcesses(url, tmp_path / "c")
        try:
            await cluster.wait()
            keys = board_keys(26)
            envelopes = FeedWriter(keys).many(5)
            async with trio.open_nursery() as nursery:
                await open_client(nursery, cluster.procs[0].hostport, member(keys, *envelopes))
                c2 = await open_client(nursery, cluster.procs[1].hostport, member(keys))
                await poll(lambda: len(c2.holds(keys.board_id)) == 5)
                await trio.sleep(2.5)  # a heartbeat
                status = json.loads(cli("relay", "status", "--store", url, "--json").stdout)
                nursery.cancel_scope.cancel()
            assert len(status["processes"]) == 2
            assert sorted(p["connections"] for p in status["processes"]) == [1, 1]
            assert status["envelopes"] == 5 and status["boards"][0]["board"] == keys.board_id.hex()
            assert status["bytes"] == sum(len(e.raw) for e in envelopes)
        finally:
            await cluster.stop()
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("UPDATE p2paid_schema SET version = 99")
        newer = RelayProcess(tmp_path / "d", tmp_path / "logs",
                             extra=["--store", url, "--key-file", str(key)])
        assert await newer.wait() != 0
        assert "newer than this p2paid" in newer.stderr()


# ---------------------------------------------------------------------- load


async def test_load_200_clients_on_20_boards_across_two_processes(
        tmp_path: Path, pg_url: str) -> None:
    """The SQLite relay's load test on a cluster: 200 concurrent clients (20 boards x 10,
    each posting 3 envelopes of its own author), every other client of a board on the
    other process; every client converges to everything posted to its board (so half of
    it arrived through the other process), and no process logs a warning or an error."""
    n_boards, per_board, posts = 20, 10, 3
    boards = [board_keys(200 + i) for i in range(n_boards)]
    expected: dict[bytes, set[bytes]] = {k.board_id: set() for k in boards}
    cluster = ClusterProcesses(pg_url, tmp_path, levels=True)
    try:
        with trio.fail_after(120):
            await cluster.wait()
            async with trio.open_nursery() as nursery:
                clients: list[tuple[bytes, object]] = []

                async def connect(keys: BoardKeys, k: int) -> None:
                    envs = FeedWriter(keys).many(posts)
                    expected[keys.board_id] |= raws(envs)
                    client = await open_client(
                        nursery, cluster.procs[k % 2].hostport, member(keys, *envs),
                        local_address=f"127.0.{10 + k // 4}.1")
                    clients.append((keys.board_id, client))

                async with trio.open_nursery() as connecting:
                    for i, keys in enumerate(boards):
                        for j in range(per_board):
                            connecting.start_soon(connect, keys, i * per_board + j)
                await poll(lambda: all(c.holds(b) == expected[b]  # type: ignore[attr-defined]
                                       for b, c in clients), 0.05)
                for _, c in clients:
                    assert not c.is_closed and not c.refused  # type: ignore[attr-defined]
                nursery.cancel_scope.cancel()
    finally:
        await cluster.stop()
    for proc in cluster.procs:
        bad = [line for line in proc.stderr().splitlines()
               if line.startswith(("WARNING", "ERROR", "CRITICAL")) or "Traceback" in line]
        assert not bad, bad[:5]
    for keys in boards:
        assert db_envelopes(pg_url, keys.board_id) == expected[keys.board_id]
