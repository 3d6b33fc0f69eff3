"""A panic wipe from the node owner's own phone (issue 13), off unless asked for.

Only when the node runs with ``--allow-remote-wipe``, and only for the phone paired
with ``p2paid web pair --as-me`` (the node's own member): a page explains what a
wipe does and asks to confirm; the confirmation (a form with its CSRF token and a
ticked box) crypto-erases the data dir at once (its wrapped key, when it is protected
by a passphrase), answers with a page that says so, and stops the node, which then
overwrites and deletes every file (:func:`p2paid.node.node.open_node`). Everyone else gets the same
404 as for any page that does not exist, so the feature shows nowhere else.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Final, final

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from p2paid.node.node import Node
from p2paid.storage.keystore import erase
from p2paid.web.member_pages import AS_ME, MemberPages, Render
from p2paid.web.session import Member

__all__ = ["RemoteWipe"]

log = logging.getLogger(__name__)

#: How long the node keeps running after the wipe, so the phone gets its answer.
STOP_AFTER: Final = 0.5



@final
class RemoteWipe:
    """The wipe page and its confirmation, for the owner's phone only."""

    def __init__(self, node: Node, pages: MemberPages, render: Render) -> None:
        self._node = node
        self._pages = pages
        self._render = render

    def routes(self) -> list[Route]:
        return [Route("/b/{board}/wipe", self.page, methods=["GET"]),
                Route("/b/{board}/wipe", self.confirm, methods=["POST"])]

    def _owner(self, request: Request) -> Member:
        member = self._pages.member(request)
        self._pages.board_for(request, member)  # (404 unless paired with this board)
        assert member is not None
        if member.session.device_id != AS_ME:
            raise HTTPException(404)
        return member

    async def page(self, request: Request) -> Response:
        member = self._owner(request)
        return self._render(request, "wipe.html", board_hex=member.session.board_id.hex(),
                            csrf=member.csrf, wiped=False)

    async def confirm(self, request: Request) -> Response:
        member = self._owner(request)
        async with request.form(max_files=0, max_fields=4, max_part_size=256) as form:
            csrf, sure = form.get("csrf"), form.get("sure")
        if not member.form_ok(csrf if isinstance(csrf, str) else None):
            raise HTTPException(403, "this form has expired; reload the page and try again")
        if sure != "yes":
            raise HTTPException(400, "tick the box to confirm the wipe")
        log.warning("wiping the data dir, as the owner's phone asked")
        # The data-dir key goes at once (a protected data dir is unreadable from then
        # on); the node stops once the answer is on its way, and open_node overwrites
        # and deletes every file after it closed them.
        await trio.to_thread.run_sync(partial(erase, self._node.store.data_dir))
        self._node.stop(after=STOP_AFTER, wiped=True)
        return self._render(request, "wipe.html", board_hex="", csrf="", wiped=True)
