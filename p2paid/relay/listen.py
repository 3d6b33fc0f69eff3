"""``LISTEN`` for a relay process: learn at once what other processes of the cluster stored.

One dedicated connection, in autocommit mode, waits on its socket in the event loop
(``trio.lowlevel.wait_readable``) and reads notifications with libpq's non-blocking calls,
so no thread sits blocked on it. A notification carries a board id and the process that
stored (``NOTIFY`` payloads are capped at 8,000 bytes, so envelopes are read from the
table by the sessions that need them). When the connection breaks (PostgreSQL restarted,
the network failed) it is opened again with backoff; whatever was notified meanwhile is
unknown, so ``on_resync`` is called once it is back: the relay then refreshes every board.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import psycopg
import trio

from p2paid.relay.cluster import CHANNEL, decode_notice
from p2paid.storage.pg.store import safe_url

__all__ = ["KEEPALIVES", "listen_for_envelopes"]

log = logging.getLogger("p2paid.relay.listen")

#: TCP keepalives for the relay's connections, so a dead server is noticed in ~25 s.
KEEPALIVES: Final[dict[str, Any]] = {"keepalives": 1, "keepalives_idle": 10,
                                      "keepalives_interval": 5, "keepalives_count": 3}
_BACKOFF: Final = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


async def listen_for_envelopes(
    url: str, origin: str, on_board: Callable[[bytes], None], on_resync: Callable[[], None],
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Call ``on_board(board_id)`` for each board another process stored into, until
    cancelled; ``task_status.started()`` once the first ``LISTEN`` is in place."""
    failures = 0
    started = False
    while True:
        try:
            con = await trio.to_thread.run_sync(_connect, url)
        except psycopg.Error as exc:
            delay = _BACKOFF[min(failures, len(_BACKOFF) - 1)]
            failures += 1
            log.warning("cannot listen on %s (%s); again in %.1f s", safe_url(url),
                        str(exc).strip() or type(exc).__name__, delay)
            await trio.sleep(delay)
            continue
        try:
            if started:
                log.info("listening on %s again", safe_url(url))
                on_resync()
            else:
                started = True
                task_status.started()
            failures = 0
            await _drain(con, origin, on_board)
        except psycopg.Error as exc:
            log.warning("lost the notifications connection (%s); reconnecting",
                        str(exc).strip() or type(exc).__name__)
        finally:
            con.close()


def _connect(url: str) -> psycopg.Connection[Any]:
    con = psycopg.connect(url, autocommit=True, connect_timeout=10, **KEEPALIVES)
    try:
        con.execute(f"LISTEN {CHANNEL}")
    except BaseException:
        con.close()
        raise
    return con


async def _drain(con: psycopg.Connection[Any], origin: str,
                 on_board: Callable[[bytes], None]) -> None:
    """Wait for notifications and hand them on, until the connection fails.

    Raises:
        psycopg.OperationalError: the connection broke.
    """
    pgconn = con.pgconn
    while True:
        await trio.lowlevel.wait_readable(pgconn.socket)
        pgconn.consume_input()
        boards: set[bytes] = set()
        while (note := pgconn.notifies()) is not None:
            parsed = decode_notice(note.extra.decode("ascii", "replace"))
            if parsed is not None and parsed[1] != origin:
                boards.add(parsed[0])
        if pgconn.status != psycopg.pq.ConnStatus.OK:
            raise psycopg.OperationalError("the server closed the connection")
        for board_id in boards:
            on_board(board_id)
