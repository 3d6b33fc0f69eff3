"""A joined board as one paired device: a member of its own, whose key the node holds.

Obtain it from :meth:`p2paid.Board.as_device`. It shares the board's document and
log with the node's own member (and with every other device), but writes as the
device: in the device's section, as the next change of the device's own feed,
depending only on the device's previous change and signed with its key. So the
node's member and its devices are different members: each can claim the others'
needs and offers, and each shows its own fingerprint.

Each write first checks, under the store's write lock, that the device has not
been revoked since (by this process or another on the same data dir).
"""

from __future__ import annotations

from typing import final

from p2paid.board.log import BoardLog, Clock
from p2paid.board.member import MemberBoard
from p2paid.core.identity import AuthorKey
from p2paid.core.invite import BoardId
from p2paid.storage.devices import Device, DeviceRegistry

__all__ = ["DeviceBoard"]


@final
class DeviceBoard(MemberBoard):
    """The board's domain API (:class:`~p2paid.board.member.MemberBoard`) as one
    paired device. Replication, relays and invites stay with
    :class:`~p2paid.board.board.Board`."""

    def __init__(self, log: BoardLog, device: Device, key: AuthorKey,
                 devices: DeviceRegistry, clock: Clock) -> None:
        self.id = BoardId(log.id)
        self.name = log.name
        #: the device, as it was when this was made
        self.device = device
        self.author = device.author
        self._author_key = key
        self._log = log
        self._clock = clock
        self._devices = devices

    def __repr__(self) -> str:
        return f"<DeviceBoard {self.name!r} as device {self.device.name!r} ({self.device.id})>"

    def _authorize(self) -> None:
        self._devices.active(self.device.id)  # raises RevokedDeviceError once revoked
