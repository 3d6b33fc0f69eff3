"""p2paid: a peer-to-peer board of needs and offers for mutual-aid groups.

The synchronous API (:func:`open_store`, :class:`Store`, :class:`Board`) works
on a data dir; the async node (:func:`open_node`) adds live sync over the
network. See README.md for a tour and ``protocol/SPEC.md`` for the wire format.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from p2paid.errors import AmbiguousIdError as AmbiguousIdError
from p2paid.errors import BundleError as BundleError
from p2paid.errors import DataDirBusyError as DataDirBusyError
from p2paid.errors import EnvelopeError as EnvelopeError
from p2paid.errors import EventsLostError as EventsLostError
from p2paid.errors import FileError as FileError
from p2paid.errors import InviteError as InviteError
from p2paid.errors import ListenError as ListenError
from p2paid.errors import LocalProtocolError as LocalProtocolError
from p2paid.errors import NotFoundError as NotFoundError
from p2paid.errors import P2paidError as P2paidError
from p2paid.errors import RemoteProtocolError as RemoteProtocolError
from p2paid.errors import RevokedDeviceError as RevokedDeviceError
from p2paid.errors import StorageError as StorageError
from p2paid.errors import UsageError as UsageError
from p2paid.errors import ValidationError as ValidationError

if TYPE_CHECKING:
    from p2paid.board.board import Board as Board
    from p2paid.board.board import ReceiveReport as ReceiveReport
    from p2paid.board.deviceboard import DeviceBoard as DeviceBoard
    from p2paid.board.model import BoardEvent as BoardEvent
    from p2paid.board.model import Category as Category
    from p2paid.board.model import Claim as Claim
    from p2paid.board.model import ClaimStatus as ClaimStatus
    from p2paid.board.model import EventKind as EventKind
    from p2paid.board.model import Item as Item
    from p2paid.board.model import ItemKind as ItemKind
    from p2paid.board.model import Status as Status
    from p2paid.board.model import Urgency as Urgency
    from p2paid.board.store import ImportReport as ImportReport
    from p2paid.board.store import Store as Store
    from p2paid.board.store import default_data_dir as default_data_dir
    from p2paid.board.store import open_store as open_store
    from p2paid.core.invite import Invite as Invite
    from p2paid.node.asyncboard import AsyncBoard as AsyncBoard
    from p2paid.node.asyncboard import AsyncDeviceBoard as AsyncDeviceBoard
    from p2paid.node.node import Node as Node
    from p2paid.node.node import PeerInfo as PeerInfo
    from p2paid.node.node import open_node as open_node
    from p2paid.storage.devices import Device as Device

__version__ = "0.2.0"

#: Where each public name lives. They are imported on first use, so that importing
#: one layer (a relay, say, which needs no Automerge, or the synchronous library,
#: which needs no trio) does not load the others.
_LAZY = {
    "Board": "board.board", "ReceiveReport": "board.board",
    "BoardEvent": "board.model", "Category": "board.model", "Claim": "board.model",
    "ClaimStatus": "board.model", "EventKind": "board.model", "Item": "board.model",
    "ItemKind": "board.model", "Status": "board.model", "Urgency": "board.model",
    "ImportReport": "board.store", "Store": "board.store",
    "default_data_dir": "board.store", "open_store": "board.store",
    "DeviceBoard": "board.deviceboard", "Device": "storage.devices",
    "Invite": "core.invite",
    "AsyncBoard": "node.asyncboard", "AsyncDeviceBoard": "node.asyncboard",
    "Node": "node.node", "PeerInfo": "node.node", "open_node": "node.node",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'p2paid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"p2paid.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

__all__ = [
    "AmbiguousIdError",
    "AsyncBoard",
    "Board",
    "BoardEvent",
    "BundleError",
    "Category",
    "Claim",
    "ClaimStatus",
    "DataDirBusyError",
    "EnvelopeError",
    "EventKind",
    "EventsLostError",
    "FileError",
    "ImportReport",
    "Invite",
    "InviteError",
    "Item",
    "ItemKind",
    "ListenError",
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
