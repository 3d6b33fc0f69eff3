"""p2paid: a peer-to-peer board of needs and offers for mutual-aid groups.

The synchronous API (:func:`open_store`, :class:`Store`, :class:`Board`) works
on a data dir; the async node (:func:`open_node`) adds live sync over the
network. See README.md for a tour and ``protocol/SPEC.md`` for the wire format.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .board import Board as Board
from .board import ReceiveReport as ReceiveReport
from .errors import AmbiguousIdError as AmbiguousIdError
from .errors import BundleError as BundleError
from .errors import EnvelopeError as EnvelopeError
from .errors import InviteError as InviteError
from .errors import LocalProtocolError as LocalProtocolError
from .errors import NotFoundError as NotFoundError
from .errors import P2paidError as P2paidError
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import StorageError as StorageError
from .errors import UsageError as UsageError
from .errors import ValidationError as ValidationError
from .invite import Invite as Invite
from .local import ImportReport as ImportReport
from .local import Store as Store
from .local import default_data_dir as default_data_dir
from .local import open_store as open_store
from .model import BoardEvent as BoardEvent
from .model import Category as Category
from .model import Claim as Claim
from .model import ClaimStatus as ClaimStatus
from .model import EventKind as EventKind
from .model import Item as Item
from .model import ItemKind as ItemKind
from .model import Status as Status
from .model import Urgency as Urgency

if TYPE_CHECKING:
    from .asyncboard import AsyncBoard as AsyncBoard
    from .node import Node as Node
    from .node import PeerInfo as PeerInfo
    from .node import open_node as open_node

__version__ = "0.2.0"

#: The async node lives above the sans-I/O line; import it (and trio) only when used,
#: so that ``import p2paid`` for the synchronous library stays free of trio.
_LAZY = {"AsyncBoard": "asyncboard", "Node": "node", "PeerInfo": "node", "open_node": "node"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2paid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value

__all__ = [
    "AmbiguousIdError",
    "AsyncBoard",
    "Board",
    "BoardEvent",
    "BundleError",
    "Category",
    "Claim",
    "ClaimStatus",
    "EnvelopeError",
    "EventKind",
    "ImportReport",
    "Invite",
    "InviteError",
    "Item",
    "ItemKind",
    "LocalProtocolError",
    "Node",
    "NotFoundError",
    "P2paidError",
    "PeerInfo",
    "ReceiveReport",
    "RemoteProtocolError",
    "Status",
    "StorageError",
    "Store",
    "Urgency",
    "UsageError",
    "ValidationError",
    "default_data_dir",
    "open_node",
    "open_store",
]
