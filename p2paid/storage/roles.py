"""Whose data dir it is: a node's or a relay's, never both.

A relay and a node keep their stores in the same SQLite schema, and each its
transport key under the same meta key, so one on the other's data dir would take
over its key and mix its envelopes in. A relay marks its data dir (meta ``role``)
when it first opens it; a node's data dir is one with boards or a node key and no
such mark. Each side refuses the other's.
"""

from __future__ import annotations

import os
from typing import Final

from p2paid.errors import UsageError
from p2paid.storage.sqlite import Database

__all__ = ["NODE_KEY", "RELAY", "ROLE_KEY", "claim_for_relay", "refuse_relay_dir"]

ROLE_KEY: Final = "role"
RELAY: Final = b"relay"
#: The meta key of the transport key, a node's or a relay's.
NODE_KEY: Final = "node_key"


def refuse_relay_dir(db: Database, data_dir: str | os.PathLike[str]) -> None:
    """For a node (or the CLI's board commands).

    Raises:
        UsageError: a relay uses this data dir.
    """
    if db.get_meta(ROLE_KEY) == RELAY:
        raise UsageError(f"{data_dir} is a relay's data dir; give the node its own "
                         "(--data-dir DIR)")


def claim_for_relay(db: Database, data_dir: str | os.PathLike[str]) -> None:
    """Mark a new data dir as a relay's; accept one that already is.

    Raises:
        UsageError: a node uses this data dir (it has boards or a node key), or it
            is marked for something else.
    """
    role = db.get_meta(ROLE_KEY)
    if role == RELAY:
        return
    if role is None:
        if db.boards() or db.get_meta(NODE_KEY) is not None:
            raise UsageError(f"{data_dir} is a node's data dir; give the relay its own "
                             "(--data-dir DIR)")
        db.set_meta(ROLE_KEY, RELAY)
        return
    raise UsageError(f"{data_dir} is not a relay's data dir; give the relay its own "
                     "(--data-dir DIR)")
