"""The tests' throwaway PostgreSQL server: :mod:`p2paid.bench.pgserver` (the benchmarks
start one the same way)."""

from p2paid.bench.pgserver import PgCluster, PgUnavailable, find_pg_bin

__all__ = ["PgCluster", "PgUnavailable", "find_pg_bin"]
