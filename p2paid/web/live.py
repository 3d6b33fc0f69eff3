"""Live updates: a paired phone's board as server-sent events (``GET /b/{board}/live``).

Each change on the board (a post, a pledge, an edit: from this node's phones, its
API, other nodes, relays, bundles or the CLI) is one event carrying only its kind
and its item's id: ``static/live.js`` then fetches the page again, so no text ever
comes through the stream. A stream ends when its phone's session ends or its device
is revoked (checked on every event and every keep-alive), and streams are capped
per phone and in all.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncGenerator, Callable
from typing import Final, final

import trio
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from p2paid.board.model import BoardEvent
from p2paid.errors import EventsLostError
from p2paid.node.asyncboard import AsyncBoard
from p2paid.node.subscription import EventSubscription
from p2paid.web.limits import WebLimits
from p2paid.web.session import Member

__all__ = ["LiveStreams", "sse"]

#: Events kept for a stream that falls behind (it is then told to read the page again).
STREAM_BUFFER: Final = 256
#: How long a browser waits before it reconnects a dropped stream (milliseconds).
RETRY_MS: Final = 3000


def sse(event: str, data: str = "") -> bytes:
    """One server-sent event (``data`` must be one line)."""
    return f"event: {event}\ndata: {data}\n\n".encode()


def _change(event: BoardEvent) -> bytes:
    item = event.item.id if event.item is not None else ""
    return sse("change", json.dumps({"kind": event.kind.value, "item": item}))


@final
class _Stream(StreamingResponse):
    """A streaming response that gives its slot back however it ends (a closed
    body, a disconnect, a cancelled server)."""

    def __init__(self, body: AsyncGenerator[bytes, None], release: Callable[[], None]) -> None:
        super().__init__(body, media_type="text/event-stream", headers={
            "cache-control": "no-store", "x-accel-buffering": "no"})
        self._body = body
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()
            with trio.CancelScope(shield=True):
                await self._body.aclose()


@final
class LiveStreams:
    """The live-update endpoint, and the streams open.

    Args:
        member: the paired phone behind a request (None: none, or ended).
        board_for: the board a request's URL names for that phone (404 otherwise).
        limits: the caps and the keep-alive interval.
    """

    def __init__(self, member: Callable[[Request], Member | None],
                 board_for: Callable[[Request, Member | None], AsyncBoard],
                 limits: WebLimits | None = None) -> None:
        self._member = member
        self._board_for = board_for
        self._limits = limits or WebLimits()
        self._open: Counter[str] = Counter()

    @property
    def open(self) -> int:
        """Streams open now."""
        return self._open.total()

    def _still(self, request: Request, member: Member) -> bool:
        now = self._member(request)
        return now is not None and now.token == member.token

    async def endpoint(self, request: Request) -> Response:
        member = self._member(request)
        board = self._board_for(request, member)  # 404 for anyone else
        assert member is not None
        device = member.session.device_id
        if (self._open[device] >= self._limits.live_per_device
                or self.open >= self._limits.live_total):
            raise HTTPException(429, "too many live pages open; close some tabs")
        self._open[device] += 1
        # (subscribed before the response starts: no change is missed in between)
        subscription = board.subscribe(buffer=STREAM_BUFFER)

        def release() -> None:
            subscription.close()
            self._open[device] -= 1
            if self._open[device] <= 0:
                del self._open[device]

        return _Stream(self._events(request, member, subscription), release)

    async def _events(self, request: Request, member: Member,
                      subscription: EventSubscription) -> AsyncGenerator[bytes, None]:
        with subscription:
            yield f"retry: {RETRY_MS}\n: live\n\n".encode()
            while True:
                chunk = b": keep-alive\n\n"
                with trio.move_on_after(self._limits.live_keepalive):
                    try:
                        chunk = b"".join(_change(e) for e in await subscription.next_batch())
                    except EventsLostError:
                        chunk = sse("lost")
                if not self._still(request, member):
                    yield sse("end")
                    return
                yield chunk
