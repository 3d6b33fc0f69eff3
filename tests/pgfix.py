"""pytest fixtures for the PostgreSQL tests: one throwaway server per session
(:class:`pg_helpers.PgCluster`) and a fresh database per use, migrated to the current
schema. A test that needs PostgreSQL skips, with the reason, when the server cannot run
here (no binaries, no way to start it)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pg_helpers import PgCluster, PgUnavailable

__all__ = ["new_pg_url", "pg_cluster", "pg_url"]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """The session's PostgreSQL server (started on first use)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'p2paid[postgresql]')")
    try:
        cluster = PgCluster()
        cluster.start()
    except PgUnavailable as exc:
        pytest.skip(f"PostgreSQL is unavailable here: {exc}")
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def new_pg_url(pg_cluster: PgCluster) -> Callable[[], str]:
    """Makes a fresh database, migrated to the current relay schema; its URL."""
    from p2paid.storage.pg.schema import migrate

    def make() -> str:
        url = pg_cluster.new_database()
        migrate(url)
        return url

    return make


@pytest.fixture
def pg_url(new_pg_url: Callable[[], str]) -> str:
    """A fresh, migrated database."""
    return new_pg_url()
