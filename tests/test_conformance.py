"""The port conformance suites, run against every implementation in the tree.

``check_envelope_store`` runs against the SQLite :class:`Database`; ``check_replica``
against the node's :class:`StoreReplica`, the relay's :class:`RelayReplica` and the
tests' :class:`MemoryReplica`. A new implementation (the PostgreSQL relay store, say)
joins by adding a factory here.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, cast

import pytest
from hostile_helpers import HostileMember
from replication_helpers import MemoryReplica

from p2paid.board.store import Store
from p2paid.core.conformance import (
    REPLICA_CHECKS,
    ConformanceError,
    ReplicaFixture,
    check_refusals,
    check_replica,
)
from p2paid.core.identity import AuthorKey
from p2paid.core.replication import Received, Replica
from p2paid.node.replica import StoreReplica
from p2paid.relay.replica import RelayLimits, RelayReplica
from p2paid.storage.base import EnvelopeStore
from p2paid.storage.conformance import (
    ENVELOPE_STORE_CHECKS,
    StoreFixture,
    check_envelope_store,
)
from p2paid.storage.sqlite import Database

# ------------------------------------------------------------------ envelope stores


@contextmanager
def sqlite_store(path: Path) -> Iterator[StoreFixture]:
    handles = [Database(path)]

    def reopen() -> Database:
        handles[-1].close()
        handles.append(Database(path))
        return handles[-1]

    try:
        yield StoreFixture(handles[0], reopen)
    finally:
        handles[-1].close()


@pytest.mark.parametrize("check", ENVELOPE_STORE_CHECKS, ids=lambda c: c.__name__)
def test_sqlite_envelope_store(tmp_path: Path, check: Callable[[StoreFixture], None]) -> None:
    with sqlite_store(tmp_path / "db") as fixture:
        check(fixture)


def test_envelope_store_suite_runs_every_check(tmp_path: Path) -> None:
    dirs = (tmp_path / str(i) for i in itertools.count())
    names = list(check_envelope_store(lambda: sqlite_store(next(dirs))))
    assert names == [c.__name__ for c in ENVELOPE_STORE_CHECKS]


def test_envelope_store_suite_catches_a_store_that_forgets_rollback(tmp_path: Path) -> None:
    """The suite can fail: a store whose writes commit as they go is caught."""

    class NoRollback:
        """A Database whose writes are no transactions: each statement commits alone."""

        def __init__(self, db: Database) -> None:
            self._inner = db

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def write(self) -> AbstractContextManager[None]:
            return nullcontext()

    dirs = (tmp_path / str(i) for i in itertools.count())

    @contextmanager
    def broken() -> Iterator[StoreFixture]:
        db = Database(next(dirs))
        try:
            yield StoreFixture(cast(EnvelopeStore, NoRollback(db)))
        finally:
            db.close()

    with pytest.raises(ConformanceError, match=r"nothing behind|stored nothing"):
        list(check_envelope_store(broken))


# ------------------------------------------------------------------ replicas


class Feeds:
    """Feeds of test authors on one board, made by members that write real Automerge
    changes (so that a member's replica accepts them), cached so that every call
    returns the same bytes."""

    def __init__(self, root: Path, invite: str) -> None:
        self._root = root
        self._invite = invite
        self._writers: dict[tuple[int, int], HostileMember] = {}
        self._stores: list[Store] = []

    def __call__(self, author: int, count: int, variant: int) -> list[bytes]:
        writer = self._writers.get((author, variant))
        if writer is None:
            store = Store(self._root / f"a{author}v{variant}")
            self._stores.append(store)
            key = AuthorKey(bytes([author + 1]) * 32)
            writer = self._writers[author, variant] = HostileMember(
                store, self._invite, author_key=key)
        while len(writer.envelopes) < count:
            writer.post({"title": f"item {len(writer.envelopes)} of variant {variant}"})
        return writer.envelopes[:count]

    def close(self) -> None:
        for store in self._stores:
            store.close()


@contextmanager
def replica_fixture(root: Path, kind: str, pg_url: str | None = None) -> Iterator[ReplicaFixture]:
    with Store(root / "founder") as founder:
        invite = founder.create_board("Aid").invite()
        foreign_invite = founder.create_board("Elsewhere").invite()
    feeds = Feeds(root / "feeds", invite)
    foreign = Feeds(root / "foreign", foreign_invite)(0, 1, 0)[0]
    closers: list[Callable[[], None]] = [feeds.close]
    replica: Replica
    try:
        if kind == "node":
            store = Store(root / "node")
            closers.append(store.close)
            board = store.join(invite)
            board_id = bytes(board.id)
            replica = StoreReplica(store)
        elif kind == "relay":
            db = Database(root / "relay")
            closers.append(db.close)
            board_id = bytes(feeds(0, 1, 0)[0][1:33])
            replica = RelayReplica.open(db, RelayLimits())
        elif kind == "cluster":
            from p2paid.relay.cluster import ClusterReplica
            from p2paid.storage.pg.store import PgStore

            assert pg_url is not None
            pg = PgStore(pg_url, pool_size=2)
            closers.append(pg.close)
            board_id = bytes(feeds(0, 1, 0)[0][1:33])
            replica = ClusterReplica(pg, RelayLimits(), "test")
        else:
            with Store(root / "keys") as keys_store:
                keys = keys_store.join(invite).keys
            memory = MemoryReplica("node")
            memory.add_board(keys)
            board_id, replica = keys.board_id, memory
        yield ReplicaFixture(replica, board_id, feeds, foreign)
    finally:
        for close in reversed(closers):
            close()


KINDS = ("node", "relay", "memory", "cluster")


@pytest.mark.parametrize("check", REPLICA_CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_replica(tmp_path: Path, kind: str, check: Callable[[ReplicaFixture], None],
                 request: pytest.FixtureRequest) -> None:
    """``cluster``: a relay process's replica on PostgreSQL."""
    url = request.getfixturevalue("pg_url") if kind == "cluster" else None
    with replica_fixture(tmp_path, kind, url) as fixture:
        check(fixture)


def test_replica_suite_runs_every_check(tmp_path: Path) -> None:
    dirs = (tmp_path / str(i) for i in itertools.count())
    names = list(check_replica(lambda: replica_fixture(next(dirs), "relay")))
    assert names == [c.__name__ for c in REPLICA_CHECKS]


def test_replica_suite_catches_a_replica_that_stores_forgeries(tmp_path: Path) -> None:
    """The suite can fail: a relay that skips signature checks is caught."""

    class Credulous(MemoryReplica):
        def receive(self, board_id: bytes, envelopes: Sequence[bytes]) -> Received:
            got = super().receive(board_id, envelopes)
            got.rejected = []
            return got

    @contextmanager
    def broken() -> Iterator[ReplicaFixture]:
        with replica_fixture(tmp_path, "memory") as fx:
            replica = Credulous("node")
            replica._boards = fx.replica._boards  # type: ignore[attr-defined]
            yield ReplicaFixture(replica, fx.board_id, fx.feed, fx.foreign)

    with pytest.raises(ConformanceError, match="refused"), broken() as fixture:
        check_refusals(fixture)


# ------------------------------------------------------------------ PostgreSQL


@contextmanager
def pg_store(url: str) -> Iterator[StoreFixture]:
    from p2paid.storage.pg.store import PgStore

    handles = [PgStore(url, pool_size=2)]

    def reopen() -> PgStore:
        handles[-1].close()
        handles.append(PgStore(url, pool_size=2))
        return handles[-1]

    try:
        yield StoreFixture(handles[0], reopen)
    finally:
        handles[-1].close()


@pytest.mark.parametrize("check", ENVELOPE_STORE_CHECKS, ids=lambda c: c.__name__)
def test_postgresql_envelope_store(pg_url: str, check: Callable[[StoreFixture], None]) -> None:
    with pg_store(pg_url) as fixture:
        check(fixture)

