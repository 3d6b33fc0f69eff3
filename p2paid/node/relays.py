"""The node's relays: which to dial for which boards, kept in step with the store.

The plan (:func:`~p2paid.board.relayplan.plan_relays`) and the diff
(:func:`~p2paid.board.relayplan.relay_changes`) are pure; this module only applies
them to the :class:`~p2paid.net.peers.Dialer`, every few seconds and whenever this
process changes a board's relays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final, final

import trio

from p2paid.board.relayplan import RelayTarget, plan_relays, relay_changes, relay_targets
from p2paid.board.store import Store
from p2paid.core.codes import DialSource
from p2paid.core.text import plural
from p2paid.errors import P2paidError
from p2paid.net.peers import Dialer, DialTarget

__all__ = ["RELAY_REFRESH_INTERVAL", "RelayDialing"]

log = logging.getLogger("p2paid.node.relays")

#: How often the store is read for relays another process configured or accepted.
RELAY_REFRESH_INTERVAL: Final = 5.0


@final
class RelayDialing:
    """Dials the relays the store's plan names; redials one whose key, token or set of
    boards changed.

    Args:
        store: where relays are configured and boards keep theirs.
        dialer: the node's dialer.
        drop_peer: closes the connection to a node id, if any (a relay that is redialled
            with other boards must announce them in a new Hello).
    """

    def __init__(self, store: Store, dialer: Dialer,
                 drop_peer: Callable[[bytes], None]) -> None:
        self._store = store
        self._dialer = dialer
        self._drop_peer = drop_peer
        self._dialing: dict[tuple[str, int], RelayTarget] = {}

    def plan(self) -> dict[str, frozenset[bytes]]:
        """Which boards to sync through which relay: configured relays (for all or some
        boards) and each board's own (from its invite, added or accepted here, or
        published by this node's member). Relays that other members suggest are not
        dialled until accepted (:mod:`~p2paid.board.relayplan` explains why)."""
        return plan_relays(self._store.relays(),
                           {b.id: b.relays_in_use() for b in self._store.boards()})

    def refresh(self) -> None:
        """Dial what :meth:`plan` names and stop what it no longer does.

        Raises:
            P2paidError: the store cannot be read.
        """
        stop, start = relay_changes(self._dialing, relay_targets(self.plan()))
        for endpoint, dialed in list(self._dialer.targets.items()):
            if dialed.source is DialSource.RELAY and endpoint not in self._dialing:
                self._dialer.remove(*endpoint)  # relay targets are this planner's alone
        for target in stop:
            del self._dialing[target.endpoint]
            self._dialer.remove(*target.endpoint)
            self._drop_peer(target.address.key)
        for target in start:
            if self._dialer.get(*target.endpoint) is not None:
                continue  # dialled as a configured peer already
            address = target.address
            log.info("syncing %s through relay %s%s", plural(len(target.boards), "board"),
                     address.without_token_text(),
                     " (with an access token)" if address.token else "")
            self._dialing[target.endpoint] = target
            self._dialer.add(DialTarget(
                address.host, address.port, source=DialSource.RELAY, node_id=address.key,
                pinned=True, to_relay=True, boards=target.boards, token=address.token))

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Follow the store's relays (relays configured, added or accepted by another
        process, or published by our member), every :data:`RELAY_REFRESH_INTERVAL`."""
        task_status.started()
        while True:
            try:
                self.refresh()
            except P2paidError as exc:
                log.warning("cannot plan relays: %s", exc)
            await trio.sleep(RELAY_REFRESH_INTERVAL)
