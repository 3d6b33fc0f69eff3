"""The status a running node publishes in its data dir (``p2paid status``, ``peers``).

The format and its freshness rule are :mod:`p2paid.storage.runtime`'s; this module
keeps it written while the node runs and clears it when the node stops.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import final

import trio

from p2paid.board.store import Store, open_store
from p2paid.storage.protect import CredentialSource
from p2paid.storage.runtime import STATUS_INTERVAL, encode_runtime, fresh_runtime

__all__ = ["StatusPublisher", "read_runtime"]


@final
class StatusPublisher:
    """Writes ``status()`` to the store every :data:`STATUS_INTERVAL` seconds.

    Args:
        store: the node's store.
        status: what to publish (JSON-serialisable).
    """

    def __init__(self, store: Store, status: Callable[[], Mapping[str, object]]) -> None:
        self._store = store
        self._status = status

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Publish until cancelled, then clear what was published."""
        task_status.started()
        try:
            while True:
                self._store.write_runtime(encode_runtime(self._status()))
                await trio.sleep(STATUS_INTERVAL)
        finally:
            with contextlib.suppress(Exception):  # (the store may be failing already)
                self._store.write_runtime(b"{}")


def read_runtime(data_dir: str | os.PathLike[str], credentials: CredentialSource = None
                 ) -> dict[str, object] | None:
    """The status a running node last published in ``data_dir`` (None if none runs)."""
    with open_store(Path(data_dir), create=False, credentials=credentials) as store:
        return fresh_runtime(store.read_runtime())
