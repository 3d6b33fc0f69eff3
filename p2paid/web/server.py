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

from p2paid.net.tcp import format_address
from p2paid.node.node import Node
from p2paid.web.app import create_app

__all__ = ["serve_web"]

log = logging.getLogger("p2paid.web")


async def serve_web(node: Node, host: str, port: int, *, hosts: Iterable[str] = (),
                    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED
                    ) -> None:
    """Serve :func:`~p2paid.web.app.create_app` of ``node`` on ``host:port`` (0 picks a
    free port) until cancelled; started with ``nursery.start``, which returns the
    address bound.

    Raises:
        OSError: the address cannot be bound.
    """
    config = Config()
    config.bind = [format_address(host, port)]
    config.accesslog = None
    config.errorlog = logging.getLogger("p2paid.web.hypercorn")
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 16 * 1024
    config.graceful_timeout = 2
    allowed = [*hosts]
    stopped = trio.Event()

    async def shutdown_trigger() -> None:
        await stopped.wait()

    try:
        async with trio.open_nursery() as nursery:
            app = create_app(node, hosts=allowed)
            # (Hypercorn types ASGI apps by its own TypedDicts; Guard is plain ASGI)
            binds = await nursery.start(partial(serve, cast(Any, app), config,
                                                shutdown_trigger=shutdown_trigger))
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
