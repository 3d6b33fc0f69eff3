"""Benchmark child: one relay-cluster process's ingest of one author's feed, in PostgreSQL.

``python -m p2paid.bench.relay_ingester URL COUNT``: makes ``COUNT`` envelopes of a new
author on a new board (not timed), prints ``ready``, and on the next stdin line stores them
through a :class:`~p2paid.relay.cluster.ClusterReplica` in batches as a client sends them
(signature, chain, quota and cap checks, durable commit), then prints wall-clock stamps.
"""

from __future__ import annotations

import sys
import time

from p2paid.bench.child import say
from p2paid.bench.main import make_feed
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import derive_board_keys, new_board_secret
from p2paid.core.replication import DEFAULT_BATCH_BYTES
from p2paid.relay.cluster import ClusterReplica
from p2paid.relay.replica import RelayLimits
from p2paid.storage.pg.store import PgStore

__all__ = ["batches", "main"]


def batches(raws: list[bytes]) -> list[list[bytes]]:
    """Envelopes cut into batches of at most DEFAULT_BATCH_BYTES, as a client sends them."""
    out: list[list[bytes]] = [[]]
    size = 0
    for raw in raws:
        if size + len(raw) > DEFAULT_BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(raw)
        size += len(raw)
    return out


def main(argv: list[str]) -> None:
    url, count = argv[0], int(argv[1])
    keys = derive_board_keys(new_board_secret())
    feed = [e.raw for e in make_feed(keys, AuthorKey.generate(), count)]
    store = PgStore(url, pool_size=2)
    try:
        replica = ClusterReplica(store, RelayLimits(), f"bench-{count}")
        say({"ready": True})
        sys.stdin.readline()
        start = time.time()
        stored = sum(replica.receive(keys.board_id, b).stored for b in batches(feed))
        say({"start": start, "end": time.time(), "stored": stored})
    finally:
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
