"""Serving the web interface inside the node's trio process (Hypercorn's trio worker)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2paid.errors import UsageError
from p2paid.net.groups import unwrap
from p2paid.net.tcp import format_address, listen_error
from p2paid.node.node import Node
from p2paid.web.app import create_app
from p2paid.web.limits import WebLimits
from p2paid.web.webstore import WebStore

__all__ = ["base_url", "serve_web"]

log = logging.getLogger("p2paid.web")


def base_url(address: tuple[str, int], *, https: bool = False) -> str:
    """The URL phones use for a server bound to ``address``: for a wildcard bind, this
    machine's first LAN address (what a poster's QR code must name)."""
    host, port = address
    if host in ("0.0.0.0", "::", ""):
        from p2paid.net.mdns import local_networks

        networks = local_networks()
        host = str(networks[0].ip) if networks else "127.0.0.1"
    return f"{'https' if https else 'http'}://{format_address(host, port)}"


async def serve_web(node: Node, host: str, port: int, *, hosts: Iterable[str] = (),
                    web: WebStore | None = None, limits: WebLimits | None = None,
                    certfile: str | None = None, keyfile: str | None = None,
                    allow_remote_wipe: bool = False,
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
    """Serve :func:`~p2paid.web.app.create_app` of ``node`` on ``host:port`` (0 picks a
    free port) until cancelled; started with ``nursery.start``, which returns the
    address bound.

    Raises:
        ListenError: the address cannot be bound (in use, privileged, not this machine's).
    """
    config = Config()
    config.bind = [format_address(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2paid.web.hypercorn")
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 16 * 1024
    config.graceful_timeout = 2
    if (certfile is None) != (keyfile is None):
        raise UsageError("HTTPS needs both a certificate and its key (--web-cert, --web-key)")
    if certfile is not None:
        config.certfile, config.keyfile = certfile, keyfile
    allowed = [*hosts]
    stopped = trio.Event()

    async def shutdown_trigger() -> None:
        await stopped.wait()

    try:
        async with trio.open_nursery() as nursery:
            app = create_app(node, web=web, hosts=allowed, limits=limits,
                             secure=certfile is not None, allow_remote_wipe=allow_remote_wipe)
            # (Hypercorn types ASGI apps by its own TypedDicts; Guard is plain ASGI)
            try:
                binds = await nursery.start(partial(serve, cast(Any, app), config,
                                                    shutdown_trigger=shutdown_trigger))
            except BaseException as exc:  # (Hypercorn binds inside its own nurseries)
                leaf = unwrap(exc) if isinstance(exc, BaseExceptionGroup) else exc
                if isinstance(leaf, OSError):
                    raise listen_error(host, port, leaf, option="--web",
                                       holder="another program") from leaf
                raise
            address = _bound(binds[0])
            log.info("web interface on http://%s/", format_address(*address))
            task_status.started(address)
            await trio.sleep(math.inf)
    finally:
        stopped.set()


def _bound(bind: str) -> tuple[str, int]:
    """``("127.0.0.1", 8080)`` from Hypercorn's ``http://127.0.0.1:8080``."""
    hostport = bind.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)
