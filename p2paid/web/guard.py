"""ASGI middleware in front of every page: the Host check and the security headers.

Plain ASGI (no framework) so that it wraps any app an embedder mounts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final, final

from p2paid.web.hosts import HostAllowList

__all__ = ["SECURITY_HEADERS", "Guard"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Sent with every response: no inline script, nothing from elsewhere, no framing,
#: no referrer leaking a board's URL.
SECURITY_HEADERS: Final = (
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
     b"connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
)

_REFUSED: Final = b"This address is not one this node answers to.\n"


@final
class Guard:
    """Refuse requests for a host not on ``hosts`` (421) and add the security headers."""

    def __init__(self, app: ASGIApp, hosts: HostAllowList) -> None:
        self._app = app
        self._hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self._app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                     if k == b"host"), None)
        if not self._hosts.allows(host):
            await _refuse(send) if scope["type"] == "http" else await send(
                {"type": "websocket.close", "code": 1008})
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ())
                           if k.lower() not in dict(SECURITY_HEADERS)]
                message["headers"] = [*headers, *SECURITY_HEADERS]
            await send(message)

        await self._app(scope, receive, send_with_headers)


async def _refuse(send: Send) -> None:
    await send({"type": "http.response.start", "status": 421,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(_REFUSED)).encode()),
                            *SECURITY_HEADERS]})
    await send({"type": "http.response.body", "body": _REFUSED})
